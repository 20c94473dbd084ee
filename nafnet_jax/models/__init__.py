"""NAFNet, Baseline and NAFSSR models (Flax linen, NHWC), and the registry of pluggable blocks."""

from nafnet_jax.models.blocks import (ABLATION_LADDER, BLOCK_CONTRACT, NAFNET_BLOCK, BlockBase, BlockConfig,
                                      BlockSpec, RestorationBlock, baseline_block, block_spec, get_block,
                                      register_block, registered_blocks, resolve_block)
from nafnet_jax.models.layers import DropPath, drop_path, pixel_shuffle, simple_gate, tlc_kernels, tlc_pool
from nafnet_jax.models.nafssr import NAFSSR, SCAM, NAFBlockSR, upsample_bilinear
from nafnet_jax.models.registry import (PUBLISHED, PUBLISHED_NAFSSR, architecture, build_model, get_model,
                                        model_class, model_kwargs)
from nafnet_jax.models.unet import Baseline, NAFNet, UNet, drop_path_rates, for_platform

__all__ = [
    "ABLATION_LADDER", "BLOCK_CONTRACT", "NAFNET_BLOCK", "BlockBase", "BlockConfig", "BlockSpec", "RestorationBlock",
    "baseline_block", "block_spec", "get_block", "register_block", "registered_blocks", "resolve_block",
    "DropPath", "drop_path", "pixel_shuffle", "simple_gate", "tlc_kernels", "tlc_pool",
    "NAFSSR", "SCAM", "NAFBlockSR", "upsample_bilinear",
    "PUBLISHED", "PUBLISHED_NAFSSR", "architecture", "build_model", "get_model", "model_class", "model_kwargs",
    "Baseline", "NAFNet", "UNet", "drop_path_rates", "for_platform",
]
