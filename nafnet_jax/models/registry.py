"""Named architectures: the one table of the published NAFNet/Baseline/NAFSSR configurations.

`PUBLISHED` holds the nine U-Net architectures of the original's released weights
(NAFNet, Baseline), `PUBLISHED_NAFSSR` the eight stereo super-resolution ones
(NAFSSR-{T,S,B,L}-x{2,4}), named as the weight files (NAFNET.md section 2.1).
`ARCHITECTURES` is all of them plus two CPU-sized demo models without published
weights: the one table every recipe config (`nafnet_jax.config.model_config_for`),
the converter, `nafnet-restore`, the benchmark and the summary look models up in, so
an architecture is written down once. Each name's model class is `model_class(name)`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

import jax.numpy as jnp

from nafnet_jax.models.blocks import NAFNET_BLOCK, baseline_block, block_spec
from nafnet_jax.models.nafssr import NAFSSR
from nafnet_jax.models.unet import UNet

Model = Union[UNet, NAFSSR]

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

# NAFSSR (NAFNET.md 1.6, 2.1): size -> (width, blocks, drop-path rate); each at x2 and x4. All were
# trained on 30x90 low-resolution crops, so TLC pools over a (45, 135) box in every block.
_NAFSSR_SIZES = {"T": (48, 16, 0.0), "S": (64, 32, 0.1), "B": (96, 64, 0.2), "L": (128, 128, 0.3)}
NAFSSR_TRAIN_SIZE = (30, 90)

# name -> `NAFSSR` keyword arguments.
PUBLISHED_NAFSSR: Dict[str, Dict[str, Any]] = {
    f"NAFSSR-{size}-x{scale}": dict(up_scale=scale, width=width, num_blks=blocks, drop_path_rate=rate,
                                    tlc_train_size=NAFSSR_TRAIN_SIZE)
    for size, (width, blocks, rate) in _NAFSSR_SIZES.items() for scale in (2, 4)
}

# The model class of each `build_model` `arch` value.
MODEL_CLASSES: Dict[str, type] = {"unet": UNet, "nafssr": NAFSSR}

# Every named architecture, with its `arch`: the published ones plus two CPU-sized models of our own
# without published weights: the README demo's 3-level width-16 NAFNet (configs/demo.py and the
# ablation runner's demo scale use it) and a width-16, 4-block NAFSSR x2 (the stereo demo's).
_TABLE: Dict[str, Dict[str, Any]] = {
    **{name: dict(arch="unet", **kwargs) for name, kwargs in PUBLISHED.items()},
    "NAFNet-demo-width16": dict(arch="unet", block=NAFNET_BLOCK, width=16, enc_blk_nums=(1, 1, 2),
                                middle_blk_num=2, dec_blk_nums=(1, 1, 1), tlc_train_size=None),
    **{name: dict(arch="nafssr", **kwargs) for name, kwargs in PUBLISHED_NAFSSR.items()},
    "NAFSSR-demo-x2": dict(arch="nafssr", up_scale=2, width=16, num_blks=4, drop_path_rate=0.0,
                           tlc_train_size=NAFSSR_TRAIN_SIZE),
}

# name -> constructor keyword arguments of its `model_class(name)`.
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    name: {k: v for k, v in entry.items() if k != "arch"} for name, entry in _TABLE.items()}


def _check_name(name: str) -> None:
    if name not in _TABLE:
        raise KeyError(f"unknown model {name!r}; named models: {sorted(_TABLE)}")


def architecture(name: str) -> Dict[str, Any]:
    """A copy of the constructor keyword arguments of a named architecture (`ARCHITECTURES`).

    They are `UNet` arguments or `NAFSSR` arguments: see `model_class(name)`.
    Raises:
      KeyError naming the unknown name and the known ones.
    """
    _check_name(name)
    return dict(ARCHITECTURES[name])


def model_arch(name: str) -> str:
    """The `arch` of a named architecture: 'unet' (NAFNet, Baseline) or 'nafssr'."""
    _check_name(name)
    return _TABLE[name]["arch"]


def model_class(name: str) -> type:
    """The model class of a named architecture: `UNet` or `NAFSSR`."""
    return MODEL_CLASSES[model_arch(name)]


def _fields(cls: type) -> set:
    return set(cls.__dataclass_fields__) - {"parent", "name"}


def _check_keys(cls: type, keys, what: str) -> None:
    unknown = sorted(set(keys) - _fields(cls))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; {cls.__name__} takes: {sorted(_fields(cls))}")


def model_kwargs(name: str, **overrides: Any) -> Dict[str, Any]:
    """The constructor keyword arguments of a named architecture, with overrides applied.

    Raises:
      KeyError for an unknown name; ValueError naming override keys the model class lacks.
    """
    kwargs = architecture(name)
    _check_keys(model_class(name), overrides, f"override(s) for model {name!r}:")
    if "block" in overrides:  # a registered block's name/mapping, a BlockConfig or a BlockSpec
        overrides["block"] = block_spec(overrides["block"])
    kwargs.update(overrides)
    return kwargs


def get_model(name: str, **overrides: Any) -> Model:
    """Builds a named model, e.g. `get_model('NAFNet-GoPro-width32', dtype=jnp.bfloat16)`.

    Overrides are attributes of its class (`model_class(name)`): for a U-Net width,
    tlc_train_size=None, dtype, remat, ...; for NAFSSR also up_scale, num_blks, ...
    """
    return model_class(name)(**model_kwargs(name, **overrides))


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float64": jnp.float64}


def build_model(model_config: Mapping[str, Any], platform: Optional[str] = None) -> Model:
    """Builds a model from a config mapping (a config file's `config.model`).

    Keys: `name` (an `ARCHITECTURES` name, or None/'' for a custom one), `arch`
    ('unet', the default, or 'nafssr': the model class; with a name it must agree
    with the name's), plus any attribute of that class as an override; a U-Net's
    `block` may be a mapping `{"name": a registered block, **its options}` (no name:
    the restoration block, whose options are `BlockConfig`'s fields, see
    `blocks.block_spec`); `dtype`/`param_dtype` may be strings ('bfloat16').
    Unknown keys raise an error naming them. `platform` is that of the devices the
    model will run on (see `UNet.platform`); None builds the portable model.
    """
    cfg = dict(model_config)
    if platform is not None:
        cfg["platform"] = platform
    name = cfg.pop("name", None)
    arch = cfg.pop("arch", None)
    if name:
        if arch is not None and arch != model_arch(name):
            raise ValueError(f"model.arch={arch!r} contradicts model.name={name!r}, a {model_arch(name)!r} model")
        arch = model_arch(name)
    arch = arch or "unet"
    if arch not in MODEL_CLASSES:
        raise ValueError(f"model.arch={arch!r}; expected one of {sorted(MODEL_CLASSES)}")
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
    cls = MODEL_CLASSES[arch]
    _check_keys(cls, cfg, f"model config key(s) for arch {arch!r}:")
    if "block" in cfg:
        cfg["block"] = block_spec(cfg["block"])
    return cls(**cfg)
