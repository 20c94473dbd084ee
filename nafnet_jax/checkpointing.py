"""Orbax checkpoints: the training manager, and params-only model checkpoints.

Layout (one Orbax `CheckpointManager` directory):

    <dir>/<step>/state    the train state (or just {'params': ...} for a converted model)
    <dir>/<step>/config   the run's config as JSON (its `model` entry rebuilds the model)

`train.py` writes `<workdir>/checkpoints`; the converter writes the same layout
at step 0. Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STATE = "state"
CONFIG = "config"
CHECKPOINT_SUBDIR = "checkpoints"
BEST_METRIC = "val_psnr"


def _policy(keep: int) -> Any:
    """Keep the last `keep` steps plus the best by validation PSNR."""
    pp = ocp.checkpoint_managers
    return pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                 keep_checkpoints_without_metrics=False),
    ])


def create_manager(directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """The manager train.py uses (items 'state' and 'config')."""
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else _policy(keep),
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    handlers = {STATE: ocp.PyTreeCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(epath.Path(directory).absolute(), item_handlers=handlers,
                                 options=options)


def best_step(manager: ocp.CheckpointManager) -> Optional[int]:
    """The step with the highest saved validation PSNR, or None if none has one."""
    scored = []
    for step in manager.all_steps():
        metrics = manager.metrics(step)
        if metrics and BEST_METRIC in metrics:
            scored.append((float(metrics[BEST_METRIC]), step))
    return max(scored)[1] if scored else None


def resolve_checkpoint_dir(path: str | os.PathLike) -> epath.Path:
    """Accepts a train.py workdir, its `checkpoints` dir, or a converter output dir."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if (path / CHECKPOINT_SUBDIR).is_dir():
        return path / CHECKPOINT_SUBDIR
    return path


def _split_step_dir(path: epath.Path) -> Tuple[epath.Path, Optional[int]]:
    """A path to one step's directory (`.../checkpoints/1200`) -> (manager dir, step)."""
    if path.name.isdigit() and (path / STATE).exists():
        return path.parent, int(path.name)
    return path, None


def load_config(path: str | os.PathLike, step: Optional[int] = None) -> Dict[str, Any]:
    """The config dict saved with a checkpoint (best step, else latest, unless `step`)."""
    directory, step_in_path = _split_step_dir(resolve_checkpoint_dir(path))
    manager = create_manager(directory, read_only=True)
    step = _pick_step(manager, directory, step if step is not None else step_in_path)
    return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]


def _pick_step(manager: ocp.CheckpointManager, directory: epath.Path, step: Optional[int]) -> int:
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint found in {directory} (expected <step>/{STATE} subdirectories)")
    if step is None:
        best = best_step(manager)
        return best if best is not None else manager.latest_step()
    if step not in steps:
        raise FileNotFoundError(f"step {step} not in {directory}; available steps: {sorted(steps)}")
    return step


def load_model_checkpoint(path: str | os.PathLike, step: Optional[int] = None,
                          use_ema: bool = False) -> Tuple[Any, Dict[str, Any]]:
    """Loads model parameters and the model config from any checkpoint of this project.

    Args:
      path: a train.py workdir, its `checkpoints` dir, one step's dir, or a
        converter output dir.
      step: which step; default: the best by validation PSNR, else the latest.
      use_ema: load the EMA parameters (error if the run kept none).
    Returns:
      (params as numpy arrays, the model config mapping for `build_model`).
    """
    directory, step_in_path = _split_step_dir(resolve_checkpoint_dir(path))
    manager = create_manager(directory, read_only=True)
    step = _pick_step(manager, directory, step if step is not None else step_in_path)
    metadata = manager.item_metadata(step)[STATE]
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    key = "ema_params" if use_ema else "params"
    if key not in tree or tree[key] is None:
        raise KeyError(f"checkpoint {directory}/{step} has no {key!r} (entries: {sorted(tree)})")
    subtree = {key: tree[key]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), subtree)
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(item=subtree, restore_args=restore_args, partial_restore=True),
        CONFIG: ocp.args.JsonRestore()}))
    config = restored[CONFIG]
    if "model" not in config:
        raise KeyError(f"checkpoint {directory}/{step}: its config has no 'model' entry")
    return restored[STATE][key], dict(config["model"])


def save_model_checkpoint(directory: str | os.PathLike, params: Any, model_config: Mapping[str, Any],
                          step: int = 0, overwrite: bool = False) -> epath.Path:
    """Writes a params-only checkpoint (e.g. converted weights) that eval.py and restore load.

    Refuses a directory that already holds checkpoints unless `overwrite`.
    """
    directory = epath.Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{directory} is not empty; pass overwrite=True (--overwrite) to replace it")
        directory.rmtree()
    manager = create_manager(directory, keep=1, async_save=False)
    config = {"model": _jsonable(dict(model_config))}
    manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave({"params": params}), CONFIG: ocp.args.JsonSave(config)}))
    manager.wait_until_finished()
    manager.close()
    return directory


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):  # BlockConfig
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "dtype") or isinstance(value, type):  # a dtype such as jnp.bfloat16
        return np.dtype(value).name
    raise TypeError(f"cannot store config value {value!r} of type {type(value).__name__} as JSON")


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       prefix: str = "") -> Sequence[str]:
    """Human-readable differences between two (nested) config dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(config_differences(a, b, prefix=name + "."))
        elif _jsonable(a) != _jsonable(b):
            out.append(f"{name}: checkpoint has {a!r}, config has {b!r}")
    return out
