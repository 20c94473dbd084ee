"""The README's main job: a small NAFNet denoising the bundled scikit-image photographs.

Runs on a 2-core CPU in a few minutes and ends with a validation PSNR well above the
noisy input's (`val/psnr` vs `val/psnr_input` in TensorBoard and the log). The recipe is the
original's (PSNR loss, AdamW betas 0.9/0.9, clip 0.01, cosine to 1e-7); only the size is small.
"""

from nafnet_jax.config import base_config, model_config_for


def get_config():
    config = base_config()
    config.seed = 42
    # A 3-level NAFNet of width 16 (the published ones are 4 levels of width 32/64); models/registry.py.
    config.model = model_config_for("NAFNet-demo-width16")
    config.data.dataset = "bundled"
    config.data.crop_size = 64          # the original uses 256; small crops keep the CPU demo short
    config.data.use_flip = True
    config.data.use_rot = True
    config.data.crops_per_image = 4     # several crops per decoded photo: the images are few and large
    config.data.degradation = {"noise": {"sigma": 25.0}}   # sigma in 0-255 units, as SIDD-style denoising
    config.eval.protocol = "float"      # the SIDD protocol: clipped floats, peak 1
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 0.0
    config.train.total_steps = 600
    config.train.batch_size = 8
    config.train.log_every = 50
    config.train.eval_every = 300
    config.train.eval_at_steps = ()
    config.train.checkpoint_every = 300
    config.train.keep_checkpoints = 2
    return config
