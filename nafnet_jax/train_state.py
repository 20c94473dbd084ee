"""The train state and its creation, born sharded on the mesh."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from nafnet_jax import partitioning

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays (what Orbax saves).

    Attributes:
      step: completed optimiser updates.
      params: model parameters.
      opt_state: optimiser state (holds the schedule's count).
      rng: base key; each step folds in its step number.
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


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, seed: int, mesh: Mesh,
                       sample_shape: Tuple[int, ...], use_ema: bool = False,
                       ) -> Tuple[TrainState, Any]:
    """Abstract init -> shardings -> jitted init with those out_shardings.

    Parameters never exist unsharded, and the same abstract state and shardings
    are the Orbax restore target, so a checkpoint restores onto any mesh.
    Returns (state, state_shardings).
    """
    def init(rng):
        return init_train_state(model, tx, rng, sample_shape, use_ema)

    rng = jax.random.key(seed)
    abstract = jax.eval_shape(init, rng)
    shardings = partitioning.state_shardings(abstract, mesh)
    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         sample_shape: Tuple[int, ...], use_ema: bool = False) -> Tuple[Any, Any]:
    """ShapeDtypeStructs (with shardings) of the state, for restoring without initialising."""
    abstract = jax.eval_shape(lambda r: init_train_state(model, tx, r, sample_shape, use_ema),
                              jax.random.key(0))
    shardings = partitioning.state_shardings(abstract, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings), shardings
