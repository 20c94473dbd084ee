"""Evaluates a checkpoint on a whole split at full resolution (PSNR/SSIM as the original).

    python eval.py --config configs/gopro_nafnet_width32.py --checkpoint PATH \
        [--split test] [--output_dir DIR] [--save_images] [--max_images N] [--use_ema] \
        [--config.eval.tile=512 --config.model.tlc_train_size=None ...]
    python eval.py --config configs/sidd_nafnet_width32.py --checkpoint PATH \
        --lq_dir noisy/ --gt_dir clean/          # two folders of images paired by stem
    python eval.py --config CONFIG --checkpoint NAFSSR_PATH \
        --lq_dir test/Flickr1024/lr_x4 --gt_dir test/Flickr1024/hr   # stereo: <scene>/{lr0,lr1}, {hr0,hr1}

PATH is a train.py workdir, its checkpoints dir, or the output of the weight
converter. Writes DIR/metrics.json (mean PSNR/SSIM, count, settings) and
DIR/per_image.csv, plus DIR/images/*.png with --save_images; an earlier
result in DIR is refused unless --overwrite. The model is
`config.model` (which must hold the checkpoint's parameters; TLC follows its
`tlc_train_size`), or the checkpoint's own if the config has none. Every
process evaluates its share of the images; all local devices are used.

A stereo SR checkpoint (NAFSSR, 6 channels) is evaluated on whole pairs with
the original's stereo metrics (mean of the left/right PSNRs, scikit-image SSIM on
the 6 channels, both on uint8); --save_images writes `<scene>_L.png` and
`<scene>_R.png`.

Exit statuses: 0 done, 2 bad flags/config/paths/checkpoint (checked before any
work), 1 any other failure (see nafnet_jax.cli).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ log lines off the terminal

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nafnet_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py): its model, data and eval.",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "train.py workdir, its checkpoints dir, or converted weights dir.")
flags.DEFINE_string("output_dir", "eval_results", "Where metrics.json, per_image.csv and images/ go.")
flags.DEFINE_string("split", None, "Data split to evaluate (default: config.data.eval_split or the "
                    "dataset's own).")
flags.DEFINE_string("lq_dir", None, "Folder of degraded images (with --gt_dir): evaluate these instead.")
flags.DEFINE_string("gt_dir", None, "Folder of ground-truth images paired with --lq_dir's by stem "
                    "(extensions may differ).")
flags.DEFINE_integer("max_images", None, "Evaluate only the first N images.")
flags.DEFINE_bool("save_images", False, "Also write the restored images (8-bit PNG).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("overwrite", False, "Replace the results of an earlier evaluation in --output_dir.")
flags.DEFINE_bool("use_ema", False, "Evaluate the checkpoint's EMA parameters (kept when train.ema_decay > 0).")
cli.define_distributed_flags()
cli.define_debug_flag()
flags.mark_flags_as_required(["config", "checkpoint"])


def preflight_checks() -> None:
    """Everything about the inputs and the output folder, checked before any work."""
    from nafnet_jax.training import checkpointing
    from nafnet_jax.data import images
    from nafnet_jax.evaluation import evaluate, stereo

    config = FLAGS.config
    evaluate.check_eval_config(config.eval if "eval" in config else evaluate.default_eval_config())
    if FLAGS.lq_dir or FLAGS.gt_dir:
        if not (FLAGS.lq_dir and FLAGS.gt_dir):
            raise cli.UsageError("folder mode needs both --lq_dir and --gt_dir")
        for flag, folder in (("--lq_dir", FLAGS.lq_dir), ("--gt_dir", FLAGS.gt_dir)):
            if not os.path.isdir(folder):
                raise cli.UsageError(f"{flag} {folder} is not a directory")
        if stereo.looks_like_stereo_folder(FLAGS.lq_dir):  # <scene>/{lr0,lr1}: a stereo test set
            stereo.pair_stereo_folders(FLAGS.lq_dir, FLAGS.gt_dir)  # a scene or view missing is named here
        else:
            images.pair_folders(FLAGS.lq_dir, FLAGS.gt_dir)  # pairs by stem: a missing partner is named here
    if FLAGS.max_images is not None and FLAGS.max_images <= 0:
        raise cli.UsageError(f"--max_images={FLAGS.max_images}: expected a positive number")
    checkpointing.resolve_checkpoint_dir(FLAGS.checkpoint)
    cli.check_output_dir(FLAGS.output_dir, "--output_dir")
    evaluate.refuse_existing_outputs(FLAGS.output_dir, FLAGS.save_images, FLAGS.overwrite)


def main(argv) -> int:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    cli.quiet_tensorflow()
    with cli.preflight():
        preflight_checks()
    from nafnet_jax.evaluation.evaluate import run_eval

    cli.initialize_distributed()
    result = run_eval(FLAGS.config, FLAGS.checkpoint, FLAGS.output_dir, split=FLAGS.split,
                      lq_dir=FLAGS.lq_dir, gt_dir=FLAGS.gt_dir, save_images=FLAGS.save_images,
                      max_images=FLAGS.max_images, progress=FLAGS.progress, overwrite=FLAGS.overwrite,
                      use_ema=FLAGS.use_ema)
    protocol = (result["metrics"] if result.get("stereo") else
                f"{result['eval']['ssim']} SSIM, {result['eval']['protocol']} protocol")
    logging.info("%d images: PSNR %.4f dB, SSIM %.4f (%s) -> %s", result["count"], result["psnr"],
                 result["ssim"], protocol, os.path.abspath(FLAGS.output_dir))
    print(f"PSNR {result['psnr']:.4f} dB  SSIM {result['ssim']:.4f}  ({result['count']} images)")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_absl_app(main)
