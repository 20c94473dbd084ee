"""The stereo demo: a tiny NAFSSR (x2) learning stereo super-resolution on the bundled photographs.

    python train.py --config configs/demo_stereo.py --workdir runs/demo_stereo

Synthetic stereo pairs are cut from the bundled scikit-image photographs with a horizontal disparity
and down-sampled by MATLAB-style bicubic (data/builders/stereo.py). On a 2-core CPU it runs in a few
minutes and ends with a validation PSNR above the bilinear up-sampling of the LR views
(`val/psnr` vs `val/psnr_input`). The recipe is NAFSSR's (MSE loss, AdamW betas 0.9/0.9, clip 0.01,
cosine to 1e-7, hflip that swaps the views, vflip, colour permutation); only the size is small.
"""

from nafnet_jax.config import base_config, model_config_for


def get_config():
    config = base_config()
    config.seed = 10
    config.model = model_config_for("NAFSSR-demo-x2")  # models/registry.py
    config.data.dataset = "stereo_bundled"
    config.data.scale = 2
    config.data.lr_crop_size = (30, 90)
    config.data.use_flip = True
    config.data.use_vflip = True
    config.data.use_rot = False
    config.data.use_flip_rgb = True
    config.eval.protocol = "uint8"
    config.optimizer.lr = 3e-3
    config.optimizer.weight_decay = 0.0
    config.train.loss = "mse"
    config.train.total_steps = 600
    config.train.batch_size = 8
    config.train.log_every = 50
    config.train.eval_every = 300
    config.train.eval_at_steps = ()
    config.train.checkpoint_every = 300
    config.train.keep_checkpoints = 2
    return config
