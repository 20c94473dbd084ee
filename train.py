"""Trains a NAFNet/Baseline model.

    python train.py --config configs/demo.py --workdir /tmp/demo [--config.train.total_steps=100 ...]

Resumes automatically from the latest checkpoint in the workdir. Launched as several
processes (one per host), it calls `jax.distributed.initialize()` first.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and TensorBoard events.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host; cluster "
                  "environments such as TPU pods and SLURM are detected by JAX).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Drops INFO chatter of Orbax (several lines per save) from the log; warnings pass."""

    def filter(self, record):
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from nafnet_jax.config import validate_config
    from nafnet_jax.trainer import train_and_evaluate

    logging.get_absl_handler().addFilter(_QuietLibraries())
    validate_config(FLAGS.config)  # fail on bad values before touching devices or data
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()
    logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.default_backend())
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("done at step %d: %s", result["step"], result["val"])


if __name__ == "__main__":
    app.run(main)
