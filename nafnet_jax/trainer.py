"""The training loop: config -> data -> model -> state -> step -> metrics/checkpoints.

`train_and_evaluate(config, workdir)` is what `train.py` calls. It resumes from
the latest checkpoint in `<workdir>/checkpoints` automatically; the data stream
restarts at the restored step (the pipeline is a pure function of seed and
step), so a resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterator, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

from nafnet_jax import checkpointing, partitioning
from nafnet_jax.config import validate_config
from nafnet_jax.losses import get_loss
from nafnet_jax.models import build_model
from nafnet_jax.optim import create_optimizer
from nafnet_jax.train_state import TrainState, abstract_train_state, create_train_state
from nafnet_jax.train_step import jit_train_step, make_train_step


class NonFiniteError(RuntimeError):
    """The loss or gradient stopped being finite (policy 'stop')."""


class StopSignal:
    """Records SIGTERM/SIGINT so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C exits at once
        self.received = signum
        logging.warning("received signal %d: saving a checkpoint and exiting", signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _stop_requested(stop: StopSignal) -> bool:
    """Whether any process got a stop signal (all processes agree, so they stop together)."""
    flag = stop.received is not None
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


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


def _validation_images(lq, out, gt) -> np.ndarray:
    """lq | output | gt side by side, uint8 (1, H, 3W, 3)."""
    row = np.concatenate([np.clip(a, 0, 1) for a in (lq, out, gt)], axis=1)
    return (row[None] * 255.0 + 0.5).astype(np.uint8)


class Validator:
    """Periodic full-resolution validation (with the model's TLC setting).

    Keeps the eval dataset, the compiled shapes and the input's own scores
    (`val/psnr_input`, computed once) across validations. Every process
    evaluates its shard; sums are combined over processes.
    """

    def __init__(self, config: ml_collections.ConfigDict, model):
        from nafnet_jax.data import create_eval_dataset
        from nafnet_jax.evaluate import make_restorer

        self.config = config
        self.dataset = create_eval_dataset(config.data, split=config.data.eval_split,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count())
        self.align = 2 ** len(model.enc_blk_nums)
        self.restorer = make_restorer(lambda p, x: model.apply({"params": p}, x), None, config.eval,
                                      self.align)
        self.input_scores: Optional[np.ndarray] = None

    def _sum_over_processes(self, values: np.ndarray) -> np.ndarray:
        if jax.process_count() == 1:
            return values
        return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)

    def __call__(self, params, step: int, writer) -> Dict[str, float]:
        from nafnet_jax.evaluate import evaluate

        # A full local copy of the (possibly FSDP-sharded) params for whole-image inference.
        replicated = jax.jit(lambda p: p, out_shardings=partitioning.replicated(
            jax.tree.leaves(params)[0].sharding.mesh))(params)
        host_params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), replicated)
        self.restorer.params = jax.device_put(host_params, jax.local_devices()[0])
        result = evaluate(None, None, self.dataset, self.config.eval, restorer=self.restorer)
        if self.input_scores is None:
            identity = evaluate(lambda p, x: x, None, self.dataset, self.config.eval, align=self.align)
            self.input_scores = np.array([identity["psnr"] * identity["count"]])
        count = float(result["count"])
        sums = self._sum_over_processes(np.array([result["psnr"] * count, result["ssim"] * count,
                                                  self.input_scores[0], count]))
        total = max(sums[3], 1.0)
        scalars = {"val/psnr": sums[0] / total, "val/ssim": sums[1] / total,
                   "val/psnr_input": sums[2] / total, "val/count": sums[3]}
        writer.write_scalars(step, scalars)
        images = []
        for i, example in enumerate(self.dataset):
            if i >= self.config.train.num_val_images:
                break
            out = self.restorer(np.asarray(example["lq"], np.float32))
            images.append(_validation_images(example["lq"], out, example["gt"]))
        if images:
            writer.write_images(step, {f"val/sample_{i}": im for i, im in enumerate(images)})
        return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
    """Trains (or resumes) a model as the config says; returns the final metrics.

    Writes to `workdir`: `config.json`, `checkpoints/` (Orbax), TensorBoard events.
    """
    from nafnet_jax.data import create_train_iterator

    validate_config(config)
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    tc = config.train
    config_dict = config_to_dict(config)

    mesh = partitioning.create_mesh(config.mesh.num_devices or None, config.mesh.fsdp)
    n_dev = mesh.devices.size
    if tc.batch_size % (n_dev * tc.grad_accum_steps) and tc.grad_accum_steps > 1:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by devices ({n_dev}) x "
                         f"train.grad_accum_steps ({tc.grad_accum_steps})")
    if tc.batch_size % n_dev:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the {n_dev} devices")

    model = build_model(config.model.to_dict())
    tx = create_optimizer(config.optimizer, tc.total_steps)
    crop = config.data.crop_size
    sample_shape = (1, crop, crop, model.img_channel)
    use_ema = tc.ema_decay > 0
    manager = checkpointing.create_manager(workdir_path / checkpointing.CHECKPOINT_SUBDIR,
                                           keep=tc.keep_checkpoints, async_save=tc.async_checkpoints)
    latest = manager.latest_step()
    if latest is None:
        state, state_shardings = create_train_state(model, tx, config.seed, mesh, sample_shape, use_ema)
    else:
        saved = manager.restore(latest, args=ocp.args.Composite(**{
            checkpointing.CONFIG: ocp.args.JsonRestore()}))[checkpointing.CONFIG]
        diffs = checkpointing.config_differences(saved.get("model", {}), config_dict["model"], "model.")
        if diffs:
            raise ValueError(f"{workdir}: the checkpoint's model config differs from this config: "
                             + "; ".join(diffs))
        abstract, state_shardings = abstract_train_state(model, tx, mesh, sample_shape, use_ema)
        state = manager.restore(latest, args=ocp.args.Composite(**{
            checkpointing.STATE: ocp.args.PyTreeRestore(
                item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))}
        ))[checkpointing.STATE]
        logging.info("resumed from %s at step %d", manager.directory, latest)
    if jax.process_index() == 0:
        (workdir_path / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))

    batch_sharding = partitioning.batch_sharding(mesh)
    step_fn = make_train_step(model, tx, get_loss(tc.loss), tc.grad_accum_steps, tc.nonfinite,
                              tc.ema_decay)
    p_train_step = jit_train_step(step_fn, state_shardings, batch_sharding)

    start_step = int(jax.device_get(state.step))
    data_iter: Iterator = create_train_iterator(
        config.data, global_batch_size=tc.batch_size, seed=config.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())

    writer = metric_writers.create_default_writer(str(workdir_path), just_logging=jax.process_index() > 0)
    if start_step == 0:
        writer.write_hparams({k: v for k, v in _flatten(config_dict).items()
                              if isinstance(v, (int, float, str, bool))})

    # Compile ahead of time so the compile cost is logged apart from step time.
    first_batch = partitioning.host_to_global(next(data_iter), batch_sharding)
    t0 = time.perf_counter()
    compiled = p_train_step.lower(state, first_batch).compile()
    logging.info("train step compiled in %.1f s", time.perf_counter() - t0)
    flops = _cost_flops(compiled)

    validator = Validator(config, model) if tc.eval_every else None
    progress = Progress(tc.total_steps, start_step, tc.progress_bar)
    last_metrics: Dict[str, Any] = {}
    val_scalars: Dict[str, float] = {}
    pending = []
    t_last, step_last = time.perf_counter(), start_step
    step = start_step
    batch = first_batch
    with StopSignal() as stop:
        while step < tc.total_steps:
            state, metrics = compiled(state, batch)
            step += 1
            pending.append(metrics)
            is_last = step == tc.total_steps
            if step < tc.total_steps:
                batch = partitioning.host_to_global(next(data_iter), batch_sharding)

            if step % tc.log_every == 0 or is_last:
                fetched = jax.device_get(pending)
                pending = []
                _check_nonfinite(state, tc.nonfinite)
                now = time.perf_counter()
                steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                scalars = {k: float(np.mean([m[k] for m in fetched])) for k in ("loss", "psnr", "grad_norm")}
                scalars.update({
                    "lr": float(tx_lr(config, step)),
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

            do_eval = tc.eval_every and (step % tc.eval_every == 0 or step in tc.eval_at_steps or is_last)
            metrics_for_ckpt = None
            if do_eval:
                _check_nonfinite(state, tc.nonfinite)
                val_scalars = validator(state.params, step, writer)
                metrics_for_ckpt = {checkpointing.BEST_METRIC: val_scalars["val/psnr"]}
                progress.update(step, {k.split("/")[1]: v for k, v in val_scalars.items()})
            stopping = _stop_requested(stop)
            if step % tc.checkpoint_every == 0 or is_last or do_eval or stopping:
                _check_nonfinite(state, tc.nonfinite)
                manager.save(step, args=ocp.args.Composite(**{
                    checkpointing.STATE: ocp.args.PyTreeSave(state),
                    checkpointing.CONFIG: ocp.args.JsonSave(config_dict)}), metrics=metrics_for_ckpt,
                    force=True)
            if stopping:
                logging.warning("stopped by signal at step %d; checkpoint saved", step)
                break
    manager.wait_until_finished()
    manager.close()
    progress.close()
    writer.flush()
    return {"step": step, "train": last_metrics, "val": val_scalars, "state": state,
            "interrupted": stop.received is not None}


def tx_lr(config, step: int) -> float:
    """Learning rate used by update number `step` (1-based), as logged."""
    from nafnet_jax.optim import cosine_schedule
    return float(cosine_schedule(config.optimizer.lr, config.train.total_steps,
                                 config.optimizer.eta_min)(step - 1))


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
