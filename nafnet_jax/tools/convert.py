"""Weights between the original PyTorch NAFNet/Baseline/NAFSSR and this Flax port.

PyTorch -> Flax:

    state_dict = load_torch_checkpoint("NAFNet-GoPro-width32.pth")    # numpy arrays
    variables = torch_to_flax(state_dict, "NAFNet-GoPro-width32")    # {'params': ...}
    restored = get_model("NAFNet-GoPro-width32").apply(variables, images_nhwc)

Flax -> PyTorch (loads into the original code and spandrel with strict=True):

    state_dict = flax_to_torch(variables, model)
    save_torch_checkpoint(state_dict, "out.pth")                     # {'params': state_dict}

Command line (writes an Orbax checkpoint via `nafnet_jax.training.checkpointing`):

    python -m nafnet_jax.tools.convert NAFNet-GoPro-width32.pth OUT_DIR --model NAFNet-GoPro-width32
    python -m nafnet_jax.tools.convert NAFSSR-L_4x.pth OUT_DIR --model NAFSSR-L-x4
    python -m nafnet_jax.tools.convert --to-torch OUT_DIR out.pth

EMA: a Flax checkpoint with EMA parameters (train.ema_decay > 0) becomes a .pth holding
`{'params': ..., 'params_ema': ...}`, as BasicSR saves it; a .pth holding both converts back to
a checkpoint with both (`eval.py --use_ema` / `nafnet-restore --use_ema` pick the EMA ones).

All the name and layout knowledge is in `KEY_TABLE`. Conversion is strict:
every key must map, every model parameter must be present with the right shape,
and all problems are reported together in one `StateDictMismatchError`. Arrays
are numpy throughout; torch is imported only to read or write `.pth` files,
`.safetensors` files need no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from nafnet_jax.models import NAFSSR, UNet, build_model, get_model
from nafnet_jax.models.blocks import BlockConfig

StateDict = Dict[str, np.ndarray]
Model = Union[UNet, NAFSSR]
ModelSpec = Union[str, UNet, NAFSSR, Mapping[str, Any]]

# -------------------------------------------------------------------------------------------------
# Layouts: how one PyTorch tensor becomes one Flax array.


@dataclasses.dataclass(frozen=True)
class Layout:
    """A pair of inverse array maps PyTorch <-> Flax, and the same maps on shapes."""

    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    torch_shape: Callable[[Tuple[int, ...]], Tuple[int, ...]]  # from the Flax shape


# OIHW (out, in/groups, kh, kw) <-> HWIO; a depthwise (C,1,3,3) becomes (3,3,1,C).
CONV = Layout("conv", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1),
              lambda s: (s[3], s[2], s[0], s[1]))
VECTOR = Layout("vector", lambda a: a, lambda a: a, lambda s: tuple(s))
# beta/gamma are Parameters of shape (1,C,1,1) in PyTorch, (C,) here.
CHANNEL = Layout("channel", lambda a: a.reshape(-1), lambda a: a.reshape(1, -1, 1, 1),
                 lambda s: (1, s[0], 1, 1))

# -------------------------------------------------------------------------------------------------
# The key table. `{i}`, `{j}`, `{n}` are integers, `{side}` is 'l' or 'r', copied across.
# `{block}` is one restoration block (NAFNet's U-Net blocks, NAFSSR's per-view NAFBlock
# `body.{i}.module.blk`: `module` is the original's DropPath wrapper), spelled as in
# BLOCK_CONTAINERS on each side.

BLOCK_CONTAINERS: Tuple[Tuple[str, str], ...] = (
    # PyTorch module path       Flax module name
    ("encoders.{i}.{j}",        "encoders_{i}_{j}"),
    ("middle_blks.{j}",         "middle_blks_{j}"),
    ("decoders.{i}.{j}",        "decoders_{i}_{j}"),
    ("body.{i}.module.blk",     "body_{i}/blk"),           # NAFSSR
)

KEY_TABLE: Tuple[Tuple[str, str, Layout], ...] = (
    # PyTorch state-dict key      Flax param path               layout
    ("intro.weight",              "intro/kernel",               CONV),
    ("intro.bias",                "intro/bias",                 VECTOR),
    ("downs.{i}.weight",          "downs_{i}/kernel",           CONV),     # 2x2 stride 2
    ("downs.{i}.bias",            "downs_{i}/bias",             VECTOR),
    ("ups.{i}.0.weight",          "ups_{i}/kernel",             CONV),     # 1x1, no bias
    ("ending.weight",             "ending/kernel",              CONV),
    ("ending.bias",               "ending/bias",                VECTOR),
    # inside a block (NAFBlock, BaselineBlock, any ablation rung)
    ("{block}.norm{n}.weight",    "{block}/norm{n}/scale",      VECTOR),   # LayerNorm2d
    ("{block}.norm{n}.bias",      "{block}/norm{n}/bias",       VECTOR),
    ("{block}.conv{n}.weight",    "{block}/conv{n}/kernel",     CONV),     # conv2 is depthwise
    ("{block}.conv{n}.bias",      "{block}/conv{n}/bias",       VECTOR),
    ("{block}.sca.1.weight",      "{block}/sca/kernel",         CONV),     # sca.0 is the pool
    ("{block}.sca.1.bias",        "{block}/sca/bias",           VECTOR),
    ("{block}.se.1.weight",       "{block}/se_reduce/kernel",   CONV),     # se.0 pool, .2 ReLU
    ("{block}.se.1.bias",         "{block}/se_reduce/bias",     VECTOR),
    ("{block}.se.3.weight",       "{block}/se_expand/kernel",   CONV),     # se.4 Sigmoid
    ("{block}.se.3.bias",         "{block}/se_expand/bias",     VECTOR),
    ("{block}.beta",              "{block}/beta",               CHANNEL),
    ("{block}.gamma",             "{block}/gamma",              CHANNEL),
    # NAFSSR: the shared up conv (then PixelShuffle, up.1), and each body block's SCAM
    ("up.0.weight",               "up/kernel",                  CONV),     # 3x3 width -> 3*s*s
    ("up.0.bias",                 "up/bias",                    VECTOR),
    ("body.{i}.module.fusion.norm_{side}.weight",  "body_{i}/fusion/norm_{side}/scale",  VECTOR),
    ("body.{i}.module.fusion.norm_{side}.bias",    "body_{i}/fusion/norm_{side}/bias",   VECTOR),
    ("body.{i}.module.fusion.{side}_proj{n}.weight", "body_{i}/fusion/{side}_proj{n}/kernel", CONV),  # 1x1
    ("body.{i}.module.fusion.{side}_proj{n}.bias",   "body_{i}/fusion/{side}_proj{n}/bias",   VECTOR),
    ("body.{i}.module.fusion.beta",   "body_{i}/fusion/beta",   CHANNEL),
    ("body.{i}.module.fusion.gamma",  "body_{i}/fusion/gamma",  CHANNEL),
)

_TORCH, _FLAX = 0, 1
_SEPARATOR = (".", "/")


def _pattern(template: str, side: int, named: bool = True) -> str:
    """A regex for a template: literal text escaped, placeholders as (named) groups."""
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for k, part in enumerate(parts):
        if k % 2 == 0:
            out.append(re.escape(part))
            continue
        if part == "block":
            body = "|".join(_pattern(c[side], side, named=False) for c in BLOCK_CONTAINERS)
        elif part == "side":
            body = "[lr]"
        else:
            body = r"\d+"
        out.append(f"(?P<{part}>{body})" if named else f"(?:{body})")
    return "".join(out)


_CONTAINER_RES = tuple((re.compile(_pattern(t, _TORCH)), re.compile(_pattern(f, _FLAX)))
                       for t, f in BLOCK_CONTAINERS)
_RULE_RES = tuple((re.compile(_pattern(t, _TORCH)), re.compile(_pattern(f, _FLAX)))
                  for t, f, _ in KEY_TABLE)


def _translate_block(name: str, src: int) -> str:
    dst = 1 - src
    for container, regexes in zip(BLOCK_CONTAINERS, _CONTAINER_RES):
        m = regexes[src].fullmatch(name)
        if m:
            return container[dst].format(**m.groupdict())
    # Unreachable: the rule's regex only matches container spellings.
    raise AssertionError(f"block name {name!r} matched no container")


def _translate(name: str, src: int) -> Optional[Tuple[str, Layout]]:
    """Maps a name from side `src` to the other side via KEY_TABLE; None if no row matches."""
    dst = 1 - src
    for row, regexes in zip(KEY_TABLE, _RULE_RES):
        m = regexes[src].fullmatch(name)
        if m:
            groups = m.groupdict()
            if "block" in groups:
                groups["block"] = _translate_block(groups["block"], src)
            return row[dst].format(**groups), row[2]
    return None


def torch_key_to_flax_path(key: str) -> Optional[Tuple[str, Layout]]:
    """'encoders.0.1.conv2.weight' -> ('encoders_0_1/conv2/kernel', CONV), or None."""
    return _translate(key, _TORCH)


def flax_path_to_torch_key(path: str) -> Optional[Tuple[str, Layout]]:
    """'encoders_0_1/conv2/kernel' -> ('encoders.0.1.conv2.weight', CONV), or None."""
    return _translate(path, _FLAX)


# -------------------------------------------------------------------------------------------------
# Strict conversion.


class StateDictMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists every offending key.

    `summary()` is the one-line form the command line prints (a count and the first few).
    """

    def __init__(self, what: str, problems: Sequence[str]):
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{what}: {len(problems)} problem(s):\n{lines}")
        self.what, self.problems = what, list(problems)

    def summary(self, limit: int = 3) -> str:
        shown = "; ".join(self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return f"{self.what}: {len(self.problems)} problem(s): {shown}{more}"


class CheckpointFileError(ValueError):
    """A file that is not a readable PyTorch/safetensors checkpoint (the message names it)."""


def _problem_report(what: str, problems: Sequence[str]) -> StateDictMismatchError:
    return StateDictMismatchError(what, problems)


def resolve_model(model: ModelSpec) -> Model:
    """A `UNet` or `NAFSSR` from a published name, a model-config mapping, or the model itself.

    Raises:
      ValueError when its block is not one of the original's (a block registered in this
      code base has no PyTorch counterpart, so there is no key table to convert with).
    """
    if isinstance(model, (UNet, NAFSSR)):
        unet = model
    elif isinstance(model, str):
        unet = get_model(model)
    elif isinstance(model, Mapping):
        unet = build_model(model)
    else:
        raise TypeError(f"model must be a published name, a UNet, a NAFSSR or a model config, got {type(model)}")
    if isinstance(unet, NAFSSR):  # its blocks are always the original's NAFBlock
        return unet
    if not isinstance(unet.block, BlockConfig):
        raise ValueError(f"model.block {getattr(unet.block, 'name', unet.block)!r} has no counterpart in the "
                         "original PyTorch code; the converter knows NAFBlock, BaselineBlock and the ablation "
                         "rungs (model.block.name='restoration')")
    return unet


def _describe(model: ModelSpec) -> str:
    return repr(model) if isinstance(model, str) else type(model).__name__


def abstract_params(model: Model) -> Dict[str, jax.ShapeDtypeStruct]:
    """The model's parameters as {'a/b/c': ShapeDtypeStruct}, without allocating them."""
    size = 2 ** len(model.enc_blk_nums) if isinstance(model, UNet) else 2  # NAFSSR: any size
    x = jax.ShapeDtypeStruct((1, size, size, model.img_channel), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return flatten_params(variables["params"])


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}}."""
    tree: Dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def torch_to_flax(state_dict: Mapping[str, Any], model: ModelSpec,
                  source: str = "state dict") -> Dict[str, Dict[str, Any]]:
    """An original NAFNet/Baseline/NAFSSR state dict -> Flax variables {'params': ...}.

    Args:
      state_dict: PyTorch keys (already unwrapped, see `unwrap_state_dict`) to
        arrays (numpy, or anything `np.asarray` takes, e.g. CPU tensors).
      model: a published name (`nafnet_jax.models.PUBLISHED`, `PUBLISHED_NAFSSR`), a model
        config mapping, or a `UNet` / `NAFSSR`.
      source: a name for the checkpoint in error messages (e.g. its file name).
    Returns:
      {'params': nested dict of numpy arrays} in the model's parameter dtype.
    Raises:
      StateDictMismatchError: listing every unexpected key (also keys no
        KEY_TABLE row knows), every missing key and every shape mismatch.
    """
    expected = abstract_params(resolve_model(model))
    flat, problems, seen = {}, [], set()
    for key in sorted(state_dict):
        mapped = torch_key_to_flax_path(key)
        if mapped is None:
            problems.append(f"unexpected key {key!r} (no rule in nafnet_jax.tools.convert.KEY_TABLE)")
            continue
        path, layout = mapped
        if path not in expected:
            problems.append(f"unexpected key {key!r} (the model has no parameter {path!r})")
            continue
        seen.add(path)
        value = np.asarray(state_dict[key])
        want = layout.torch_shape(tuple(expected[path].shape))
        if value.shape != want:
            problems.append(f"shape mismatch for {key!r}: checkpoint {value.shape}, "
                            f"model expects {want}")
            continue
        flat[path] = np.ascontiguousarray(layout.to_flax(value), dtype=expected[path].dtype)
    for path in sorted(set(expected) - seen):
        mapped = flax_path_to_torch_key(path)
        if mapped is None:
            problems.append(f"Flax parameter {path!r} has no rule in nafnet_jax.tools.convert.KEY_TABLE")
            continue
        shape = mapped[1].torch_shape(tuple(expected[path].shape))
        problems.append(f"missing key {mapped[0]!r} (shape {shape}) for Flax parameter {path!r}")
    if problems:
        raise _problem_report(f"{source} does not fit model {_describe(model)}", problems)
    return {"params": unflatten_params(flat)}


def flax_to_torch(variables: Mapping[str, Any], model: ModelSpec) -> StateDict:
    """Flax variables ({'params': ...}, or the params tree itself) -> a PyTorch state dict.

    The result (numpy arrays, C-contiguous, keys as the original) loads into the
    original `NAFNet` / `Baseline` / `NAFSSR` and spandrel's NAFNet with `strict=True`.
    Raises StateDictMismatchError listing every missing/unexpected/mis-shaped param.
    """
    params = variables["params"] if "params" in variables else variables
    flat = flatten_params(params)
    expected = abstract_params(resolve_model(model))
    problems = [f"unexpected Flax parameter {p!r}" for p in sorted(set(flat) - set(expected))]
    problems += [f"missing Flax parameter {p!r} (shape {expected[p].shape})"
                 for p in sorted(set(expected) - set(flat))]
    state_dict = {}
    for path in sorted(set(flat) & set(expected)):
        value = np.asarray(flat[path])
        if value.shape != tuple(expected[path].shape):
            problems.append(f"shape mismatch for Flax parameter {path!r}: got {value.shape}, "
                            f"model expects {tuple(expected[path].shape)}")
            continue
        mapped = flax_path_to_torch_key(path)
        if mapped is None:
            problems.append(f"Flax parameter {path!r} has no rule in nafnet_jax.tools.convert.KEY_TABLE")
            continue
        key, layout = mapped
        state_dict[key] = np.ascontiguousarray(layout.to_torch(value))
    if problems:
        raise _problem_report(f"parameters do not fit model {_describe(model)}", problems)
    return state_dict


# -------------------------------------------------------------------------------------------------
# Files.

_MODULE_PREFIX = "module."  # DataParallel/DDP wrappers; BasicSR's load_network strips it too
EMA_KEY = "params_ema"  # where BasicSR's save_network puts the EMA weights (beside 'params')


def unwrap_state_dict(checkpoint: Mapping[str, Any], param_key: Optional[str] = None,
                      source: str = "checkpoint") -> Dict[str, Any]:
    """The state dict inside a checkpoint, with `module.` prefixes stripped.

    Accepts the original's `{'params': state_dict}` (BasicSR also writes
    `params_ema`), or a plain state dict. With `param_key=None`, 'params' is
    used if present, else 'params_ema', else the mapping itself.
    """
    if param_key is not None:
        if param_key not in checkpoint:
            raise KeyError(f"{source}: no entry {param_key!r}; "
                           f"top-level keys: {sorted(checkpoint)[:10]}")
        inner = checkpoint[param_key]
    elif isinstance(checkpoint.get("params"), Mapping):
        inner = checkpoint["params"]
    elif isinstance(checkpoint.get("params_ema"), Mapping):
        inner = checkpoint["params_ema"]
    else:
        inner = checkpoint
    if not isinstance(inner, Mapping):
        raise CheckpointFileError(f"{source}: expected a state dict (mapping), got {type(inner).__name__}")
    return {(k[len(_MODULE_PREFIX):] if k.startswith(_MODULE_PREFIX) else k): v
            for k, v in inner.items()}


def _tensor_to_numpy(value: Any) -> Any:
    import torch  # only reached for .pth input
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.float()
        return value.numpy()
    return value


def _read_checkpoint_file(path: str) -> Mapping[str, Any]:
    """The top-level mapping of a .pth/.pt (torch) or .safetensors file; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(f"{path}: empty file (0 bytes)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file
            checkpoint = load_file(path)
        else:
            import torch
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/pickle/zip/safetensors raise many types for a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointFileError(f"{path}: not a readable checkpoint (truncated or another format?): "
                                  f"{type(e).__name__}: {first}") from e
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFileError(f"{path}: expected a dict checkpoint (a state dict or "
                                  f"{{'params': state_dict}}), got a {type(checkpoint).__name__}")
    return checkpoint


def _numpy_state_dict(state_dict: Mapping[str, Any]) -> StateDict:
    return {k: np.asarray(_tensor_to_numpy(v)) if not isinstance(v, np.ndarray) else v
            for k, v in state_dict.items()}


def load_torch_checkpoint(path: str, param_key: Optional[str] = None) -> StateDict:
    """Reads an original checkpoint (.pth/.pt via torch, .safetensors without) as numpy arrays.

    See `unwrap_state_dict` for the accepted layouts.
    """
    return _numpy_state_dict(unwrap_state_dict(_read_checkpoint_file(path), param_key, source=path))


def load_torch_checkpoint_with_ema(path: str) -> Tuple[StateDict, Optional[StateDict]]:
    """(raw state dict, EMA state dict or None) of a checkpoint file.

    A BasicSR checkpoint holding both `params` and `params_ema` (as the original saves with
    an EMA) gives both; any other layout gives what `load_torch_checkpoint` reads, and None.
    """
    checkpoint = _read_checkpoint_file(path)
    if isinstance(checkpoint.get("params"), Mapping) and isinstance(checkpoint.get(EMA_KEY), Mapping):
        return (_numpy_state_dict(unwrap_state_dict(checkpoint, "params", source=path)),
                _numpy_state_dict(unwrap_state_dict(checkpoint, EMA_KEY, source=path)))
    return _numpy_state_dict(unwrap_state_dict(checkpoint, None, source=path)), None


def save_torch_checkpoint(state_dict: Mapping[str, np.ndarray], path: str,
                          ema_state_dict: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Writes `{'params': state_dict}` as the original saves it (.pth), or a flat .safetensors.

    With `ema_state_dict`, a .pth holds `{'params': ..., 'params_ema': ...}`, as BasicSR saves a
    model trained with an EMA (its loaders take `param_key='params_ema'`). A .safetensors file holds
    one flat state dict, so it cannot take both (ValueError: write the one you want).
    The file is written beside `path` and renamed over it when complete.
    """
    if ema_state_dict is not None and path.endswith(".safetensors"):
        raise ValueError(f"{path}: a .safetensors file holds one state dict; write either the raw or "
                         "the EMA parameters (--use-ema), or use a .pth file for both")
    arrays = {k: np.array(v, order="C", copy=True) for k, v in state_dict.items()}
    ema_arrays = (None if ema_state_dict is None
                  else {k: np.array(v, order="C", copy=True) for k, v in ema_state_dict.items()})
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(directory, f".{stem}.partial-{os.getpid()}{ext}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import save_file
            save_file(arrays, tmp)
        else:
            import torch
            checkpoint = {"params": {k: torch.from_numpy(v) for k, v in arrays.items()}}
            if ema_arrays is not None:
                checkpoint[EMA_KEY] = {k: torch.from_numpy(v) for k, v in ema_arrays.items()}
            torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def convert_checkpoint(path: str, model: ModelSpec, param_key: Optional[str] = None
                       ) -> Dict[str, Dict[str, Any]]:
    """`load_torch_checkpoint` + `torch_to_flax`: a checkpoint file -> {'params': ...}."""
    return torch_to_flax(load_torch_checkpoint(path, param_key), model, source=path)


# -------------------------------------------------------------------------------------------------
# Command line.


def _parse_override(text: str) -> Tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string, e.g. dtype=bfloat16
    return key, value


def _refuse_existing(path: str, overwrite: bool) -> None:
    """Stops before any work if the output exists (a non-empty directory) and not --overwrite."""
    from nafnet_jax.cli import UsageError
    occupied = os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))
    if occupied and not overwrite:
        raise UsageError(f"output {path!r} already exists and is not empty; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"output {path!r}: folder {parent} does not exist")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nafnet_jax.tools.convert",
        description="Convert original NAFNet/Baseline/NAFSSR PyTorch weights to an Orbax checkpoint, "
                    "or back with --to-torch.")
    p.add_argument("input", help="a .pth/.safetensors file (default direction), or with --to-torch "
                                 "anything nafnet_jax.training.checkpointing.load_model_checkpoint reads")
    p.add_argument("output", help="Orbax checkpoint directory (default direction), or with "
                                  "--to-torch a .pth ({'params': state_dict}) or .safetensors file")
    p.add_argument("--model", help="published model name (nafnet_jax.models.PUBLISHED or PUBLISHED_NAFSSR, "
                                   "e.g. NAFSSR-L-x4); required "
                                   "unless --to-torch, where it overrides the checkpoint's config")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                   metavar="KEY=VALUE", help="model override stored in the config, VALUE as JSON "
                                             "(e.g. --set tlc_train_size=null); repeatable")
    p.add_argument("--param-key", default=None,
                   help="checkpoint entry to read as the parameters (default: 'params' and, if present, "
                        "'params_ema' as the EMA parameters; else 'params_ema'; else the file is the state dict)")
    p.add_argument("--to-torch", action="store_true", help="convert a Flax checkpoint to PyTorch")
    p.add_argument("--use-ema", "--use_ema", dest="use_ema", action="store_true",
                   help="with --to-torch: the checkpoint must hold EMA parameters; a .safetensors output "
                        "gets them (a .pth always gets both 'params' and 'params_ema' when there is an EMA)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (the new one is written beside it, then swapped in)")
    p.add_argument("--debug", action="store_true", help="print tracebacks with errors (also: NAFNET_DEBUG=1)")
    return p


PROG = "python -m nafnet_jax.tools.convert"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The converter's command line. Exit statuses: 0 done, 2 bad input (one line naming it), 1 other."""
    args = _build_parser().parse_args(argv)
    from nafnet_jax import cli
    return cli.run_main(lambda: _convert(args), PROG, sys.argv if argv is None else argv)


def _convert(args: argparse.Namespace) -> int:
    from nafnet_jax.training import checkpointing  # imported late: it pulls in orbax
    from nafnet_jax import cli

    def warn(message: str) -> None:
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    overrides = dict(args.overrides)
    if args.to_torch:
        with cli.preflight():  # reading and checking the inputs; nothing is written yet
            _refuse_existing(args.output, args.overwrite)
            params, model_config = checkpointing.load_model_checkpoint(args.input, report=warn)
            try:
                ema_params, _ = checkpointing.load_model_checkpoint(args.input, use_ema=True, report=warn)
            except checkpointing.MissingEntryError:
                if args.use_ema:
                    raise
                ema_params = None
            if args.model:
                model_config = {"name": args.model}
            model_config = {**dict(model_config), **overrides}
            model = build_model(model_config)
            try:
                state_dict = flax_to_torch(params, model)
                ema_state_dict = None if ema_params is None else flax_to_torch(ema_params, model)
            except StateDictMismatchError as e:
                raise cli.UsageError(e.summary()) from e
            if args.output.endswith(".safetensors"):  # one flat state dict: the one asked for
                state_dict, ema_state_dict = (ema_state_dict, None) if args.use_ema else (state_dict, None)
        save_torch_checkpoint(state_dict, args.output, ema_state_dict)
        with_ema = f" (and {EMA_KEY!r})" if ema_state_dict is not None else ""
        print(f"wrote {len(state_dict)} tensors{with_ema} for model {model_config} to {args.output}")
        return 0

    with cli.preflight():
        if not args.model:
            raise cli.UsageError("--model NAME is required (one of nafnet_jax.models.PUBLISHED or "
                                 "PUBLISHED_NAFSSR)")
        _refuse_existing(args.output, args.overwrite)
        model_config = {"name": args.model, **overrides}
        model = build_model(model_config)  # validates the name and overrides before reading weights
        try:
            if args.param_key is None:
                state_dict, ema_state_dict = load_torch_checkpoint_with_ema(args.input)
            else:
                state_dict, ema_state_dict = load_torch_checkpoint(args.input, args.param_key), None
            variables = torch_to_flax(state_dict, model, source=args.input)
            ema_params = (None if ema_state_dict is None else
                          torch_to_flax(ema_state_dict, model, source=f"{args.input} ({EMA_KEY})")["params"])
        except StateDictMismatchError as e:
            raise cli.UsageError(e.summary()) from e
    checkpointing.save_model_checkpoint(args.output, variables["params"], model_config, step=0,
                                        overwrite=args.overwrite, ema_params=ema_params)
    count = sum(v.size for v in jax.tree.leaves(variables))
    with_ema = f", with its {EMA_KEY!r} as the EMA parameters" if ema_params is not None else ""
    print(f"converted {args.input} ({count:,} parameters{with_ema}) for model {model_config} "
          f"to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
