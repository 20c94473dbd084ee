"""NAFNet-REDS-width64: NAFNetLocal deblurring of JPEG-compressed REDS (the original's options/train/REDS/NAFNet-width64.yml). Every number here is the original's unless commented."""

from nafnet_jax.config import base_config, model_config_for


def get_config():
    config = base_config()
    config.seed = 10
    config.model = model_config_for("NAFNet-REDS-width64")  # models/registry.py
    config.data.dataset = "reds"
    config.data.crop_size = 256
    config.data.use_flip = True
    config.data.use_rot = True
    config.data.eval_split = "validation"
    config.eval.protocol = "uint8"
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 1e-3
    config.train.total_steps = 400_000
    config.train.batch_size = 64  # global: 8 per GPU x 8 GPUs
    config.train.eval_every = 20_000
    config.train.checkpoint_every = 5000
    return config
