"""Trains a NAFNet/Baseline model.

    python train.py --config configs/demo.py --workdir /tmp/demo [--config.train.total_steps=100 ...]

Resumes automatically from the newest intact checkpoint in the workdir. Launched as several
processes (one per host), it calls `jax.distributed.initialize()` first.

Every check of the config, the data layout (and a decoded sample of the images; `--check_images=all`
decodes every one) and the workdir runs before anything is written. Exit statuses: 0 finished,
2 bad config/data/paths (nothing written), 75 stopped by SIGTERM/SIGINT after saving a checkpoint
(run the same command again to resume), 1 any other failure (see nafnet_jax.cli).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ log lines off the terminal

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nafnet_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json and TensorBoard events.")
flags.DEFINE_enum("check_images", "sample", ["sample", "all", "none"],
                  "Before training, decode a sample of the dataset's image files (paired_folder), "
                  "every one of them, or none.")
cli.define_distributed_flags()
cli.define_debug_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    cli.quiet_tensorflow()
    config = FLAGS.config
    with cli.preflight():  # everything about the inputs, before devices, data or the workdir are touched
        from nafnet_jax.config import validate_config
        from nafnet_jax.data.preflight import check_data

        validate_config(config)
        check_data(config.data, images=FLAGS.check_images, need_eval=bool(config.train.eval_every))
        cli.check_output_dir(FLAGS.workdir, "--workdir")
    cli.initialize_distributed()
    from nafnet_jax.training.trainer import train_and_evaluate

    result = train_and_evaluate(config, FLAGS.workdir)
    if result.get("interrupted"):
        logging.warning("stopped by a signal at step %d after saving a checkpoint; run the same command "
                        "again to resume (exit status %d)", result["step"], cli.EXIT_PREEMPTED)
        return cli.EXIT_PREEMPTED
    logging.info("done at step %d: %s", result["step"], result["val"])
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_absl_app(main)
