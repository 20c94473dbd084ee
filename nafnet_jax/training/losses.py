"""Pixel losses. All take (pred, target) of shape (N, H, W, C) and return a scalar.

The mean is over the batch given; with gradient accumulation the trainer
averages equal-sized micro-batch losses, which is the same global mean.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import jax
import jax.numpy as jnp

Array = jax.Array
LossFn = Callable[[Array, Array], Array]


def per_sample_mse(pred: Array, target: Array) -> Array:
    """(N,) mean squared error per image, in float32."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def psnr_loss(pred: Array, target: Array) -> Array:
    """The original's PSNRLoss (toY=False, weight 1): -PSNR per image, mean over the batch.

    (10 / ln 10) * mean_n(log(mse_n + 1e-8)); negative by design.
    """
    return (10.0 / math.log(10.0)) * jnp.mean(jnp.log(per_sample_mse(pred, target) + 1e-8))


def l1_loss(pred: Array, target: Array) -> Array:
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def mse_loss(pred: Array, target: Array) -> Array:
    return jnp.mean(per_sample_mse(pred, target))


def charbonnier_loss(pred: Array, target: Array, eps: float = 1e-3) -> Array:
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(jnp.sqrt(jnp.square(diff) + eps * eps))


LOSSES: Dict[str, LossFn] = {
    "psnr": psnr_loss,
    "l1": l1_loss,
    "mse": mse_loss,
    "charbonnier": charbonnier_loss,
}


def get_loss(name: str) -> LossFn:
    """Looks up a loss by its config name."""
    if name not in LOSSES:
        raise ValueError(f"train.loss={name!r} is not a known loss; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
