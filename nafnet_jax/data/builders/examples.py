"""Work-item functions of the streaming builders: one source pair -> its stored examples.

Module-level functions (picklable, run in worker processes). Each reads and checks the pair
(every conversion recorded in `report`, every error naming the file) and returns
[(example name, {'lq', 'gt', 'name'})] in the form the builder's features store.
"""

from __future__ import annotations

from nafnet_jax.data.images import (DataReport, Pair, check_same_size, png_bytes_rgb8,
                                    read_rgb8)
from nafnet_jax.data.patches import PatchGrid, cut_patches


def png_pair(pair: Pair, report: DataReport) -> list[tuple[str, dict]]:
    """The whole pair as lossless PNG bytes (8-bit RGB PNG files keep their bytes)."""
    gt, gt_hw = png_bytes_rgb8(pair.gt, report)
    lq, lq_hw = png_bytes_rgb8(pair.lq, report)
    check_same_size(pair.name, lq_hw, gt_hw, pair.lq, pair.gt)
    return [(pair.name, {'lq': lq, 'gt': gt, 'name': pair.name})]


def _read_pair(pair: Pair, report: DataReport):
    gt = read_rgb8(pair.gt, report)
    lq = read_rgb8(pair.lq, report)
    check_same_size(pair.name, lq.shape, gt.shape, pair.lq, pair.gt)
    return lq, gt


def raw_pair(pair: Pair, report: DataReport) -> list[tuple[str, dict]]:
    """The whole pair as uint8 arrays (stored raw)."""
    lq, gt = _read_pair(pair, report)
    return [(pair.name, {'lq': lq, 'gt': gt, 'name': pair.name})]


def raw_patches(grid: PatchGrid, pair: Pair, report: DataReport) -> list[tuple[str, dict]]:
    """The original's patches of the pair (nafnet_jax.data.patches) as uint8 arrays."""
    lq, gt = _read_pair(pair, report)
    return [(name, {'lq': lq_patch, 'gt': gt_patch, 'name': name})
            for name, lq_patch, gt_patch in cut_patches(lq, gt, pair.name, grid,
                                                        f'{pair.lq} / {pair.gt}')]
