"""The training loop: config -> data -> model -> state -> step -> metrics/checkpoints.

`train_and_evaluate(config, workdir)` is what `train.py` calls. It resumes from
the latest checkpoint in `<workdir>/checkpoints` automatically; the data stream
restarts at the restored step (the pipeline is a pure function of seed and
step), so a resumed run ends with the same parameters as an uninterrupted one.

How a run ends:
  * finished: the last step is checkpointed; `interrupted` is False.
  * SIGTERM/SIGINT: the step in progress completes, is checkpointed, and the
    loop returns with `interrupted=True` (train.py exits with
    `cli.EXIT_PREEMPTED`). On several processes, stop flags are compared only
    every `train.stop_sync_every` steps and at log/checkpoint/eval steps (never
    a host collective every step; see `StopAgreement`).
  * unreadable training data: `DataError`, naming the file, after saving the
    last completed step (one process; see `_data_error_text`).
  * any exception: a checkpoint save in flight still completes and the
    manager, writer and data iterator are closed (`try/finally`).
Compiled programs go to a persistent cache (`configure_compilation_cache`).
Validation runs on the whole mesh (`nafnet_jax.evaluation.validation`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

from nafnet_jax.training import checkpointing, partitioning
from nafnet_jax.config import validate_config
from nafnet_jax.training.setup import TrainSetup, build_train_setup
from nafnet_jax.training.state import TrainState
from nafnet_jax.evaluation.validation import DEFAULT_BEST_METRIC, Validator, check_validation_config

# Test hook: "STEP:SIGNAL[:PROCESS]" (e.g. "3:SIGTERM") makes the trainer send itself SIGNAL right
# after completing STEP (on every process, or only on PROCESS), so tests preempt a run at an exact
# step through the real signal path instead of racing it with a timer.
SELF_SIGNAL_ENV = "NAFNET_TEST_SELF_SIGNAL"


class NonFiniteError(RuntimeError):
    """The loss or gradient stopped being finite (policy 'stop')."""


class DataError(RuntimeError):
    """The training data could not be read mid-run; the message names the file and the saved step."""


class StopSignal:
    """Records stop signals (SIGTERM/SIGINT by default) so the loop can checkpoint and exit cleanly."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C exits at once (the loop's cleanup still runs)
        self.received = signum
        logging.warning("received signal %d: saving a checkpoint and exiting", signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def stop_check_due(step: int, sync_every: int, host_sync: bool = False) -> bool:
    """Whether the processes compare their stop flags after `step` (the same answer on every process).

    Every `sync_every` steps, and at steps where the hosts synchronise anyway
    (`host_sync`: log, checkpoint, validation and the last step).
    """
    return host_sync or step % sync_every == 0


class StopAgreement:
    """Decides after each step, identically on every process, whether training stops there.

    * One process: its own stop flag, every step; no collective.
    * Several: the flags are all-gathered only when `stop_check_due` (never a
      host collective every step), so a signal to any process stops all of them
      at the same step, within `sync_every` steps.

    Our own handler takes SIGTERM also where JAX's preemption service runs
    (multi-process runs install its SIGTERM notifier): polling
    `multihost_utils.reached_preemption_sync_point` every step blocked a
    notified process inside the call while the others waited for it in the
    step's collectives (a deadlock, seen with 2 CPU processes), so it is not used.

    Args:
      process_count: number of processes.
      sync_every: steps between flag comparisons (`train.stop_sync_every`).
      allgather: bool flag -> the flags of all processes (default: `process_allgather`).
    """

    def __init__(self, process_count: int, sync_every: int,
                 allgather: Optional[Callable[[bool], np.ndarray]] = None):
        if sync_every < 1:
            raise ValueError(f"invalid config value train.stop_sync_every={sync_every}: expected >= 1")
        self.process_count = process_count
        self.sync_every = sync_every
        self.allgather = allgather or (lambda flag: multihost_utils.process_allgather(np.asarray(flag)))

    def __call__(self, step: int, local_flag: bool, host_sync: bool = False) -> bool:
        if self.process_count == 1:
            return local_flag
        if not stop_check_due(step, self.sync_every, host_sync):
            return False
        return bool(np.any(self.allgather(local_flag)))


def _self_signal_plan() -> Optional[Tuple[int, int]]:
    """(step, signal) from `SELF_SIGNAL_ENV` for this process, or None."""
    spec = os.environ.get(SELF_SIGNAL_ENV, "")
    if not spec:
        return None
    parts = spec.split(":")
    try:
        step, sig = int(parts[0]), getattr(signal, parts[1])
        process = int(parts[2]) if len(parts) > 2 else None
    except (IndexError, ValueError, AttributeError):
        raise ValueError(f"{SELF_SIGNAL_ENV}={spec!r}: expected STEP:SIGNAME[:PROCESS], "
                         f"e.g. 3:SIGTERM") from None
    if process is not None and process != jax.process_index():
        return None
    return step, sig


def configure_compilation_cache(train_config: ml_collections.ConfigDict,
                                workdir: epath.Path) -> Optional[str]:
    """Points JAX's persistent compilation cache at `train.compilation_cache_dir`; returns the dir or None.

    '' (default): `<workdir>/compile_cache`; 'none': this sets no cache (JAX's own
    settings, e.g. JAX_COMPILATION_CACHE_DIR, still apply). A rerun or a resume
    in the same workdir then loads the compiled programs (the train step above
    all: minutes for the large models on a pod) instead of compiling again.
    Only compilations slower than `train.compilation_cache_min_compile_secs`
    are stored. JAX's cache keys include the cache's own path (XLA's autotune
    cache lives inside it), so a workdir moved elsewhere compiles once more.
    The setting is JAX's, process-wide: it stays after `train_and_evaluate` returns.
    """
    setting = train_config.compilation_cache_dir
    if setting is not None and str(setting).lower() == "none":
        return None
    path = str(epath.Path(setting) if setting else workdir / "compile_cache")
    from jax.experimental.compilation_cache import compilation_cache
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        compilation_cache.reset_cache()  # in case this process already compiled with another cache dir
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(train_config.compilation_cache_min_compile_secs))
    return path


