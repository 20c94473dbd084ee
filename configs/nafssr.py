"""NAFSSR stereo super-resolution: the original's eight recipes (options/train/NAFSSR/NAFSSR-{T,S,B,L}_x{2,4}.yml).

    python train.py --config configs/nafssr.py:S-x4 --workdir runs/nafssr_s_x4 \
        --config.data.manual_dir=/data/StereoSR

The argument is the model size and scale, `{T,S,B,L}-x{2,4}`. Every number here is the original's unless
commented (NAFNET.md sections 1.6, 2.1-2.4); the architecture comes from models/registry.py.
"""

from nafnet_jax.config import base_config, model_config_for

SIZES = ("T", "S", "B", "L")
SCALES = (2, 4)


def parse_variant(arg: str):
    """'S-x4' -> ('S', 4); a bad argument is an error naming it and the choices."""
    size, _, scale = (arg or "").partition("-x")
    if size not in SIZES or scale not in tuple(str(s) for s in SCALES):
        choices = [f"{s}-x{x}" for s in SIZES for x in SCALES]
        raise ValueError(f"configs/nafssr.py: unknown variant {arg!r}; choose one of {choices} "
                         "(e.g. --config configs/nafssr.py:S-x4)")
    return size, int(scale)


def get_config(arg: str = None):
    size, scale = parse_variant(arg)
    config = base_config()
    config.seed = 10
    # NAFSSR-<size>-x<scale>: width, blocks, drop-path rate and TLC train size (30, 90) from the registry.
    config.model = model_config_for(f"NAFSSR-{size}-x{scale}")
    config.data.dataset = "stereo"
    config.data.builder_config = f"x{scale}"   # datasets/StereoSR/patches_x{2,4} (iPASSR's patches)
    config.data.scale = scale
    config.data.lr_crop_size = (30, 90)        # GT 60x180 (x2) / 120x360 (x4)
    config.data.use_flip = True                # hflip, which also swaps the views
    config.data.use_vflip = True
    config.data.use_rot = False                # a transpose would break the horizontal epipolar lines
    config.data.use_flip_rgb = True            # a random colour-channel permutation of both views
    config.data.channel_order = "bgr"          # the original's stereo datasets feed BGR (NAFNET.md 1.6)
    config.data.eval_split = "test_flickr1024"
    config.eval.protocol = "uint8"             # stereo PSNR / skimage SSIM on uint8 (NAFNET.md 2.4)
    config.optimizer.lr = 3e-3
    config.optimizer.weight_decay = 0.0
    config.train.loss = "mse"                  # the code's MSELoss (the paper says L1: upstream issue #123)
    config.train.total_steps = 400_000 if size == "T" else 100_000
    config.train.batch_size = 32               # global: 4 per GPU x 8 GPUs
    config.train.eval_every = 20_000
    config.train.checkpoint_every = 10_000
    return config
