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
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")
# Auto, not make_mesh's default Explicit: the PixelShuffle reshapes are not expressible under
# Explicit sharding, and XLA's propagation handles this model's ops well.
_AXIS_TYPES = (AxisType.Auto, AxisType.Auto)


def create_mesh(num_devices: Optional[int] = None, fsdp: int = 1,
                devices: Optional[Sequence[jax.Device]] = None, dcn_data: int = 1) -> Mesh:
    """A topology-aware ('data', 'fsdp') mesh over the first `num_devices` devices (all by default).

    Args:
      num_devices: how many of `devices` to use (None, 0 or -1: all).
      fsdp: size of the `fsdp` axis (parameters and optimiser state split over it).
      devices: the devices (default: all visible; for ahead-of-time compilation
        a TPU topology's devices, which need not be attached).
      dcn_data: how many slices (multi-slice TPU; processes where devices carry
        no `slice_index`, e.g. multi-host GPU) the `data` axis spans. Only data
        parallelism crosses the slow data-centre network; each slice holds a
        whole (data / dcn_data, fsdp) sub-mesh on its fast interconnect.
    Returns:
      A mesh of shape (num_devices / fsdp, fsdp), built by `jax.make_mesh` (one
      slice) or `mesh_utils.create_hybrid_device_mesh` (dcn_data > 1), so
      neighbours on each axis are neighbours on the chips' interconnect.
    Raises:
      ValueError naming mesh.num_devices / mesh.fsdp / mesh.dcn_data when they
      do not fit the devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices) if num_devices in (None, 0, -1) else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"mesh.num_devices={num_devices} but {len(devices)} devices are visible")
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the device count {n}")
    data = n // fsdp
    if dcn_data < 1 or data % dcn_data:
        raise ValueError(f"mesh.dcn_data={dcn_data} must be >= 1 and divide the data axis "
                         f"({n} devices / mesh.fsdp={fsdp} = {data})")
    devices = devices[:n]
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if dcn_data == 1 and len(slices) > 1:
        raise ValueError(f"the {n} devices span {len(slices)} slices: set mesh.dcn_data={len(slices)} "
                         f"(data parallelism across slices)")
    if dcn_data == 1:
        return jax.make_mesh((data, fsdp), DATA_AXES, axis_types=_AXIS_TYPES, devices=devices)
    return Mesh(hybrid_device_grid(devices, data // dcn_data, fsdp, dcn_data), DATA_AXES,
                axis_types=_AXIS_TYPES)


def hybrid_device_grid(devices: Sequence[Any], data_per_slice: int, fsdp: int, dcn_data: int) -> np.ndarray:
    """The (dcn_data * data_per_slice, fsdp) device grid of a multi-slice mesh.

    Slices are told apart by `device.slice_index` (TPU), or by process where
    devices have none. Rows [i * data_per_slice, (i+1) * data_per_slice) are
    slice i's devices, laid out by its ICI topology.
    """
    by_process = not hasattr(devices[0], "slice_index")
    granules = {getattr(d, "process_index" if by_process else "slice_index") for d in devices}
    if len(granules) != dcn_data:
        what = "processes" if by_process else "slices"
        raise ValueError(f"mesh.dcn_data={dcn_data} must equal the number of {what} the devices "
                         f"span, {len(granules)}")
    return mesh_utils.create_hybrid_device_mesh((data_per_slice, fsdp), (dcn_data, 1), devices,
                                                process_is_granule=by_process)


def devices_platform(devices: Sequence[jax.Device]) -> str:
    """The platform ('cpu', 'gpu', 'tpu') of the devices a computation is compiled for."""
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"a computation's devices must be of one platform, got {sorted(platforms)}")
    platform = platforms.pop()
    return "gpu" if platform in ("cuda", "rocm") else platform


def mesh_platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices: what device-specific choices (`UNet.platform`) follow."""
    return devices_platform(list(mesh.devices.flat))


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
