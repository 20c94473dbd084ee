"""nafnet_jax: NAFNet (Simple Baselines for Image Restoration) in JAX/Flax."""

__version__ = "0.1.0"
