"""Named architectures: the one table of the published NAFNet/Baseline configurations.

`PUBLISHED` holds the nine architectures of the original's released weights, named
as the weight files (NAFNET.md section 2.1). Every recipe config builds its
`config.model` from this table (`nafnet_jax.config.model_config_for`), and the
converter, `nafnet-restore`, the benchmark and the summary look models up here:
an architecture is written down once. `ARCHITECTURES` adds the README demo's small
model, which has no published weights.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import jax.numpy as jnp

from nafnet_jax.models.blocks import NAFNET_BLOCK, baseline_block, block_spec
from nafnet_jax.models.unet import UNet

# The two U-Net bodies of section 2.1. GoPro/REDS use NAFNetLocal/BaselineLocal: TLC at test time with
# the default train_size (1, 3, 256, 256); SIDD uses the plain model.
_GOPRO = dict(enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1, dec_blk_nums=(1, 1, 1, 1),
              tlc_train_size=(256, 256))
_SIDD = dict(enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2),
             tlc_train_size=None)

# name -> `UNet` keyword arguments. Baseline's DW_Expand is 1 at width 32 and 2 at width 64.
PUBLISHED: Dict[str, Dict[str, Any]] = {
    "NAFNet-GoPro-width32": dict(block=NAFNET_BLOCK, width=32, **_GOPRO),
    "NAFNet-GoPro-width64": dict(block=NAFNET_BLOCK, width=64, **_GOPRO),
    "NAFNet-REDS-width64": dict(block=NAFNET_BLOCK, width=64, **_GOPRO),
    "NAFNet-SIDD-width32": dict(block=NAFNET_BLOCK, width=32, **_SIDD),
    "NAFNet-SIDD-width64": dict(block=NAFNET_BLOCK, width=64, **_SIDD),
    "Baseline-GoPro-width32": dict(block=baseline_block(1, 2), width=32, **_GOPRO),
    "Baseline-GoPro-width64": dict(block=baseline_block(2, 2), width=64, **_GOPRO),
    "Baseline-SIDD-width32": dict(block=baseline_block(1, 2), width=32, **_SIDD),
    "Baseline-SIDD-width64": dict(block=baseline_block(2, 2), width=64, **_SIDD),
}

# Every named architecture: the published ones plus the README demo's 3-level width-16 NAFNet (a
# CPU-sized model of our own; configs/demo.py and the ablation runner's demo scale use it).
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    **PUBLISHED,
    "NAFNet-demo-width16": dict(block=NAFNET_BLOCK, width=16, enc_blk_nums=(1, 1, 2), middle_blk_num=2,
                                dec_blk_nums=(1, 1, 1), tlc_train_size=None),
}


def architecture(name: str) -> Dict[str, Any]:
    """A copy of the `UNet` keyword arguments of a named architecture (`ARCHITECTURES`).

    Raises:
      KeyError naming the unknown name and the known ones.
    """
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown model {name!r}; named models: {sorted(ARCHITECTURES)}")
    return dict(ARCHITECTURES[name])


def model_kwargs(name: str, **overrides: Any) -> Dict[str, Any]:
    """The `UNet` keyword arguments of a named architecture, with overrides applied."""
    kwargs = architecture(name)
    fields = set(UNet.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for model {name!r}")
    if "block" in overrides:  # a registered block's name/mapping, a BlockConfig or a BlockSpec
        overrides["block"] = block_spec(overrides["block"])
    kwargs.update(overrides)
    return kwargs


def get_model(name: str, **overrides: Any) -> UNet:
    """Builds a named model, e.g. `get_model('NAFNet-GoPro-width32', dtype=jnp.bfloat16)`.

    Overrides are `UNet` attributes (width, tlc_train_size=None, dtype, remat, ...).
    """
    return UNet(**model_kwargs(name, **overrides))


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float64": jnp.float64}


def build_model(model_config: Mapping[str, Any], platform: Optional[str] = None) -> UNet:
    """Builds a model from a config mapping (a config file's `config.model`).

    Keys: `name` (an `ARCHITECTURES` name, or None/'' for a custom one) plus any
    `UNet` attribute as an override; `block` may be a mapping `{"name": a
    registered block, **its options}` (no name: the restoration block, whose
    options are `BlockConfig`'s fields, see `blocks.block_spec`);
    `dtype`/`param_dtype` may be strings ('bfloat16'). Unknown keys raise an
    error naming them. `platform` is that of the devices the model will run
    on (see `UNet.platform`); None builds the portable model.
    """
    cfg = dict(model_config)
    if platform is not None:
        cfg["platform"] = platform
    name = cfg.pop("name", None)
    for key in ("dtype", "param_dtype"):
        if isinstance(cfg.get(key), str):
            if cfg[key] not in _DTYPES:
                raise ValueError(f"model.{key}={cfg[key]!r}; expected one of {sorted(_DTYPES)}")
            cfg[key] = _DTYPES[cfg[key]]
    for key in ("enc_blk_nums", "dec_blk_nums", "tlc_train_size"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    if name:
        return get_model(name, **cfg)
    fields = set(UNet.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(fields)}")
    if "block" in cfg:
        cfg["block"] = block_spec(cfg["block"])
    return UNet(**cfg)
