"""Orbax checkpoints: the training manager, and params-only model checkpoints.

Layout (one Orbax `CheckpointManager` directory):

    <dir>/<step>/state    the train state (or just {'params': ...} for a converted model)
    <dir>/<step>/config   the run's config as JSON (its `model` entry rebuilds the model)

`train.py` writes `<workdir>/checkpoints`; the converter writes the same layout
at step 0. Orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint.

Damage (a partial copy, a disk fault, a deleted or truncated file) is found when
a step is loaded: `check_step` looks for the files every step must have, and a
failed read names the file the storage layer could not read. Loaders go from the
newest (or best) step to older ones until one is intact
(`restore_newest_intact`), saying which step and which file were damaged. A
damaged step is never deleted; the trainer moves it aside
(`set_aside_damaged`) so that a later save of the same step number can succeed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

STATE = "state"
CONFIG = "config"
CHECKPOINT_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "damaged_checkpoints"
# The saved checkpoint metric the best-checkpoint policy ranks by (higher is better): the value of the
# run's `train.best_metric` (e.g. 'val/psnr' or 'val/psnr_ema'). Checkpoints written before it existed
# carry only `LEGACY_BEST_METRIC` (the raw validation PSNR), which is ranked instead.
BEST_METRIC = "best"
LEGACY_BEST_METRIC = "val_psnr"
# The model fields that decide the parameters' names and shapes. A checkpoint fits a model iff these
# agree; everything else (dtype, remat, depthwise_impl, tlc_train_size, ...) may change on resume or eval.
# The U-Net's fields, then NAFSSR's; a model is compared on the fields its class has.
PARAMETER_FIELDS = ("block", "width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums", "img_channel",
                    "up_scale", "num_blks", "fusion_from", "fusion_to")
# Fields that change a model's outputs but not its parameters: a published name given to a tool must
# agree with the checkpoint in these too (`architecture_differences(..., PARAMETER_FIELDS + OUTPUT_FIELDS)`).
OUTPUT_FIELDS = ("tlc_train_size",)
# Files every step written by this project has (relative to the step directory).
_REQUIRED_FILES = ("_CHECKPOINT_METADATA", f"{STATE}/_METADATA", f"{STATE}/manifest.ocdbt",
                   f"{CONFIG}/metadata")
_JSON_FILES = ("_CHECKPOINT_METADATA", f"{STATE}/_METADATA", f"{CONFIG}/metadata")
FAULT_ENV = "NAFNET_FAULT_POINT"
MAX_LISTED = 5  # differences / damaged steps named in one error line before "and N more"

T = TypeVar("T")


class ModelMismatchError(ValueError):
    """A checkpoint's parameters do not fit the requested model (a usage error, not damage)."""


class MissingEntryError(KeyError):
    """A checkpoint lacks a requested entry, e.g. EMA parameters (a usage error, not damage)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DamagedCheckpointError(RuntimeError):
    """One step of a checkpoint directory cannot be read; the message names the step and the file."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint step {step} is damaged: {reason}")
        self.step, self.reason = step, reason


class NoIntactCheckpointError(FileNotFoundError):
    """Every candidate step of a checkpoint directory is damaged (or there is none)."""


def fault_point(name: str) -> None:
    """Test hook: the process kills itself (SIGKILL) here if $NAFNET_FAULT_POINT == name.

    Lets the fault-injection tests stop a write at an exact point without timing.
    """
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def ranking_value(metrics: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The value a step is ranked by (`BEST_METRIC`, else the legacy validation PSNR), or None."""
    if not metrics:
        return None
    for key in (BEST_METRIC, LEGACY_BEST_METRIC):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


def _rank_key(metrics: Optional[Mapping[str, Any]]) -> float:
    """`ranking_value` for Orbax's sorting: a step saved without validation ({} metrics) ranks last."""
    value = ranking_value(metrics)
    return -math.inf if value is None else value


def checkpoint_metrics(val_scalars: Mapping[str, float], best_metric: str) -> Dict[str, float]:
    """The metrics saved with a validated step: `BEST_METRIC` (the chosen metric's value) and every
    validation scalar ('val/psnr' saved as 'val_psnr', ...), so the record says what was ranked.

    Raises KeyError naming `train.best_metric` if validation did not report it.
    """
    if best_metric not in val_scalars:
        raise KeyError(f"train.best_metric={best_metric!r} was not reported by validation "
                       f"(it reported {sorted(val_scalars)})")
    saved = {key.replace("/", "_"): float(value) for key, value in val_scalars.items()}
    saved[BEST_METRIC] = float(val_scalars[best_metric])
    return saved


def _policy(keep: int) -> Any:
    """Keep the last `keep` steps plus the best by the run's best metric (`ranking_value`)."""
    pp = ocp.checkpoint_managers
    return pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=_rank_key, reverse=False, n=1,
                 keep_checkpoints_without_metrics=False),
    ])


