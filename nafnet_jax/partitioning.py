"""The one place that knows about devices: the mesh, shardings, and host->device batches.

The mesh has two axes: `data` (pure data parallelism: the batch is split, the
state replicated) and `fsdp` (the batch is split over it too, and so are the
parameters and optimiser state, ZeRO-3 style, for the width-64 models). The
model and the trainer never name devices; they receive shardings from here.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")


def create_mesh(num_devices: Optional[int] = None, fsdp: int = 1,
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ('data', 'fsdp') mesh over the first `num_devices` devices (all by default).

    Axis types are Auto: the PixelShuffle reshapes are not expressible under
    Explicit sharding, and XLA's propagation handles this model's ops well.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices) if num_devices in (None, 0, -1) else int(num_devices)
    if n > len(devices):
        raise ValueError(f"num_devices={n} but only {len(devices)} devices are visible")
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the device count {n}")
    grid = np.asarray(devices[:n]).reshape(n // fsdp, fsdp)
    return Mesh(grid, DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis; the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """Shards the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, min_fsdp_size: int = 2 ** 14) -> Any:
    """Shardings for a pytree of arrays (train state): replicated, or FSDP-sharded.

    Every leaf bigger than `min_fsdp_size` elements is split over the `fsdp` axis
    along its largest divisible dimension (conv kernels: the output channels);
    the rest is replicated. With fsdp=1 everything is replicated.
    """
    fsdp_size = mesh.shape["fsdp"]

    def leaf_sharding(x):
        shape = getattr(x, "shape", ())
        return NamedSharding(mesh, _fsdp_spec(shape, fsdp_size, min_fsdp_size))

    return jax.tree.map(leaf_sharding, abstract_state)


def host_to_global(batch: Any, sharding: NamedSharding) -> Any:
    """Places this process's slice of the global batch onto the mesh.

    Args:
      batch: pytree of numpy arrays, leading axis = the per-process batch
        (global batch / process count); processes hold consecutive slices.
      sharding: the batch sharding (`batch_sharding(mesh)`).
    Returns:
      the same pytree of global `jax.Array`s (leading axis = global batch).
    """
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
