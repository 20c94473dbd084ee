"""What train.py and eval.py share: multi-host flags and log hygiene."""

from __future__ import annotations

from absl import flags, logging


def define_distributed_flags() -> None:
    """--distributed / --coordinator_address / --num_processes / --process_id."""
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host; cluster "
                      "environments such as TPU pods and SLURM are detected by JAX).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def initialize_distributed() -> None:
    """Starts jax.distributed as the flags say; logs the device layout."""
    import jax

    fl = flags.FLAGS
    if fl.coordinator_address:
        jax.distributed.initialize(fl.coordinator_address, fl.num_processes, fl.process_id)
    elif fl.distributed:
        jax.distributed.initialize()
    logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.default_backend())


class _QuietLibraries:
    """Drops Orbax's INFO chatter (several lines per save/restore); its warnings pass."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())
