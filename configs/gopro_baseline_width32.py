"""Baseline-GoPro-width32: BaselineLocal deblurring on GoPro (the original's options/train/GoPro/Baseline-width32.yml). Every number here is the original's unless commented."""

from nafnet_jax.config import base_config, model_config_for


def get_config():
    config = base_config()
    config.seed = 42
    config.model = model_config_for("Baseline-GoPro-width32")  # models/registry.py
    config.data.dataset = "gopro"
    # The original trains on 512x512 patches cut once by scripts/data_preparation/gopro.py
    # (gopro/patches512); "frames" trains on whole frames instead.
    config.data.builder_config = "patches512"
    config.data.crop_size = 256
    config.data.use_flip = True
    config.data.use_rot = True
    config.data.eval_split = "test"
    config.eval.protocol = "uint8"
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 1e-3
    config.train.total_steps = 200_000
    config.train.batch_size = 32  # global: 4 per GPU x 8 GPUs
    config.train.eval_every = 20_000
    config.train.checkpoint_every = 5000
    return config