def create_manager(directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """The manager train.py uses (items 'state' and 'config')."""
    # best_fn: Orbax writes a step's metrics to disk only when it is set, and `best_step` (a resumed
    # run's policy, eval.py's default step) reads them from there. Save steps without validation with
    # metrics={} (not None, which Orbax warns about on every save when best_fn is set).
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else _policy(keep), best_fn=_rank_key, best_mode="max",
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    handlers = {STATE: ocp.PyTreeCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(epath.Path(directory).absolute(), item_handlers=handlers,
                                 options=options)


def best_step(manager: ocp.CheckpointManager) -> Optional[int]:
    """The step with the highest saved best metric (`ranking_value`), or None if none has one."""
    scored = []
    for step in manager.all_steps():
        value = ranking_value(manager.metrics(step))
        if value is not None:
            scored.append((value, step))
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


# ---------------------------------------------------------------------------
# Damage detection and fallback.
# ---------------------------------------------------------------------------

def check_step(directory: str | os.PathLike, step: int) -> Optional[str]:
    """Cheap structural check of one step: None if it looks complete, else what is wrong.

    Looks for the files every step must have (metadata, manifests) and for empty
    or unparsable metadata files; the array data is checked by reading it.
    """
    step_dir = epath.Path(directory) / str(step)
    if not step_dir.is_dir():
        return f"{step_dir} is missing"
    for rel in _REQUIRED_FILES:
        path = step_dir / rel
        if not path.exists():
            return f"{path} is missing"
    if "://" not in os.fspath(step_dir):  # a local disk: look for truncated-to-nothing files too
        for root, _, files in os.walk(os.fspath(step_dir)):
            for name in sorted(files):
                if os.path.getsize(os.path.join(root, name)) == 0:
                    return f"{os.path.join(root, name)} is empty (truncated)"
    for rel in _JSON_FILES:
        try:
            json.loads((step_dir / rel).read_text())
        except (ValueError, UnicodeDecodeError) as e:
            return f"{step_dir / rel} is not valid JSON (truncated?): {e}"
    return None


def describe_read_error(error: BaseException, step_dir: str | os.PathLike) -> str:
    """One line naming the file a failed checkpoint read could not use (from the error text)."""
    text = str(error)
    files = re.findall(r'local file "([^"]+)"', text)
    code = re.match(r"([A-Z_]{4,}):", text)
    if files:
        name = code.group(1) if code else type(error).__name__
        what = {"NOT_FOUND": "is missing", "OUT_OF_RANGE": "is truncated",
                "DATA_LOSS": "is corrupt"}.get(name, f"cannot be read ({name})")
        return f"{files[-1]} {what}"
    first = (text.split("[tensorstore_spec", 1)[0].strip().splitlines() or [""])[0]
    return f"{step_dir} cannot be read ({type(error).__name__}: {first[:200]})"


def restore_newest_intact(directory: str | os.PathLike, steps: Sequence[int],
                          restore_step: Callable[[int], T],
                          report: Optional[Callable[[str], None]] = None,
                          fatal: Tuple[Type[BaseException], ...] = (ModelMismatchError, MissingEntryError),
                          ) -> Tuple[int, T, List[DamagedCheckpointError]]:
    """Restores the first intact step of `steps` (in the order given: newest or best first).

    Args:
      directory: the checkpoint directory (holds `<step>/` subdirectories).
      steps: candidate steps, most wanted first.
      restore_step: reads one step (raises if it cannot).
      report: called with one line for each damaged step skipped (default: a log warning).
      fatal: exception types that are not damage (e.g. a model mismatch): re-raised at once.
    Returns:
      (the step restored, what `restore_step` returned, the damaged steps skipped).
    Raises:
      NoIntactCheckpointError: no step could be read (its message names each damaged step's file).
    """
    report = report or logging.warning
    damaged: List[DamagedCheckpointError] = []
    for step in steps:
        problem = check_step(directory, step)
        if problem is None:
            try:
                result = restore_step(step)
            except fatal:
                raise
            except Exception as e:  # the storage layer raises many types (ValueError, OSError, ...)
                problem = describe_read_error(e, epath.Path(directory) / str(step))
            else:
                if damaged:
                    report(f"using checkpoint step {step} instead (the newest intact one)")
                return step, result, damaged
        damaged.append(DamagedCheckpointError(step, problem))
        report(f"{damaged[-1]}; it is kept, not deleted; trying an older step")
    if not steps:
        raise NoIntactCheckpointError(f"no checkpoint found in {directory} "
                                      f"(expected <step>/{STATE} subdirectories)")
    listed = "; ".join(str(d) for d in damaged[:MAX_LISTED])
    more = f" (and {len(damaged) - MAX_LISTED} more)" if len(damaged) > MAX_LISTED else ""
    raise NoIntactCheckpointError(f"no intact checkpoint in {directory}: {listed}{more}")


def set_aside_damaged(checkpoint_dir: str | os.PathLike, steps: Sequence[int]) -> List[epath.Path]:
    """Moves damaged step directories to `<checkpoint_dir>/../damaged_checkpoints/` (never deletes).

    Training does this after falling back, so that saving that step number again can succeed.
    Returns the new locations.
    """
    checkpoint_dir = epath.Path(checkpoint_dir)
    target_root = checkpoint_dir.parent / DAMAGED_SUBDIR
    moved = []
    for step in steps:
        src = checkpoint_dir / str(step)
        if not src.exists():
            continue
        target_root.mkdir(parents=True, exist_ok=True)
        dst = target_root / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        n = 1
        while dst.exists():
            dst, n = target_root / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}-{n}", n + 1
        os.replace(src, dst)
        moved.append(dst)
    return moved


def restore_for_resume(manager: ocp.CheckpointManager, abstract_state: Any,
                       model_config: Mapping[str, Any],
                       report: Optional[Callable[[str], None]] = None) -> Optional[Tuple[int, Any]]:
    """The trainer's resume: (step, state) from the newest intact step, or None if there is none.

    Each candidate's saved model config must agree with `model_config` in the
    parameter-shaping fields (`PARAMETER_FIELDS`); other fields (dtype, remat,
    depthwise_impl, ...) may differ. Damaged newer steps are reported, then moved
    to `damaged_checkpoints/` beside the checkpoint directory (process 0; never
    deleted) so that training can save those step numbers again.

    Raises:
      ModelMismatchError: the checkpoint was trained with another architecture.
      NoIntactCheckpointError: steps exist but none can be read.
    """
    directory = epath.Path(manager.directory)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None

    def restore(step: int) -> Any:
        saved = manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
        if not isinstance(saved, Mapping) or not isinstance(saved.get("model"), Mapping):
            raise ValueError(f'local file "{directory / str(step) / CONFIG / "metadata"}": no model config')
        differences = parameter_differences(saved["model"], model_config)
        if differences:
            raise ModelMismatchError(
                f"{directory.parent}: the checkpoint (step {step}) holds another model than this config, "
                f"{summarize_differences(differences)}; use a new --workdir or the checkpoint's model settings")
        return manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            item=abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
        ))[STATE]

    step, state, damaged = restore_newest_intact(directory, steps, restore, report)
    if damaged:
        if jax.process_index() == 0:
            for path in set_aside_damaged(directory, [d.step for d in damaged]):
                (report or logging.warning)(f"moved the damaged checkpoint to {path}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("nafnet_jax: damaged checkpoints set aside")
        manager.reload()
    return step, state


def candidate_steps(manager: ocp.CheckpointManager, directory: epath.Path,
                    step: Optional[int] = None) -> List[int]:
    """Steps to try, most wanted first: just `step` if given, else the best, then newest to oldest."""
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps and not (directory / str(step)).is_dir():
            raise FileNotFoundError(f"step {step} not in {directory}; available steps: {sorted(steps)}")
        return [step]
    try:
        best = best_step(manager)
    except Exception:  # unreadable metadata of a damaged step: no ranking, newest first
        best = None
    return ([best] if best is not None else []) + [s for s in steps if s != best]


def load_config(path: str | os.PathLike, step: Optional[int] = None,
                report: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The config dict saved with a checkpoint (best step, else latest, unless `step`).

    A damaged step is skipped for the next one (see `restore_newest_intact`).
    """
    directory, step_in_path = _split_step_dir(resolve_checkpoint_dir(path))
    manager = create_manager(directory, read_only=True)
    steps = candidate_steps(manager, directory, step if step is not None else step_in_path)
    try:
        _, config, _ = restore_newest_intact(directory, steps, lambda s: manager.restore(
            s, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG], report)
    finally:
        manager.close()
    return config


def load_model_checkpoint(path: str | os.PathLike, step: Optional[int] = None,
                          use_ema: bool = False, report: Optional[Callable[[str], None]] = None
                          ) -> Tuple[Any, Dict[str, Any]]:
    """Loads model parameters and the model config from any checkpoint of this project.

    As `load_model_checkpoint_step`, without the step.
    """
    params, model_config, _ = load_model_checkpoint_step(path, step, use_ema, report)
    return params, model_config


def load_model_checkpoint_step(path: str | os.PathLike, step: Optional[int] = None,
                               use_ema: bool = False, report: Optional[Callable[[str], None]] = None
                               ) -> Tuple[Any, Dict[str, Any], int]:
    """Loads model parameters, the model config and the step they were loaded from.

    Args:
      path: a train.py workdir, its `checkpoints` dir, one step's dir, or a
        converter output dir.
      step: which step; default: the best by the run's `train.best_metric`, else the latest.
        Without an explicit step, a damaged one is skipped for the next best
        (newest first), and `report` is told which step and file were damaged.
      use_ema: load the EMA parameters (`MissingEntryError` naming the checkpoint if it has none).
      report: called with one line per damaged step skipped (default: a log warning).
    Returns:
      (params as numpy arrays, the model config mapping for `build_model`, the step loaded).
    Raises:
      NoIntactCheckpointError (a FileNotFoundError) if no candidate step can be read;
      MissingEntryError (a KeyError) if the checkpoint has no such parameters.
    """
    directory, step_in_path = _split_step_dir(resolve_checkpoint_dir(path))
    manager = create_manager(directory, read_only=True)
    steps = candidate_steps(manager, directory, step if step is not None else step_in_path)
    key = "ema_params" if use_ema else "params"

    def restore(s: int) -> Tuple[Any, Dict[str, Any]]:
        metadata = manager.item_metadata(s)[STATE]
        tree = metadata.tree if hasattr(metadata, "tree") else metadata
        if tree is None:
            raise ValueError(f'local file "{directory / str(s) / STATE / "_METADATA"}": unreadable metadata')
        if key not in tree or tree[key] is None:
            if use_ema:
                raise MissingEntryError(f"checkpoint {directory / str(s)} has no EMA parameters ('{key}'): "
                                        "its run kept none (train.ema_decay=0); load it without use_ema")
            raise MissingEntryError(f"checkpoint {directory / str(s)} has no {key!r} (entries: {sorted(tree)})")
        subtree = {key: tree[key]}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), subtree)
        restored = manager.restore(s, args=ocp.args.Composite(**{
            STATE: ocp.args.PyTreeRestore(item=subtree, restore_args=restore_args, partial_restore=True),
            CONFIG: ocp.args.JsonRestore()}))
        config = restored[CONFIG]
        if not isinstance(config, Mapping) or "model" not in config:
            raise MissingEntryError(f"checkpoint {directory}/{s}: its config has no 'model' entry")
        return restored[STATE][key], dict(config["model"])

    try:
        loaded, (params, model_config), _ = restore_newest_intact(directory, steps, restore, report)
    finally:
        manager.close()
    return params, model_config, loaded


def save_model_checkpoint(directory: str | os.PathLike, params: Any, model_config: Mapping[str, Any],
                          step: int = 0, overwrite: bool = False, ema_params: Any = None) -> epath.Path:
    """Writes a params-only checkpoint (e.g. converted weights) that eval.py and restore load.

    `ema_params` (same tree as `params`), if given, are stored as the state's 'ema_params', which
    `load_model_checkpoint(..., use_ema=True)` (eval.py/nafnet-restore `--use_ema`) reads.
    Refuses a directory that already holds anything unless `overwrite`. The new
    checkpoint is written beside the destination (`.<name>.partial`) and swapped
    in only when complete, so a crash at any point leaves the old one usable.
    """
    directory = epath.Path(directory).absolute()
    occupied = directory.exists() and (not directory.is_dir() or any(directory.iterdir()))
    if occupied and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True (--overwrite) to replace it")
    if occupied and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file, not a checkpoint directory; remove it first")
    partial = directory.parent / f".{directory.name}.partial"
    if partial.exists():  # left by an earlier interrupted run of this function
        partial.rmtree()
    manager = create_manager(partial, keep=1, async_save=False)
    config = {"model": _jsonable(dict(model_config))}
    manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeSave({"params": params} if ema_params is None
                                   else {"params": params, "ema_params": ema_params}),
        CONFIG: ocp.args.JsonSave(config)}), metrics={})
    manager.wait_until_finished()
    manager.close()
    fault_point("save_model_checkpoint.written")
    if occupied:
        swap_directories(partial, directory)
        fault_point("save_model_checkpoint.swapped")
        partial.rmtree()  # now holds the old checkpoint
    else:
        if directory.exists():
            directory.rmdir()  # empty
        os.replace(partial, directory)
    return directory


def swap_directories(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """Exchanges two directories: atomically where the OS can (Linux renameat2), else by two renames.

    The fallback renames `b` aside first, so at every moment one complete copy of each exists under
    a known name (`b`, `a`, or `.<b>.old`).
    """
    a, b = os.fspath(a), os.fspath(b)
    if _exchange(a, b):
        return
    old = os.path.join(os.path.dirname(b), f".{os.path.basename(b)}.old")
    if os.path.exists(old):
        shutil.rmtree(old)
    os.replace(b, old)
    os.replace(a, b)
    os.replace(old, a)


def _exchange(a: str, b: str) -> bool:
    """renameat2(RENAME_EXCHANGE); False where unavailable (not Linux, old libc, some filesystems)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces a small text file (config.json, metrics.json) all at once: tmp file + rename."""
    from nafnet_jax.data.image_io import write_atomic
    write_atomic(os.fspath(path), text.encode("utf-8"), overwrite=True)


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


def architecture_differences(a: Any, b: Any, fields: Sequence[str] = PARAMETER_FIELDS,
                             names: Tuple[str, str] = ("checkpoint", "config"), prefix: str = "") -> List[str]:
    """The fields in which two models (`UNet` or `NAFSSR` instances) differ, one line each.

    The one comparison of architectures (resume, eval.py's config.model, nafnet-restore's --model):
    lines read '<prefix><field>: <names[0]> has <a's value>, <names[1]> has <b's value>'. Models
    of different classes differ in 'arch' alone; each class is compared on those of `fields` it has.
    """
    if type(a) is not type(b):
        return [f"{prefix}arch: {names[0]} has {type(a).__name__}, {names[1]} has {type(b).__name__}"]
    return [f"{prefix}{field}: {names[0]} has {_jsonable(getattr(a, field))!r}, "
            f"{names[1]} has {_jsonable(getattr(b, field))!r}"
            for field in fields if hasattr(a, field) and getattr(a, field) != getattr(b, field)]


def parameter_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                          prefix: str = "model.") -> List[str]:
    """Differences in the parameter-shaping fields (`PARAMETER_FIELDS`) of two model configs.

    Both are `config.model`-style mappings (a published `name` plus overrides is
    fine): they are built into models so that equal architectures spelled
    differently compare equal. Lines read 'model.width: checkpoint has 32, config has 64'.
    """
    from nafnet_jax.models import build_model
    try:
        a, b = build_model(dict(saved)), build_model(dict(current))
    except (TypeError, ValueError, KeyError) as e:
        raise ModelMismatchError(f"cannot compare model configs: {e}") from e
    return architecture_differences(a, b, PARAMETER_FIELDS, prefix=prefix)


def summarize_differences(differences: Sequence[str], limit: int = MAX_LISTED) -> str:
    """'N difference(s): first; second; ... (and K more)' on one line."""
    shown = "; ".join(differences[:limit])
    more = f" (and {len(differences) - limit} more)" if len(differences) > limit else ""
    return f"{len(differences)} difference(s): {shown}{more}"


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
