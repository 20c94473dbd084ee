"""The original optimiser: global-norm clip (torch formula), AdamW, cosine schedule to eta_min.

The schedule's position is the count inside the optimiser state
(`optax.ScaleByScheduleState`); `schedule_count` reads it and
`advance_schedule_counts` moves it on for a step whose update was skipped, so
the step counter, the schedule and the logged learning rate stay in step.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


def cosine_schedule(lr: float, total_steps: int, eta_min: float) -> optax.Schedule:
    """TrueCosineAnnealingLR as the original steps it.

    Update i (0-based, = the optimiser's count) uses
    eta_min + (lr - eta_min) * (1 + cos(pi * i / total_steps)) / 2.
    """
    if total_steps <= 0:
        raise ValueError(f"train.total_steps must be positive, got {total_steps}")
    if lr <= 0:
        raise ValueError(f"optimizer.lr must be positive, got {lr}")
    return optax.cosine_decay_schedule(lr, total_steps, alpha=eta_min / lr)


class ClipState(NamedTuple):
    pass


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_`: scale by min(1, max_norm / (norm + 1e-6)).

    optax.clip_by_global_norm divides by the norm without the 1e-6; with the
    original's max_norm of 0.01 and Adam's eps of 1e-8 the difference is
    visible at the 1e-7 level, so the torch formula is kept.
    """

    def init_fn(params):
        del params
        return ClipState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def create_schedule(optimizer_config: Any, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of `create_optimizer` (count -> lr), for logging the applied lr."""
    return cosine_schedule(optimizer_config.lr, total_steps, optimizer_config.eta_min)


def create_optimizer(optimizer_config: Any, total_steps: int) -> optax.GradientTransformation:
    """clip -> AdamW with decoupled decay on every parameter, as the original.

    Config keys: lr, eta_min, b1, b2, eps, weight_decay, grad_clip (None/0 = off).
    """
    oc = optimizer_config
    tx = optax.adamw(create_schedule(oc, total_steps), b1=oc.b1, b2=oc.b2, eps=oc.eps,
                     weight_decay=oc.weight_decay)
    if oc.grad_clip:
        tx = optax.chain(clip_by_global_norm_torch(oc.grad_clip), tx)
    return tx


def _is_schedule_state(node: Any) -> bool:
    return isinstance(node, optax.ScaleByScheduleState)


def schedule_count(opt_state: Any) -> Optional[jax.Array]:
    """The count the optimiser's learning-rate schedule is evaluated at next, or None if it has none.

    (optax's `scale_by_schedule` uses `schedule(count)` for an update, then
    adds one; a chain with several schedules advances them together.)
    """
    for node in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state):
        if _is_schedule_state(node):
            return node.count
    return None


def advance_schedule_counts(kept: Any, updated: Any) -> Any:
    """`kept` with the schedule counts of `updated` (two states of the same optimiser).

    For a skipped step: `kept` is the state before it (moments, and Adam's own
    bias-correction count, untouched, as PyTorch's AMP leaves them when it
    skips `optimizer.step()`), `updated` the state `tx.update` returned; the
    schedule still consumes the step, as the scheduler's `step()` does there.
    """
    return jax.tree.map(lambda k, u: u if _is_schedule_state(k) else k, kept, updated,
                        is_leaf=_is_schedule_state)
