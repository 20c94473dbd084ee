"""One training iteration of the original recipe, as a pure function, and its jit.

loss (per-sample PSNR loss, mean over the global batch) -> gradient (mean over
the global batch, accumulated over micro-batches when asked) -> optimiser
(clip 0.01 -> AdamW) -> new state. A step whose loss or gradient is not finite
is never applied: it is counted, and under the 'stop' policy every later step
is frozen too, so the host can stop with the last good state intact.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from nafnet_jax.training.losses import LossFn, per_sample_mse
from nafnet_jax.training.state import TrainState

Array = jax.Array
Batch = Dict[str, Array]
StepFn = Callable[[TrainState, Batch], Tuple[TrainState, Dict[str, Array]]]

NONFINITE_POLICIES = ("stop", "skip")


GradFn = Callable[[Any, Batch], Tuple[Tuple[Array, Array], Any]]


def make_grad_fn(model: nn.Module, loss_fn: LossFn, grad_accum_steps: int = 1) -> GradFn:
    """Builds `grad_fn(params, batch) -> ((loss, psnr), grads)`, the step's gradient computation.

    With `grad_accum_steps` K > 1 the global batch is split into K micro-batches
    whose loss, PSNR and gradients are averaged (a mean of K equal-size means is
    the mean over the whole batch), so the result equals K = 1 on the same
    batch up to float summation order, while only one micro-batch's
    activations are alive at a time.

    Args:
      model: the restoration model (`apply({'params': p}, lq) -> restored`).
      loss_fn: (pred, gt) -> scalar, a mean over its batch.
      grad_accum_steps: micro-batches per update; the batch size must divide.
    Returns:
      The pure gradient function. `batch` is {'lq', 'gt'}: (B, H, W, C); loss
      and psnr (train PSNR of the batch, dB) are scalars, grads has params' tree.
    """
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={grad_accum_steps!r}; expected a positive int")

    def loss_and_stats(params, lq, gt):
        pred = model.apply({"params": params}, lq)
        psnr = jnp.mean(-10.0 / math.log(10.0) * jnp.log(per_sample_mse(pred, gt) + 1e-8))
        return loss_fn(pred, gt), psnr

    value_and_grad = jax.value_and_grad(loss_and_stats, has_aux=True)

    def grad_fn(params, batch):
        if grad_accum_steps == 1:
            return value_and_grad(params, batch["lq"], batch["gt"])

        def split(x):
            # (B, ...) -> (accum, B/accum, ...) keeping each device's rows in every
            # micro-batch: rows are grouped (micro, accum) so the device split
            # stays on the micro axis.
            b = x.shape[0]
            if b % grad_accum_steps:
                raise ValueError(f"batch {b} not divisible by grad_accum_steps {grad_accum_steps}")
            return jnp.swapaxes(x.reshape(b // grad_accum_steps, grad_accum_steps, *x.shape[1:]), 0, 1)

        micro = jax.tree.map(split, batch)

        def body(carry, mb):
            (loss, psnr), grads = value_and_grad(params, mb["lq"], mb["gt"])
            acc_loss, acc_psnr, acc_grads = carry
            return (acc_loss + loss, acc_psnr + psnr, jax.tree.map(jnp.add, acc_grads, grads)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss, psnr, grads), _ = jax.lax.scan(body, (0.0, 0.0, zeros), micro)
        inv = 1.0 / grad_accum_steps
        return (loss * inv, psnr * inv), jax.tree.map(lambda g: g * inv, grads)

    return grad_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss_fn: LossFn,
                    grad_accum_steps: int = 1, nonfinite: str = "stop",
                    ema_decay: float = 0.0) -> StepFn:
    """Builds `train_step(state, batch) -> (state, metrics)`.

    Args:
      model: the restoration model (`apply({'params': p}, lq) -> restored`).
      tx: the optimiser.
      loss_fn: (pred, gt) -> scalar, a mean over its batch.
      grad_accum_steps: micro-batches per update; the global batch must divide
        (see `make_grad_fn`).
      nonfinite: 'stop' (freeze from the first non-finite step; the host stops)
        or 'skip' (drop that update, go on).
      ema_decay: decay of the EMA params (0: the state keeps none).
    Returns:
      The pure step. `batch` is {'lq', 'gt'}: (B, H, W, C) float32 in [0, 1].
      Metrics (scalars): loss, psnr (train PSNR of the batch, dB), grad_norm
      (before clipping), applied (1/0), nonfinite_count.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"train.nonfinite={nonfinite!r}; choose one of {NONFINITE_POLICIES}")
    compute_grads = make_grad_fn(model, loss_fn, grad_accum_steps)

    def train_step(state: TrainState, batch: Batch):
        (loss, psnr), grads = compute_grads(state.params, batch)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if nonfinite == "stop":
            apply = finite & (state.nonfinite_count == 0)
        else:
            apply = finite

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
            opt_state=choose(new_opt_state, state.opt_state),
            ema_params=new_ema,
            nonfinite_count=state.nonfinite_count + bad.astype(jnp.int32),
            first_nonfinite_step=jnp.where(bad & (state.first_nonfinite_step == 0), step,
                                           state.first_nonfinite_step),
        )
        metrics = {"loss": loss, "psnr": psnr, "grad_norm": grad_norm,
                   "applied": apply.astype(jnp.float32), "nonfinite_count": new_state.nonfinite_count}
        return new_state, metrics

    return train_step


def jit_train_step(step_fn: StepFn, state_shardings: Any, batch_sharding: NamedSharding) -> Callable:
    """jax.jit with explicit shardings; the state is donated (updated in place)."""
    replicated = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(step_fn,
                   in_shardings=(state_shardings, {"lq": batch_sharding, "gt": batch_sharding}),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,))
