"""The original's pre-cut training patches: where they sit in a frame and what they are called.

NAFNet trains GoPro and SIDD on patches cut once from the full frames (its
scripts/data_preparation/{gopro,sidd}.py, BasicSR's `extract_subimages`): windows of `size` pixels
every `step` pixels along each axis, plus one window flush with the bottom/right edge when the
regular ones leave pixels uncovered (`thresh_size` 0), numbered row by row from 1 and named
`{frame name}_s{index:03d}`. Sampling a patch uniformly then weights each frame by its area.

    GoPro 720x1280, size 512, step 256: rows {0, 208} x columns {0, 256, 512, 768}: 8 patches
    SIDD 3000x5328, size 512, step 384: 8 rows x 14 columns: 112 patches
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nafnet_jax.data.images import BadDataError


@dataclasses.dataclass(frozen=True)
class PatchGrid:
    """Square windows of `size` pixels every `step` pixels (the original's crop_size / step)."""
    size: int
    step: int

    def __post_init__(self):
        if self.size <= 0 or self.step <= 0:
            raise ValueError(f'PatchGrid size and step must be positive, got {self}')


GOPRO_PATCHES = PatchGrid(size=512, step=256)  # scripts/data_preparation/gopro.py
SIDD_PATCHES = PatchGrid(size=512, step=384)  # scripts/data_preparation/sidd.py


def patch_starts(length: int, size: int, step: int) -> list[int]:
    """Start offsets along one axis of `length` pixels (BasicSR's h_space / w_space, thresh 0).

    Raises ValueError if the axis is shorter than one window (the original fails there too).
    """
    if length < size:
        raise ValueError(f'axis of {length} px is shorter than the {size} px patch')
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > 0:  # uncovered pixels left: add a window flush with the edge
        starts.append(length - size)
    return starts


def patch_windows(height: int, width: int, grid: PatchGrid) -> list[tuple[int, int, int]]:
    """(index, top, left) of every patch of a height x width frame, index from 1, row by row."""
    rows = patch_starts(height, grid.size, grid.step)
    cols = patch_starts(width, grid.size, grid.step)
    return [(i * len(cols) + j + 1, top, left)
            for i, top in enumerate(rows) for j, left in enumerate(cols)]


def patch_name(frame_name: str, index: int) -> str:
    """The original's patch key: '{frame}_s{index:03d}' (e.g. 'GOPR0372_07_00_000047_s001')."""
    return f'{frame_name}_s{index:03d}'


def cut_patches(lq: np.ndarray, gt: np.ndarray, frame_name: str, grid: PatchGrid,
                where: str = '') -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(patch name, lq patch, gt patch)] of an aligned (H, W, C) pair, contiguous copies.

    `where` (the frame's files) is named in the error raised for a frame smaller than a patch.
    """
    if lq.shape != gt.shape:
        raise BadDataError(f'{where or frame_name}: lq {lq.shape} and gt {gt.shape} differ')
    height, width = gt.shape[:2]
    try:
        windows = patch_windows(height, width, grid)
    except ValueError as e:
        raise BadDataError(f'{where or frame_name}: {width}x{height} frame is smaller than the '
                           f'{grid.size}x{grid.size} patches ({e})') from None
    s = grid.size
    return [(patch_name(frame_name, index),
             np.ascontiguousarray(lq[top:top + s, left:left + s]),
             np.ascontiguousarray(gt[top:top + s, left:left + s]))
            for index, top, left in windows]


def patch_count(height: int, width: int, grid: PatchGrid) -> int:
    """Number of patches of a height x width frame."""
    return (len(patch_starts(height, grid.size, grid.step))
            * len(patch_starts(width, grid.size, grid.step)))
