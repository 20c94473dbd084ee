"""NAFNet and Baseline models (Flax linen, NHWC), and the registry of pluggable blocks."""

from nafnet_jax.models.blocks import (ABLATION_LADDER, BLOCK_CONTRACT, NAFNET_BLOCK, BlockBase, BlockConfig,
                                      BlockSpec, RestorationBlock, baseline_block, block_spec, get_block,
                                      register_block, registered_blocks, resolve_block)
from nafnet_jax.models.layers import DropPath, drop_path, pixel_shuffle, simple_gate, tlc_kernels, tlc_pool
from nafnet_jax.models.registry import PUBLISHED, build_model, get_model, model_kwargs
from nafnet_jax.models.unet import Baseline, NAFNet, UNet, drop_path_rates, for_platform

__all__ = [
    "ABLATION_LADDER", "BLOCK_CONTRACT", "NAFNET_BLOCK", "BlockBase", "BlockConfig", "BlockSpec", "RestorationBlock",
    "baseline_block", "block_spec", "get_block", "register_block", "registered_blocks", "resolve_block",
    "DropPath", "drop_path", "pixel_shuffle", "simple_gate", "tlc_kernels", "tlc_pool",
    "PUBLISHED", "build_model", "get_model", "model_kwargs",
    "Baseline", "NAFNet", "UNet", "drop_path_rates", "for_platform",
]
