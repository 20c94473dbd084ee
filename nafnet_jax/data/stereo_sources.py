"""Random-access stereo pair sources: index -> (lq (h, w, 6), gt (s*h, s*w, 6), name), uint8.

Two kinds, as `nafnet_jax.data.sources.PairSource` but 6 channels (left RGB, right RGB):
  * the tfds datasets `stereo` and `stereo_bundled` (read through sources.open_source);
  * `stereo_folder`: a folder of HR stereo pairs read directly, LR made on access by MATLAB-style
    bicubic down-sampling (nafnet_jax.data.resize) after cropping HR to a multiple of the scale.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from nafnet_jax.data.builders.stereo import stack_views
from nafnet_jax.data.images import (BadDataError, DataReport, Pair, check_pair_headers,
                                    list_images, read_rgb8)
from nafnet_jax.data.resize import crop_to_multiple, imresize_down

log = logging.getLogger(__name__)

_SCENE_VIEWS = ('hr0', 'hr1')  # <scene>/hr0.<ext>, <scene>/hr1.<ext>
_FLAT_VIEWS = ('_L', '_R')  # <name>_L.<ext>, <name>_R.<ext>
_LAYOUTS = ('<scene>/hr0.<ext> + <scene>/hr1.<ext> (one sub-folder per pair, the original\'s '
            'test layout) or <name>_L.<ext> + <name>_R.<ext> (flat, as Flickr1024)')


def stereo_folder_pairs(folder: str | os.PathLike, report: DataReport | None = None
                        ) -> list[Pair]:
    """The HR stereo pairs of `folder` as Pair(name, lq=left path, gt=right path), by name.

    Two layouts are recognised, and may be mixed: `<scene>/hr0.<ext>` with `<scene>/hr1.<ext>`
    (name: the scene's relative folder) and `<name>_L.<ext>` with `<name>_R.<ext>` in any folder
    (name: its relative path without the suffix). hr0 / _L is the left view. A view without
    its partner is an error naming the file; other image files are ignored (reported).
    """
    folder = os.fspath(folder)
    views: dict[str, list] = {}
    for key, path in list_images(folder, report).items():
        head, _, tail = key.rpartition('/')
        if tail in _SCENE_VIEWS and head:
            name, side = head, _SCENE_VIEWS.index(tail)
        elif key[-2:] in _FLAT_VIEWS and len(key) > 2:
            name, side = key[:-2], _FLAT_VIEWS.index(key[-2:])
        else:
            if report is not None:
                report.ignore(path, f'not a stereo view ({_LAYOUTS})')
            continue
        pair = views.setdefault(name, [None, None])
        if pair[side] is not None:
            raise BadDataError(f'{folder}: two files are view {side} of pair {name!r}: '
                               f'{pair[side]} and {path}')
        pair[side] = path
    if not views:
        raise BadDataError(f'{folder}: no stereo pairs; expected {_LAYOUTS}')
    pairs = []
    for name in sorted(views):
        left, right = views[name]
        if left is None or right is None:
            there = left or right
            raise BadDataError(f'{there}: stereo view without its partner '
                               f'({"right" if right is None else "left"} view of {name!r} '
                               f'missing; expected {_LAYOUTS})')
        pairs.append(Pair(name, left, right))
    return pairs


class StereoFolderSource:
    """HR stereo pairs of a folder (`stereo_folder_pairs`), LR made by bicubic at `scale`.

    `load(i)` -> (lq uint8 (H//s, W//s, 6), gt uint8 (H//s*s, W//s*s, 6), name): HR cropped at the
    bottom/right to a multiple of `scale` (as iPASSR), then each view down-sampled as MATLAB's
    imresize(hr, 1/s, 'bicubic'). Construction reads every header: unreadable files, views of
    different sizes and images smaller than `scale` fail here, naming the file.
    """

    dtype = np.uint8

    def __init__(self, folder: str | os.PathLike, scale: int):
        self.folder, self.scale = os.fspath(folder), scale
        self.report = DataReport()
        self.pairs = stereo_folder_pairs(self.folder, self.report)
        check_pair_headers(self.pairs, self.report, to_8bit=True)  # readable, L and R same size
        self.report.log(f'stereo folder {self.folder}')

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, need_lq: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray, str]:
        pair = self.pairs[index]
        gt = stack_views(read_rgb8(pair.lq), read_rgb8(pair.gt), pair.lq, pair.gt)
        gt = crop_to_multiple(gt, self.scale)
        if gt.shape[0] == 0 or gt.shape[1] == 0:
            raise BadDataError(f'{pair.lq}: smaller than the scale {self.scale}')
        return (imresize_down(gt, self.scale) if need_lq else None), gt, pair.name


def open_stereo_source(config, split: str, process_count: int = 1):
    """The stereo pairs of `split` for `config.data` (module doc); tfds datasets are prepared
    as `nafnet_jax.data.sources.open_source` does (single-process runs only)."""
    if config['dataset'] == 'stereo_folder':
        folders = {'train': ('gt_dir', config['gt_dir']),
                   'validation': ('eval_gt_dir', config['eval_gt_dir'])}
        if split not in folders:
            raise ValueError(f"stereo_folder has splits 'train' (data.gt_dir) and 'validation' "
                             f'(data.eval_gt_dir), not {split!r}')
        key, folder = folders[split]
        if folder is None:
            raise ValueError(f"data.{key} is required for split {split!r} of dataset "
                             "'stereo_folder'")
        return StereoFolderSource(folder, config['scale'])
    from nafnet_jax.data.sources import open_source
    return open_source(config, split, process_count)
