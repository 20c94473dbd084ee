"""NAFNet and Baseline models (Flax linen, NHWC)."""

from nafnet_jax.models.blocks import (ABLATION_LADDER, NAFNET_BLOCK, BlockConfig, RestorationBlock,
                                      baseline_block)
from nafnet_jax.models.layers import pixel_shuffle, simple_gate, tlc_kernels, tlc_pool
from nafnet_jax.models.registry import PUBLISHED, build_model, get_model, model_kwargs
from nafnet_jax.models.unet import Baseline, NAFNet, UNet, for_platform

__all__ = [
    "ABLATION_LADDER", "NAFNET_BLOCK", "BlockConfig", "RestorationBlock", "baseline_block",
    "pixel_shuffle", "simple_gate", "tlc_kernels", "tlc_pool", "PUBLISHED", "build_model", "get_model",
    "model_kwargs", "Baseline", "NAFNet", "UNet", "for_platform",
]