def data_error_message(error: BaseException) -> str:
    """The one useful line of a data-pipeline error (tf.data wraps the reader's error in a traceback dump)."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):  # the reader's own exception line, e.g. "...BadDataError: /x.png: ..."
        head, sep, rest = line.partition(": ")
        if sep and head.split(".")[-1].endswith(("Error", "Exception")) and " " not in head:
            return rest
    return lines[0] if lines else type(error).__name__


def config_to_dict(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The config as plain JSON-able data (saved beside the checkpoints)."""
    return json.loads(config.to_json_best_effort())


class Progress:
    """tqdm bar on a terminal; periodic log lines otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and jax.process_index() == 0 and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, scalars: Dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=True)
        elif jax.process_index() == 0:
            logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
    """Trains (or resumes) a model as the config says; returns the final metrics.

    Writes to `workdir`: `config.json`, `checkpoints/` (Orbax), TensorBoard events.
    """
    from nafnet_jax.data import create_train_iterator

    validate_config(config)
    workdir_path = epath.Path(workdir)
    tc = config.train
    config_dict = config_to_dict(config)
    if tc.eval_every:
        check_validation_config(config.eval)
    setup = build_train_setup(config)  # checks the batch against the devices: before the workdir is made
    workdir_path.mkdir(parents=True, exist_ok=True)
    manager = checkpointing.create_manager(workdir_path / checkpointing.CHECKPOINT_SUBDIR,
                                           keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    # Resume from the newest intact checkpoint (damaged newer ones are reported and set aside, never
    # deleted); only the parameter-shaping model fields must match, so remat/dtype/... may change.
    resumed = checkpointing.restore_for_resume(manager, setup.abstract_state, config_dict["model"])
    # Once the checkpoint proved compatible (a refused rerun writes nothing), before the init and
    # train-step compilations.
    configure_compilation_cache(tc, workdir_path)
    if resumed is None:
        state = setup.init_state()
    else:
        latest, state = resumed
        logging.info("resumed from %s at step %d", manager.directory, latest)
    if jax.process_index() == 0:  # only now that the config proved usable, and all at once
        checkpointing.write_text_atomic(workdir_path / "config.json",
                                        json.dumps(config_dict, indent=2, sort_keys=True))

    start_step = int(jax.device_get(state.step))
    with contextlib.ExitStack() as cleanup:
        # However the loop ends (finished, a signal, bad data, a bug), a checkpoint save still in
        # flight completes before the manager closes (callbacks run last-in, first-out).
        cleanup.callback(manager.close)
        cleanup.callback(manager.wait_until_finished)
        data_iter: Iterator = create_train_iterator(
            config.data, global_batch_size=tc.batch_size, seed=config.seed, start_step=start_step,
            process_index=jax.process_index(), process_count=jax.process_count())
        if hasattr(data_iter, "close"):
            cleanup.callback(data_iter.close)
        writer = metric_writers.create_default_writer(str(workdir_path),
                                                      just_logging=jax.process_index() > 0)
        cleanup.callback(writer.close)
        if start_step == 0:
            writer.write_hparams({k: v for k, v in _flatten(config_dict).items()
                                  if isinstance(v, (int, float, str, bool))})
        progress = Progress(tc.total_steps, start_step, tc.progress_bar)
        cleanup.callback(progress.close)
        # From here on (the compile included), SIGTERM/SIGINT ask for a checkpoint and a clean stop.
        stop = cleanup.enter_context(StopSignal())
        return _train_loop(config, config_dict, setup, state, data_iter, manager, writer, progress, stop)


def _train_loop(config: ml_collections.ConfigDict, config_dict: Dict[str, Any], setup: TrainSetup,
                state: TrainState, data_iter: Iterator, manager: ocp.CheckpointManager, writer: Any,
                progress: Progress, stop: StopSignal) -> Dict[str, Any]:
    """Steps from the state's step to `train.total_steps`: logs, validates, checkpoints, stops on signals."""
    tc = config.train
    start_step = step = int(jax.device_get(state.step))

    def save(at_step: int, metrics: Optional[Dict[str, float]] = None) -> None:
        _check_nonfinite(state, tc.nonfinite)  # never save a state past a non-finite step
        manager.save(at_step, args=ocp.args.Composite(**{
            checkpointing.STATE: ocp.args.PyTreeSave(state),
            checkpointing.CONFIG: ocp.args.JsonSave(config_dict)}), metrics=metrics or {}, force=True)

    def next_batch(completed: int) -> Any:
        """The next global batch; if the data cannot be read, saves step `completed` and raises DataError."""
        try:
            local = next(data_iter)
        except Exception as e:  # tf.data wraps the reader's error (naming the file) in its own types
            raise DataError(_data_error_text(e, completed, start_step, manager, save)) from e
        return partitioning.host_to_global(local, setup.batch_sharding)

    # Compile ahead of time so the compile cost is logged apart from step time.
    batch = next_batch(step)
    t0 = time.perf_counter()
    compiled = setup.train_step.lower(state, batch).compile()
    logging.info("train step compiled in %.1f s", time.perf_counter() - t0)
    flops = _cost_flops(compiled)

    validator = Validator(config, setup) if tc.eval_every else None
    agreement = StopAgreement(jax.process_count(), tc.stop_sync_every)
    self_signal = _self_signal_plan()
    last_metrics: Dict[str, Any] = {}
    val_scalars: Dict[str, float] = {}
    pending = []
    t_last, step_last = time.perf_counter(), start_step
    stopping = False
    while step < tc.total_steps:
        state, metrics = compiled(state, batch)
        step += 1
        pending.append(metrics)  # device arrays: fetched to the host only at log steps
        is_last = step == tc.total_steps
        if not is_last:  # read the next batch while the device works on this step
            batch = next_batch(step)

        is_log = step % tc.log_every == 0 or is_last
        if is_log:
            fetched = jax.device_get(pending)
            pending = []
            _check_nonfinite(state, tc.nonfinite)
            now = time.perf_counter()
            steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
            t_last, step_last = now, step
            # The loss, each of its terms ('loss/<name>', unweighted), train PSNR and gradient norm
            # are averaged over the steps since the last log; lr is the rate the last step used.
            averaged = [k for k in fetched[-1] if k in ("loss", "psnr", "grad_norm") or k.startswith("loss/")]
            scalars = {k: float(np.mean([m[k] for m in fetched])) for k in averaged}
            scalars.update({
                "lr": float(fetched[-1]["lr"]),
                "steps_per_s": steps_per_s,
                "examples_per_s": steps_per_s * tc.batch_size,
                "nonfinite_count": float(fetched[-1]["nonfinite_count"]),
            })
            if flops:
                scalars["tflops_per_s"] = flops * steps_per_s / 1e12
            writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
            progress.update(step, {"loss": scalars["loss"], "psnr": scalars["psnr"],
                                   "steps/s": steps_per_s})
            last_metrics = scalars

        do_eval = bool(tc.eval_every) and (step % tc.eval_every == 0 or step in tc.eval_at_steps
                                           or is_last)
        metrics_for_ckpt = None
        if do_eval:
            _check_nonfinite(state, tc.nonfinite)
            val_scalars = validator(state.params, step, writer, ema_params=state.ema_params)
            metrics_for_ckpt = checkpointing.checkpoint_metrics(
                val_scalars, tc.get("best_metric", DEFAULT_BEST_METRIC))
            progress.update(step, {k.split("/")[1]: v for k, v in val_scalars.items()})
        if self_signal is not None and step == self_signal[0]:
            os.kill(os.getpid(), self_signal[1])  # test hook: the real handler runs right here
        is_checkpoint = step % tc.checkpoint_every == 0 or is_last or do_eval
        stopping = agreement(step, stop.received is not None, host_sync=is_log or is_checkpoint)
        if is_checkpoint or stopping:
            save(step, metrics_for_ckpt)
        if stopping:
            logging.warning("stopped by a signal at step %d; checkpoint saved", step)
            break
    return {"step": step, "train": last_metrics, "val": val_scalars, "state": state,
            "interrupted": stopping and step < tc.total_steps}


