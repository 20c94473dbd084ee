"""Whole-image, shape-bucketed, tiled and self-ensembled inference around any `apply_fn`.

The model knows nothing of this: everything here works with
`apply_fn(params, x) -> y` on (N, H, W, C) float arrays (`model_apply_fn(model)`
makes one from a Flax module). Images are host NumPy arrays (H, W, C) in
[0, 1]; results are float32 (H, W, C), not clipped.

Modes (`Restorer`):
  * exact (bucket=None): the image goes in as it is; the model pads to a
    multiple of 16 itself, exactly as the original. One compilation per
    distinct image shape.
  * bucketed (bucket=B): the image is padded at the bottom/right (see
    padding below) up to the next multiple of B, restored, and cropped back, so
    all sizes within a bucket share one compilation. Not faithful near the
    bottom/right borders: every convolution there sees padded content where
    exact mode sees the model's zero padding, and the U-Net's receptive field
    spreads that far beyond the 16-pixel alignment band; the padded pixels also
    take part in the model's pooling (with a plain global-mean model, no TLC,
    the channel attention mean changes a little for *every* pixel). Measured in
    issue 10 (NAFNet-GoPro-width32, B=64): border rows/columns off by 8-15/255
    on average, up to 46/255. Opt-in only; exact mode is the default of eval
    and nafnet-restore.
  * tiled (tile=T): the image is cut into T x T tiles overlapping by at least
    `overlap` pixels, tiles go through the model `tile_batch` at a time, and
    are blended with a separable raised-cosine ramp over the overlaps (weight 1
    elsewhere), so device memory is bounded by the tile batch, not the image.
    Tile offsets are multiples of `align` (the model's downsampling, 16): the
    U-Net is shift-equivariant only by such steps, and tiles at another phase
    visibly disagree with the whole-image output (tested). Images smaller than
    T in a dimension are padded up to T there first, so tiled mode compiles
    exactly one shape. With TLC, tiles of about 1.3x the level-0 TLC kernel
    already stay within 0.05 dB of the whole-image result (tested); larger
    tiles and overlaps get closer.
  * padding, in every mode, is zeros up to the next multiple of `align` (what
    the model itself would add) and `pad_mode` content beyond that. This keeps
    the input of that band as in exact mode; it does not make the outputs near
    the border equal (see bucketed, and tiled for how overlaps absorb it).
  * ensemble=True: the x8 self-ensemble: the eight dihedral transforms of the
    image (rotations by 90 degrees, with and without a horizontal flip) are
    restored and mapped back, and the results averaged. Non-square images give
    two shapes (H x W and W x H).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from nafnet_jax.training import partitioning

ApplyFn = Callable[[Any, jax.Array], jax.Array]
PAD_MODES = ("reflect", "symmetric", "edge", "constant")


def model_apply_fn(model: Any) -> ApplyFn:
    """`apply_fn(params, x)` for a Flax module whose variables are {'params': params}."""
    def apply_fn(params: Any, x: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x)
    return apply_fn


# ---------------------------------------------------------------------------
# Geometry: buckets, tiles, blending weights, dihedral transforms.
# ---------------------------------------------------------------------------

def bucket_shape(height: int, width: int, bucket: Optional[int]) -> Tuple[int, int]:
    """(H, W) rounded up to multiples of `bucket` (unchanged for None)."""
    if not bucket:
        return height, width
    return -(-height // bucket) * bucket, -(-width // bucket) * bucket


def pad_bottom_right(image: np.ndarray, height: int, width: int, mode: str = "reflect",
                     align: int = 1) -> np.ndarray:
    """Pads (H, W, C) at the bottom/right to (height, width).

    The band up to the next multiple of `align` is zeros, exactly what the
    model's own padding would put there (so a model sees the same pixels as in
    exact mode near the image); beyond it, the content comes from the NumPy pad
    `mode` applied to the image.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r}; expected one of {PAD_MODES}")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if height < h or width < w:
        raise ValueError(f"cannot pad {(h, w)} down to {(height, width)}")
    padded = np.pad(image, ((0, height - h), (0, width - w), (0, 0)), mode=mode)
    zh, zw = bucket_shape(h, w, align)
    padded[h:zh, :zw] = 0
    padded[:zh, w:zw] = 0
    return padded


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> List[int]:
    """Tile offsets covering [0, size) with tiles of `tile` overlapping by >= `overlap`.

    Every offset is a multiple of `align` (`size` and `tile` must be multiples
    of it), the last tile is flush with the end, and `size` must be >= `tile`.
    """
    if tile % align or size % align:
        raise ValueError(f"tile {tile} and size {size} must be multiples of align={align}")
    stride = (tile - overlap) // align * align
    if overlap < 0 or stride <= 0:
        raise ValueError(f"overlap {overlap} must be >= 0 and leave a stride of at least align={align} "
                         f"within tile={tile}")
    if size < tile:
        raise ValueError(f"size {size} is smaller than the tile {tile}")
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1D blending weight (length,): raised-cosine ramps of `overlap` samples, 1 elsewhere.

    A ramp is applied only on a side that overlaps a neighbouring tile; its
    values (0, 1) never reach 0, so every pixel has positive weight.
    """
    weight = np.ones(length, np.float32)
    if overlap > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)).astype(np.float32)
        if ramp_start:
            weight[:overlap] = np.minimum(weight[:overlap], ramp)
        if ramp_end:
            weight[-overlap:] = np.minimum(weight[-overlap:], ramp[::-1])
    return weight


def dihedral(image: np.ndarray, index: int) -> np.ndarray:
    """The `index`-th (0..7) dihedral transform of an (H, W, ...) array: flip, then rotate."""
    if index >= 4:
        image = image[:, ::-1]
    return np.rot90(image, index % 4, axes=(0, 1))


def dihedral_inverse(image: np.ndarray, index: int) -> np.ndarray:
    """Undoes `dihedral(., index)`."""
    image = np.rot90(image, -(index % 4), axes=(0, 1))
    if index >= 4:
        image = image[:, ::-1]
    return image


# ---------------------------------------------------------------------------
# The restorer.
# ---------------------------------------------------------------------------

class Restorer:
    """Restores (H, W, C) images of any size with one jitted `apply_fn`.

    Args:
      apply_fn: `apply_fn(params, x)`, x (N, H, W, C) float32 in [0, 1].
      params: the parameters (a pytree of arrays).
      bucket: pad sizes up to multiples of this (see module docstring); None
        for exact shapes.
      pad_mode: NumPy pad mode for bucket/tile padding ('reflect', 'edge', ...).
      tile: tile size for tiled inference; None restores the whole image.
      overlap: minimum overlap between neighbouring tiles (pixels).
      align: tile offsets are multiples of this: the model's total downsampling
        (2 ** number of encoder levels, 16 for the published models). A U-Net
        with stride-2 convs is only shift-equivariant by multiples of it, so a
        tile at another phase would not reproduce the whole-image output.
      tile_batch: tiles per model call (rounded up to a multiple of the devices).
      ensemble: x8 dihedral self-ensemble.
      devices: devices to split each batch over (params replicated on them);
        None uses the first local device.
    """

    def __init__(self, apply_fn: ApplyFn, params: Any, *, bucket: Optional[int] = None,
                 pad_mode: str = "reflect", tile: Optional[int] = None, overlap: int = 32,
                 align: int = 16, tile_batch: int = 4, ensemble: bool = False,
                 devices: Optional[Sequence[jax.Device]] = None):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {pad_mode!r}; expected one of {PAD_MODES}")
        if bucket is not None and bucket < 1:
            raise ValueError(f"bucket must be a positive int or None, got {bucket}")
        if tile is not None:
            if tile <= 0 or tile % align:
                raise ValueError(f"tile {tile} must be a positive multiple of the model's downsampling "
                                 f"factor {align}")
            tile_starts(tile, tile, overlap, align)  # validates the overlap
        self.bucket = bucket or None
        self.pad_mode = pad_mode
        self.tile = tile or None
        self.overlap = overlap
        self.align = align
        self.ensemble = ensemble
        self.trace_count = 0  # how many times apply_fn was traced (= compilations)
        devices = list(devices) if devices else [jax.local_devices()[0]]
        self.num_devices = len(devices)
        self.tile_batch = -(-max(1, tile_batch) // self.num_devices) * self.num_devices
        if self.num_devices > 1:
            mesh = partitioning.create_mesh(devices=devices)
            self._batch_sharding = partitioning.batch_sharding(mesh)
            self.params = jax.device_put(params, partitioning.replicated(mesh))
        else:
            self._batch_sharding = devices[0]
            self.params = jax.device_put(params, devices[0])

        def counted_apply(params, x):
            self.trace_count += 1  # runs at trace time only
            return apply_fn(params, x).astype(jnp.float32)

        self._apply = jax.jit(counted_apply)

    # -- public -----------------------------------------------------------------------------

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Restores one (H, W, C) image; returns float32 (H, W, C), unclipped."""
        return self.restore_many([image])[0]

    def restore_many(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Restores images of one shape together (one batch split over the devices)."""
        images = [np.asarray(im, np.float32) for im in images]
        if not images:
            return []
        shape = images[0].shape
        if any(im.shape != shape for im in images) or len(shape) != 3:
            raise ValueError(f"restore_many needs (H, W, C) images of one shape, got "
                             f"{[im.shape for im in images]}")
        transforms = range(8) if self.ensemble else (0,)
        total = [np.zeros(shape, np.float32) for _ in images]
        for t in transforms:
            moved = [np.ascontiguousarray(dihedral(im, t)) for im in images]
            restored = self._restore_same_shape(moved)
            for acc, out in zip(total, restored):
                acc += dihedral_inverse(out, t)
        return [acc / len(transforms) for acc in total]

    # -- internals --------------------------------------------------------------------------

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One model call on (N, H, W, C); N padded up to a multiple of the devices."""
        n = batch.shape[0]
        padded_n = -(-n // self.num_devices) * self.num_devices
        if padded_n != n:
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded_n - n, axis=0)])
        x = jax.device_put(batch, self._batch_sharding)
        return np.asarray(self._apply(self.params, x))[:n]

    def _restore_same_shape(self, images: List[np.ndarray]) -> List[np.ndarray]:
        if self.tile is not None:
            return [self._restore_tiled(im) for im in images]
        h, w = images[0].shape[:2]
        bh, bw = bucket_shape(h, w, self.bucket)
        batch = np.stack([pad_bottom_right(im, bh, bw, self.pad_mode, self.align) for im in images])
        out = self._run(batch)
        return [o[:h, :w] for o in out]

    def _restore_tiled(self, image: np.ndarray) -> np.ndarray:
        h, w, c = image.shape
        tile = self.tile
        ph, pw = tiled_shape(h, w, tile, self.align)
        padded = pad_bottom_right(image, ph, pw, self.pad_mode, self.align)
        ys, xs = tile_starts(ph, tile, self.overlap, self.align), tile_starts(pw, tile, self.overlap, self.align)
        boxes = [(y, x) for y in ys for x in xs]
        out = np.zeros((ph, pw, c), np.float32)
        weight_sum = np.zeros((ph, pw, 1), np.float32)
        for first in range(0, len(boxes), self.tile_batch):
            chunk = boxes[first:first + self.tile_batch]
            batch = np.stack([padded[y:y + tile, x:x + tile] for y, x in chunk])
            if len(chunk) < self.tile_batch:  # keep one batch shape: one compilation
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.tile_batch - len(chunk), 0)])
            restored = self._run(batch)
            for (y, x), tile_out in zip(chunk, restored):
                wy = blend_ramp(tile, self.overlap, y > 0, y + tile < ph)
                wx = blend_ramp(tile, self.overlap, x > 0, x + tile < pw)
                weight = (wy[:, None] * wx[None, :])[..., None]
                out[y:y + tile, x:x + tile] += weight * tile_out
                weight_sum[y:y + tile, x:x + tile] += weight
        return (out / weight_sum)[:h, :w]


def restore_image(apply_fn: ApplyFn, params: Any, image: np.ndarray, **options: Any) -> np.ndarray:
    """One-off restoration of an (H, W, C) image (compiles each call; use `Restorer` for many)."""
    return Restorer(apply_fn, params, **options)(image)


def tiled_shape(height: int, width: int, tile: int, align: int) -> Tuple[int, int]:
    """The padded (H, W) that tiled inference cuts: multiples of `align`, at least `tile`."""
    return max(bucket_shape(height, width, align)[0], tile), max(bucket_shape(height, width, align)[1], tile)


def num_tiles(height: int, width: int, tile: int, overlap: int, align: int = 16) -> int:
    """How many tiles `Restorer(tile=..., overlap=..., align=...)` runs for an image."""
    ph, pw = tiled_shape(height, width, tile, align)
    return len(tile_starts(ph, tile, overlap, align)) * len(tile_starts(pw, tile, overlap, align))


__all__ = ["ApplyFn", "Restorer", "model_apply_fn", "restore_image", "bucket_shape", "pad_bottom_right",
           "tile_starts", "tiled_shape", "blend_ramp", "dihedral", "dihedral_inverse", "num_tiles"]
