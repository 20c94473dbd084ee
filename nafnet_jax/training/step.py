"""One training iteration of the original recipe, as a pure function, and its jit.

loss (`train.loss`: the original's per-sample PSNR loss by default, mean over
the global batch) -> gradient (mean over the global batch, accumulated over
micro-batches when asked) -> optimiser (clip 0.01 -> AdamW) -> new state. The
model runs in training mode (`deterministic=False`) with the named RNG streams
`RNG_STREAMS`, derived from the state's root key and the step number only, so a
resumed run draws the same numbers. A step whose loss or gradient is not finite
is never applied: it is counted, and under the 'stop' policy every later step
is frozen too, so the host can stop with the last good state intact.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from nafnet_jax.training.losses import LossFn, loss_components, per_sample_mse
from nafnet_jax.training.optim import advance_schedule_counts, schedule_count
from nafnet_jax.training.state import TrainState

Array = jax.Array
Batch = Dict[str, Array]
StepFn = Callable[[TrainState, Batch], Tuple[TrainState, Dict[str, Array]]]

NONFINITE_POLICIES = ("stop", "skip")

# The RNG streams a training forward pass gets (`self.make_rng(name)` in a module). A new stream
# goes at the end: each stream's key depends on its position, so existing streams keep their keys.
RNG_STREAMS = ("dropout", "drop_path")


def step_key(root: Array, step: Array) -> Array:
    """The key of update `step` (0-based: the state's step before it): fold_in(root, step).

    Args:
      root: the state's root key (`TrainState.rng`: raw key data, or a typed key).
      step: int scalar.
    """
    if not jnp.issubdtype(root.dtype, jax.dtypes.prng_key):
        root = jax.random.wrap_key_data(root)
    return jax.random.fold_in(root, step)


def stream_keys(key: Array) -> Dict[str, Array]:
    """{'dropout': k, 'drop_path': k'}: one independent key per stream in `RNG_STREAMS`."""
    return {name: jax.random.fold_in(key, i) for i, name in enumerate(RNG_STREAMS)}


def micro_batch_rngs(key: Array, micro: Any) -> Dict[str, Array]:
    """The streams of micro-batch `micro` (0-based) of a step with key `key`: distinct per micro-batch."""
    return stream_keys(jax.random.fold_in(key, micro))


# (compute, storage) shardings of the params: gathered for the step, stored sharded.
ParamLayout = Tuple[Any, Any]
GradFn = Callable[[Any, Batch, Array], Tuple[Tuple[Array, Dict[str, Array]], Any]]


def make_grad_fn(model: nn.Module, loss_fn: LossFn, grad_accum_steps: int = 1,
                 param_layout: Optional[ParamLayout] = None) -> GradFn:
    """Builds `grad_fn(params, batch, key) -> ((loss, stats), grads)`, the step's gradient computation.

    With `grad_accum_steps` K > 1 the global batch is split into K micro-batches
    whose loss, stats and gradients are averaged (a mean of K equal-size means
    is the mean over the whole batch), so the result equals K = 1 on the same
    batch up to float summation order (and, with stochastic layers, the random
    draws: micro-batch i gets `micro_batch_rngs(key, i)`), while only one
    micro-batch's activations are alive at a time.

    Args:
      model: the restoration model, called as `apply({'params': p}, lq, False,
        rngs=...)` (training mode; see `RNG_STREAMS`).
      loss_fn: (pred, gt) -> scalar, a mean over its batch; a `WeightedLoss`
        also reports its terms.
      grad_accum_steps: micro-batches per update; the batch size must divide.
      param_layout: under FSDP, (compute, storage) shardings of the params:
        the params are gathered to `compute` (replicated) once before the
        forward pass and the gradients are constrained back to `storage`
        (a reduce-scatter). Without it XLA's partitioner may instead gather
        activations over the fsdp axis (it did on TPU: 75 GiB per chip per
        step at pod scale, see docs/benchmarks.md). None: no constraint.
    Returns:
      The pure gradient function. `batch` is {'lq', 'gt'}: (B, H, W, C); `key`
      the step's key (`step_key`). loss is a scalar; stats holds 'psnr' (train
      PSNR of the batch, dB) and the loss's unweighted terms 'loss/<name>',
      scalars; grads has params' tree.
    """
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={grad_accum_steps!r}; expected a positive int")

    def loss_and_stats(params, lq, gt, rngs):
        pred = model.apply({"params": params}, lq, False, rngs=rngs)
        psnr = jnp.mean(-10.0 / math.log(10.0) * jnp.log(per_sample_mse(pred, gt) + 1e-8))
        loss, terms = loss_components(loss_fn, pred, gt)
        return loss, {"psnr": psnr, **terms}

    value_and_grad = jax.value_and_grad(loss_and_stats, has_aux=True)

    def grad_fn(params, batch, key):
        if param_layout is None:
            return local_grad_fn(params, batch, key)
        compute, storage = param_layout
        out, grads = local_grad_fn(jax.lax.with_sharding_constraint(params, compute), batch, key)
        return out, jax.lax.with_sharding_constraint(grads, storage)

    def local_grad_fn(params, batch, key):
        if grad_accum_steps == 1:
            return value_and_grad(params, batch["lq"], batch["gt"], micro_batch_rngs(key, 0))

        def split(x):
            # (B, ...) -> (accum, B/accum, ...) keeping each device's rows in every
            # micro-batch: rows are grouped (micro, accum) so the device split
            # stays on the micro axis.
            b = x.shape[0]
            if b % grad_accum_steps:
                raise ValueError(f"batch {b} not divisible by grad_accum_steps {grad_accum_steps}")
            return jnp.swapaxes(x.reshape(b // grad_accum_steps, grad_accum_steps, *x.shape[1:]), 0, 1)

        micro = jax.tree.map(split, batch)

        def body(acc_grads, xs):
            mb, i = xs
            (loss, stats), grads = value_and_grad(params, mb["lq"], mb["gt"], micro_batch_rngs(key, i))
            return jax.tree.map(jnp.add, acc_grads, grads), (loss, stats)

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, (losses, stats) = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
        inv = 1.0 / grad_accum_steps

        def mean(per_micro):  # the loss and every logged term are averaged as the gradients are
            return jnp.sum(per_micro, axis=0) * inv

        return (mean(losses), jax.tree.map(mean, stats)), jax.tree.map(lambda g: g * inv, grads)

    return grad_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss_fn: LossFn,
                    grad_accum_steps: int = 1, nonfinite: str = "stop",
                    ema_decay: float = 0.0, schedule: Optional[optax.Schedule] = None,
                    param_layout: Optional[ParamLayout] = None) -> StepFn:
    """Builds `train_step(state, batch) -> (state, metrics)`.

    Keys: update `state.step` uses `step_key(state.rng, state.step)` (see
    `make_grad_fn` for the streams); `state.rng` itself never changes, so the
    numbers drawn depend on (seed, step) only and a resumed run matches an
    uninterrupted one.

    Non-finite steps: the params, the optimiser's moments and the EMA keep
    their values, but the step is still counted, in `state.step` and in the
    learning-rate schedule's count alike (as PyTorch's scheduler steps when AMP
    skips an update), so `state.step` equals the schedule's count after every
    step and a run of `total_steps` steps ends the cosine at eta_min however
    many were skipped.

    Args:
      model: the restoration model (see `make_grad_fn`).
      tx: the optimiser.
      loss_fn: (pred, gt) -> scalar, a mean over its batch (`losses.get_loss`).
      grad_accum_steps: micro-batches per update; the global batch must divide
        (see `make_grad_fn`).
      nonfinite: 'stop' (freeze from the first non-finite step; the host stops)
        or 'skip' (drop that update, go on).
      ema_decay: decay of the EMA params (0: the state keeps none).
      schedule: `tx`'s learning-rate schedule (`optim.create_schedule`), to log
        the rate of each step; None: no 'lr' metric.
      param_layout: FSDP's (compute, storage) param shardings (see `make_grad_fn`).
    Returns:
      The pure step. `batch` is {'lq', 'gt'}: (B, H, W, C) float32 in [0, 1].
      Metrics (scalars): loss (the weighted total), loss/<name> (each term,
      unweighted), psnr (train PSNR of the batch, dB), grad_norm (before
      clipping), lr (schedule(count) of this step, the rate the update used or
      would have used), applied (1/0), nonfinite_count.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"train.nonfinite={nonfinite!r}; choose one of {NONFINITE_POLICIES}")
    compute_grads = make_grad_fn(model, loss_fn, grad_accum_steps, param_layout)

    def train_step(state: TrainState, batch: Batch):
        (loss, stats), grads = compute_grads(state.params, batch, step_key(state.rng, state.step))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if nonfinite == "stop":
            apply = finite & (state.nonfinite_count == 0)
        else:
            apply = finite

        count = schedule_count(state.opt_state)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)

        def choose(new, old):
            return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)

        new_ema = state.ema_params
        if state.ema_params is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, new_params)
            new_ema = choose(ema, state.ema_params)
        step = state.step + 1
        bad = jnp.logical_not(finite)
        new_state = state.replace(
            step=step,
            params=choose(new_params, state.params),
            opt_state=advance_schedule_counts(choose(new_opt_state, state.opt_state), new_opt_state),
            ema_params=new_ema,
            nonfinite_count=state.nonfinite_count + bad.astype(jnp.int32),
            first_nonfinite_step=jnp.where(bad & (state.first_nonfinite_step == 0), step,
                                           state.first_nonfinite_step),
        )
        metrics = {"loss": loss, **stats, "grad_norm": grad_norm,
                   "applied": apply.astype(jnp.float32), "nonfinite_count": new_state.nonfinite_count}
        if schedule is not None and count is not None:
            metrics["lr"] = jnp.asarray(schedule(count), jnp.float32)
        return new_state, metrics

    return train_step


def jit_train_step(step_fn: StepFn, state_shardings: Any, batch_sharding: NamedSharding) -> Callable:
    """jax.jit with explicit shardings; the state is donated (updated in place)."""
    replicated = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(step_fn,
                   in_shardings=(state_shardings, {"lq": batch_sharding, "gt": batch_sharding}),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,))