def _data_error_text(error: BaseException, completed: int, start_step: int, manager: ocp.CheckpointManager,
                     save: Callable[[int], None]) -> str:
    """Saves step `completed` if it is new and this process can (one process), and says what was kept."""
    reason = data_error_message(error)
    where = manager.directory
    if completed > start_step and jax.process_count() == 1:
        save(completed)
        kept = (f"a checkpoint of step {completed} was saved in {where}; fix or remove the file and run "
                f"the same command again to resume")
    elif completed > 0 and completed == start_step:
        kept = f"the checkpoint of step {completed} in {where} is kept; fix the file and run again to resume"
    elif completed == 0:
        kept = "no step was completed, nothing was saved"
    else:  # several processes: a save needs every one of them, and the others are stopping too
        latest = manager.latest_step()
        kept = (f"no checkpoint could be saved (a save needs every process); the latest is step {latest} "
                f"in {where}" if latest is not None else "no checkpoint was saved")
    return f"reading the training data failed after step {completed}: {reason}; {kept}"


def _check_nonfinite(state: TrainState, policy: str) -> None:
    if policy != "stop":
        return
    first = int(jax.device_get(state.first_nonfinite_step))
    if first:
        raise NonFiniteError(
            f"the loss or gradient was not finite at step {first}; training stopped and that update "
            f"(and any after it) was not applied. The last good checkpoint is kept. Set "
            f"--config.train.nonfinite=skip to skip such steps instead.")


def _cost_flops(compiled) -> Optional[float]:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        return float(cost.get("flops", 0.0)) or None
    except Exception:  # cost analysis is optional on some backends
        return None


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
