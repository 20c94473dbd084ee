"""The nine published NAFNet/Baseline configurations, named as the original weight files."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import jax.numpy as jnp

from nafnet_jax.models.blocks import NAFNET_BLOCK, BlockConfig, baseline_block
from nafnet_jax.models.unet import UNet

_GOPRO = dict(enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1, dec_blk_nums=(1, 1, 1, 1),
              tlc_train_size=(256, 256))  # NAFNetLocal / BaselineLocal, train_size 256
_SIDD = dict(enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2),
             tlc_train_size=None)  # plain NAFNet / Baseline

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


def model_kwargs(name: str, **overrides: Any) -> Dict[str, Any]:
    """The `UNet` keyword arguments of a published config, with overrides applied."""
    if name not in PUBLISHED:
        raise KeyError(f"unknown model {name!r}; published models: {sorted(PUBLISHED)}")
    kwargs = dict(PUBLISHED[name])
    fields = set(UNet.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for model {name!r}")
    if isinstance(overrides.get("block"), Mapping):
        overrides["block"] = BlockConfig.from_dict(overrides["block"])
    kwargs.update(overrides)
    return kwargs


def get_model(name: str, **overrides: Any) -> UNet:
    """Builds a published model, e.g. `get_model('NAFNet-GoPro-width32', dtype=jnp.bfloat16)`.

    Overrides are `UNet` attributes (width, tlc_train_size=None, dtype, remat, ...).
    """
    return UNet(**model_kwargs(name, **overrides))


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float64": jnp.float64}


def build_model(model_config: Mapping[str, Any], platform: Optional[str] = None) -> UNet:
    """Builds a model from a config mapping (a config file's `config.model`).

    Keys: `name` (a published model, or None/'' for a custom one) plus any
    `UNet` attribute as an override; `block` may be a dict of `BlockConfig`
    fields; `dtype`/`param_dtype` may be strings ('bfloat16'). Unknown keys raise
    an error naming them. `platform` is that of the devices the model will run
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
    if isinstance(cfg.get("block"), Mapping):
        cfg["block"] = BlockConfig.from_dict(dict(cfg["block"]))
    return UNet(**cfg)
