"""What `nafnet-bench` measures: training configs built from the command line.

Every measured case is a full training config (the `configs/*.py` schema, from
`nafnet_jax.config.base_config()`), so the step it times is the one `train.py`
builds from the same config (`nafnet_jax.training.setup.build_train_setup`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
from typing import Any, List, Mapping, Optional, Tuple

import ml_collections

# NAFNetLocal's default train_size: what `--tlc on` uses when the config has none (NAFSSR: the
# low-resolution training crop of its published models, registry.NAFSSR_TRAIN_SIZE).
DEFAULT_TLC_TRAIN_SIZE = (256, 256)


def is_super_resolution(config: ml_collections.ConfigDict) -> bool:
    """Whether the config's model is a NAFSSR (its input is the LR crop `data.lr_crop_size`)."""
    return config.model.get("arch", "unet") == "nafssr"


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One measured configuration (a row is one case on one framework variant).

    Attributes:
      label: the published model name, or the config file's name.
      mode: 'forward' (inference) or 'train' (the trainer's step: loss, grads,
        accumulation, clip, AdamW, non-finite select).
      config: the training config the step is built from (batch, dtype,
        depthwise formulation, mesh, optimiser and loss all live here).
      height, width: crop size in pixels (of the model's input: the LR crop for NAFSSR).
    """

    label: str
    mode: str
    config: ml_collections.ConfigDict
    height: int
    width: int

    @property
    def batch(self) -> int:
        """Global batch (all devices, all micro-batches)."""
        return int(self.config.train.batch_size)

    @property
    def dtype(self) -> str:
        return str(self.config.model.dtype)

    @property
    def depthwise_impl(self) -> str:
        return str(self.config.model.depthwise_impl)

    @property
    def num_devices(self) -> int:
        """Devices of the mesh (mesh.num_devices, where 0 means all visible ones)."""
        import jax
        return int(self.config.mesh.num_devices) or len(jax.devices())


def published_model_config(name: str) -> ml_collections.ConfigDict:
    """`config.model` of a published model (e.g. 'NAFNet-GoPro-width32', 'NAFSSR-T-x4'), spelled out."""
    from nafnet_jax.config import model_config_for
    from nafnet_jax.models import PUBLISHED, PUBLISHED_NAFSSR

    if name not in PUBLISHED and name not in PUBLISHED_NAFSSR:
        raise ValueError(f"--model {name!r} is not a published model; choose one of "
                         f"{sorted(PUBLISHED) + sorted(PUBLISHED_NAFSSR)} or pass --config")
    return model_config_for(name)


def _set_model(config: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> None:
    """config.model = model; a NAFSSR also sets the data's scale (validate_config checks they agree)."""
    config.model = model
    if is_super_resolution(config):
        config.data.scale = int(model.up_scale)


def load_config(config_spec: Optional[str], model_name: str) -> Tuple[str, ml_collections.ConfigDict]:
    """(label, training config) from `--config` or, without one, `--model`.

    `config_spec` is a `configs/*.py` file (optionally `file.py:arg`, as
    train.py takes it) or a JSON file. The JSON holds config sections to
    override on `base_config()` ({"model": {...}, "train": {...}, ...}), or a
    bare model mapping, which may start from a published model with "name".
    Without `config_spec`: `base_config()` with the published `model_name`.

    Raises:
      ValueError naming the file and key for an unknown key or a bad value.
    """
    from nafnet_jax.config import base_config

    if not config_spec:
        config = base_config()
        _set_model(config, published_model_config(model_name))
        return model_name, config
    path, _, arg = config_spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config {config_spec!r}: no such file {path!r}")
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        sections = data if "model" in data else {"model": data}
        config = base_config()
        model = dict(sections.get("model") or {})
        name = model.pop("name", None)
        if name:
            _set_model(config, published_model_config(name))
        for section, values in sections.items():
            if section == "model":
                values = model
            _override(config, section, values, path)
        return name or os.path.basename(path), config
    spec = importlib.util.spec_from_file_location("_nafnet_bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    return os.path.splitext(os.path.basename(path))[0] + (f":{arg}" if arg else ""), config


def _override(config: ml_collections.ConfigDict, key: str, value: Any, source: str) -> None:
    """Sets `config[key]` (dotted) from a JSON value; nested mappings recurse; unknown keys raise."""
    head, _, rest = key.partition(".")
    if head not in config:
        raise ValueError(f"{source}: unknown config key {key!r}")
    if rest:
        _override(config[head], rest, value, source)
        return
    if isinstance(value, Mapping) and isinstance(config[head], ml_collections.ConfigDict):
        for sub, sub_value in value.items():
            _override(config[head], sub, sub_value, f"{source} ({key})")
        return
    try:
        config[head] = tuple(value) if isinstance(value, list) else value
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: bad value {value!r} for config key {key!r}: {exc}") from exc


def case_config(base: ml_collections.ConfigDict, *, batch: int, height: int, width: int, dtype: str,
                depthwise_impl: str, num_devices: Optional[int] = None, fsdp: Optional[int] = None,
                grad_accum: Optional[int] = None, remat: bool = False, tlc: str = "config",
                ) -> ml_collections.ConfigDict:
    """A copy of `base` with the benchmark's choices applied, validated.

    num_devices, fsdp, grad_accum: None keeps the config's value (mesh.num_devices
    0 means all visible devices). tlc: 'config' keeps the config's TLC train
    size, 'off' removes it, 'on' sets NAFNetLocal's default (256, 256) when the
    config has none (NAFSSR: its published (30, 90)). height, width: the model's
    input (NAFSSR: the LR crop; the targets are `up_scale` times larger).
    """
    from nafnet_jax.config import validate_config
    from nafnet_jax.models.registry import NAFSSR_TRAIN_SIZE

    config = copy.deepcopy(base)
    config.train.batch_size = batch
    if grad_accum is not None:
        config.train.grad_accum_steps = grad_accum
    if num_devices is not None:
        config.mesh.num_devices = num_devices
    if fsdp is not None:
        config.mesh.fsdp = fsdp
    config.model.dtype = dtype
    config.model.depthwise_impl = depthwise_impl
    config.model.remat = bool(config.model.remat or remat)
    if tlc == "off":
        config.model.tlc_train_size = None
    elif tlc == "on" and config.model.tlc_train_size is None:
        config.model.tlc_train_size = NAFSSR_TRAIN_SIZE if is_super_resolution(config) else DEFAULT_TLC_TRAIN_SIZE
    # Parameters are initialised on a (1, crop, crop, C) sample; their shapes do not depend on it.
    if is_super_resolution(config):
        config.data.lr_crop_size = (height, width)
    else:
        config.data.crop_size = min(height, width)
    validate_config(config)
    return config


def make_cases(args: Any) -> List[Tuple[str, str, List["BenchCase"]]]:
    """The cases of a run, grouped by (mode, dtype): one case per depthwise formulation."""
    label, base = load_config(args.config, args.model)
    default = tuple(base.data.lr_crop_size) if is_super_resolution(base) else (base.data.crop_size,) * 2
    height, width = args.height or default[0], args.width or default[1]
    batch = args.batch or (int(base.train.batch_size) if args.config else 1)
    groups = []
    for mode in args.modes:
        for dtype in args.dtypes:
            cases = [BenchCase(label, mode, case_config(
                base, batch=batch, height=height, width=width, dtype=dtype, depthwise_impl=impl,
                num_devices=args.num_devices, fsdp=args.fsdp, grad_accum=args.grad_accum, remat=args.remat,
                tlc=args.tlc), height, width) for impl in args.impls]
            groups.append((mode, dtype, cases))
    return groups
