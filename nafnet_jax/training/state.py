"""The train state and its creation, born sharded on the mesh."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays (what Orbax saves).

    Attributes:
      step: completed steps (applied or skipped as non-finite); equals the
        learning-rate schedule's count in `opt_state`.
      params: model parameters.
      opt_state: optimiser state (holds the schedule's count).
      rng: the root key, as raw key data (`jax.random.key_data`). It never
        changes: the step that starts at `step` draws from
        `fold_in(rng, step)` (`step.step_key`, then one key per named RNG
        stream), so the draws depend on (seed, step) only and a resumed run
        repeats them exactly.
      ema_params: exponential moving average of params, or None.
      nonfinite_count: steps whose loss or gradient was not finite (never applied).
      first_nonfinite_step: the first such step (1-based), or 0.
    """

    step: Array
    params: Any
    opt_state: Any
    rng: Array
    ema_params: Optional[Any]
    nonfinite_count: Array
    first_nonfinite_step: Array


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: Array,
                     sample_shape: Tuple[int, ...], use_ema: bool) -> TrainState:
    """Initialises params (PyTorch-default init) and the optimiser state."""
    init_rng, state_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros(sample_shape, jnp.float32))["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        rng=jax.random.key_data(state_rng), ema_params=params if use_ema else None,
        nonfinite_count=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.zeros((), jnp.int32))
