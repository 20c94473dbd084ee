"""Trains a NAFNet/Baseline model.

    python train.py --config configs/demo.py --workdir /tmp/demo [--config.train.total_steps=100 ...]

Resumes automatically from the latest checkpoint in the workdir. Launched as several
processes (one per host), it calls `jax.distributed.initialize()` first.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nafnet_jax.cli import define_distributed_flags, initialize_distributed, quiet_library_logs  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and TensorBoard events.")
define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nafnet_jax.config import validate_config
    from nafnet_jax.trainer import train_and_evaluate

    quiet_library_logs()
    validate_config(FLAGS.config)  # fail on bad values before touching devices or data
    initialize_distributed()
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("done at step %d: %s", result["step"], result["val"])


if __name__ == "__main__":
    app.run(main)
