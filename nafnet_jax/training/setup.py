"""Everything a training step is compiled from, built from a config and a set of devices.

`build_train_setup(config, devices)` is the one place that turns a config into
(model, optimiser, mesh, shardings, pure step, jitted step). `train.py` trains
with it, `nafnet-aot` compiles it for TPU topologies that are not attached, and
`nafnet-bench --mode train` times it: all three compile the same step.
Device-specific choices follow the mesh's devices (`partitioning.mesh_platform`),
never the process's default backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from nafnet_jax.training import partitioning
from nafnet_jax.training.losses import get_loss
from nafnet_jax.models import build_model
from nafnet_jax.training.optim import create_optimizer, create_schedule
from nafnet_jax.training.state import TrainState, init_train_state
from nafnet_jax.training.step import StepFn, jit_train_step, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """What the trainer compiles, for one config on one mesh.

    Attributes:
      config: the run's config.
      model: the model, specialised for `platform`.
      tx: the optimiser (schedule included).
      mesh: the ('data', 'fsdp') device mesh.
      platform: the mesh's platform ('cpu', 'gpu', 'tpu').
      sample_shape: the (1, H, W, C) shape params are initialised with.
      abstract_state: ShapeDtypeStructs of the train state, with shardings.
      state_shardings: NamedShardings of the train state.
      batch_sharding: sharding of a global batch's leading axis.
      step_fn: the pure `train_step(state, batch) -> (state, metrics)`.
      train_step: `step_fn` under jax.jit with the shardings, state donated.
    """

    config: ml_collections.ConfigDict
    model: Any
    tx: optax.GradientTransformation
    mesh: Mesh
    platform: str
    sample_shape: Tuple[int, ...]
    abstract_state: Any
    state_shardings: Any
    batch_sharding: NamedSharding
    step_fn: StepFn
    train_step: Callable

    @property
    def use_ema(self) -> bool:
        return self.config.train.ema_decay > 0

    def _init(self, rng: jax.Array) -> TrainState:
        return init_train_state(self.model, self.tx, rng, self.sample_shape, self.use_ema)

    def init_state(self, seed: Optional[int] = None) -> TrainState:
        """A fresh state (PyTorch-default init), born sharded: parameters never exist unsharded."""
        rng = jax.random.key(self.config.seed if seed is None else seed)
        return jax.jit(self._init, out_shardings=self.state_shardings)(rng)

    def abstract_batch(self, global_batch: Optional[int] = None,
                       crop: Optional[Tuple[int, int]] = None) -> Dict[str, jax.ShapeDtypeStruct]:
        """ShapeDtypeStructs of one global training batch {'lq', 'gt'}, with the batch sharding.

        `crop` is the model input's (H, W); 'gt' is `model.scale` times larger (super-resolution).
        """
        b = self.config.train.batch_size if global_batch is None else int(global_batch)
        h, w = crop if crop is not None else train_input_size(self.config, self.model)
        c, s = self.model.img_channel, self.model.scale
        lq = jax.ShapeDtypeStruct((b, h, w, c), jnp.float32, sharding=self.batch_sharding)
        gt = jax.ShapeDtypeStruct((b, h * s, w * s, c), jnp.float32, sharding=self.batch_sharding)
        return {"lq": lq, "gt": gt}

    def lower(self, global_batch: Optional[int] = None,
              crop: Optional[Tuple[int, int]] = None) -> jax.stages.Lowered:
        """The jitted step lowered on abstract inputs (no device memory is touched)."""
        return self.train_step.lower(self.abstract_state, self.abstract_batch(global_batch, crop))


def train_input_size(config: ml_collections.ConfigDict, model: Any) -> Tuple[int, int]:
    """(H, W) of the model's input in training: `data.crop_size` squared for a restoration U-Net,
    the LR crop `data.lr_crop_size` for a super-resolution model (`model.scale` > 1)."""
    if model.scale > 1:
        h, w = config.data.lr_crop_size
        return int(h), int(w)
    return (int(config.data.crop_size),) * 2


def build_train_setup(config: ml_collections.ConfigDict,
                      devices: Optional[Sequence[jax.Device]] = None) -> TrainSetup:
    """Builds the model, optimiser, mesh, shardings and step a config trains with.

    Args:
      config: a training config (`configs/*.py`), already validated.
      devices: the devices to build the mesh from (default: all visible; for
        ahead-of-time compilation, a topology's devices, e.g. a TPU pod's).
    Raises:
      ValueError naming the key when the batch does not fit the mesh.
    """
    tc = config.train
    mesh = partitioning.create_mesh(config.mesh.num_devices or None, config.mesh.fsdp, devices=devices,
                                    dcn_data=config.mesh.dcn_data)
    n_dev = mesh.devices.size
    if tc.batch_size % n_dev:
        raise ValueError(f"invalid config value train.batch_size={tc.batch_size}: expected a multiple of "
                         f"the {n_dev} devices of the mesh")
    if tc.grad_accum_steps > 1 and tc.batch_size % (n_dev * tc.grad_accum_steps):
        raise ValueError(f"invalid config value train.batch_size={tc.batch_size}: expected a multiple of "
                         f"devices ({n_dev}) x train.grad_accum_steps ({tc.grad_accum_steps})")
    platform = partitioning.mesh_platform(mesh)
    model = build_model(config.model.to_dict(), platform=platform)
    tx = create_optimizer(config.optimizer, tc.total_steps)
    sample_shape = (1, *train_input_size(config, model), model.img_channel)
    use_ema = tc.ema_decay > 0

    abstract = jax.eval_shape(lambda r: init_train_state(model, tx, r, sample_shape, use_ema),
                              jax.random.key(0))
    shardings = partitioning.state_shardings(abstract, mesh, min_fsdp_size=config.mesh.min_fsdp_size)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    batch_sharding = partitioning.batch_sharding(mesh)
    param_layout = None
    if mesh.shape["fsdp"] > 1:
        # ZeRO-3 style: gather each parameter for the step, reduce-scatter its gradient.
        param_layout = (jax.tree.map(lambda _: partitioning.replicated(mesh), shardings.params),
                        shardings.params)
    step_fn = make_train_step(model, tx, get_loss(tc.loss), tc.grad_accum_steps, tc.nonfinite,
                              tc.ema_decay, schedule=create_schedule(config.optimizer, tc.total_steps),
                              param_layout=param_layout)
    return TrainSetup(config=config, model=model, tx=tx, mesh=mesh, platform=platform,
                      sample_shape=sample_shape, abstract_state=abstract, state_shardings=shardings,
                      batch_sharding=batch_sharding, step_fn=step_fn,
                      train_step=jit_train_step(step_fn, shardings, batch_sharding))
