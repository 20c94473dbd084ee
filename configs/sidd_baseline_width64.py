"""Baseline-SIDD-width64: plain Baseline denoising on SIDD (the original's options/train/SIDD/Baseline-width64.yml). Every number here is the original's unless commented."""

from nafnet_jax.config import base_config, model_config_for


def get_config():
    config = base_config()
    config.seed = 10
    config.model = model_config_for("Baseline-SIDD-width64")  # models/registry.py
    config.data.dataset = "sidd"
    # The original trains on 512x512 patches cut once by scripts/data_preparation/sidd.py
    # (sidd/patches512); "frames" trains on whole frames instead.
    config.data.builder_config = "patches512"
    config.data.crop_size = 256
    config.data.use_flip = False
    config.data.use_rot = False
    config.data.eval_split = "validation"
    config.eval.protocol = "float"
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 0.0
    config.train.total_steps = 400_000
    config.train.batch_size = 64  # global: 8 per GPU x 8 GPUs
    config.train.eval_every = 20_000
    config.train.checkpoint_every = 5000
    return config
