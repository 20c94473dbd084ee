"""SIDD-Medium sRGB denoising (Abdelhamed et al., CVPR 2018): full-size train pairs and the 1280
256x256 validation blocks of ValidationNoisyBlocksSrgb.mat / ValidationGtBlocksSrgb.mat.

Configs: `sidd/frames` (default) stores the 320 train images (12-16 MP) as PNG; `sidd/patches512`
stores the original's training patches (512x512 with step 384: 88 or 112 per image, named
<image>_s001...) and the validation blocks as raw uint8.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Iterator

import numpy as np

from nafnet_jax.data.builders import examples
from nafnet_jax.data.builders.common import find_root, pair_features, warn_count
from nafnet_jax.data.builders.streaming import (PairsConfig, SplitPlan, StreamingBuilder,
                                                WorkItem, file_key, raw_pair_features)
from nafnet_jax.data.images import BadDataError, DataReport, Pair, encode_png, match_pairs
from nafnet_jax.data.patches import SIDD_PATCHES

SPLITS = {'train': 320, 'validation': 1280}
MAT_FILES = {'lq': 'ValidationNoisyBlocksSrgb.mat', 'gt': 'ValidationGtBlocksSrgb.mat'}
_NOISY = re.compile(r'_NOISY(?=_SRGB_)', re.IGNORECASE)
_GT = re.compile(r'_GT(?=_SRGB_)', re.IGNORECASE)
_EXPECTED = ('<root>/Data/<scene>/*_NOISY_SRGB_*.PNG with their *_GT_SRGB_* twins (root = '
             'manual_dir, manual_dir/SIDD_Medium_Srgb or manual_dir/SIDD), and '
             f'{MAT_FILES["lq"]} / {MAT_FILES["gt"]} in manual_dir or root')


def _is_root(path: str) -> bool:
    return os.path.isdir(os.path.join(path, 'Data'))


def train_pairs(root: str) -> list[Pair]:
    """Every *_NOISY_SRGB_* image of root/Data with its *_GT_SRGB_* twin in the same folder.

    Named after the file without '_NOISY' (as the original's sidd.py), e.g. '0001_SRGB_010'.
    """
    noisy, gt = {}, {}
    data = os.path.join(root, 'Data')
    for scene_dir, dirs, files in os.walk(data):
        dirs.sort()
        for fname in sorted(files):
            stem, ext = os.path.splitext(fname)
            if ext.lower() != '.png':
                continue
            # Key: scene folder + file name with the NOISY/GT tag removed, so twins share it.
            rel = os.path.relpath(os.path.join(scene_dir, stem), data)
            if _NOISY.search(stem):
                noisy[_NOISY.sub('', rel)] = os.path.join(scene_dir, fname)
            elif _GT.search(stem):
                gt[_GT.sub('', rel)] = os.path.join(scene_dir, fname)
    if not noisy and not gt:
        raise BadDataError(f'{data}: no *_NOISY_SRGB_*/*_GT_SRGB_* PNG files '
                           f'(expected {_EXPECTED})')
    pairs = match_pairs(noisy, gt, data)
    names = [os.path.basename(p.name) for p in pairs]
    if len(set(names)) == len(names):  # short names, as the original, when they are unique
        pairs = [Pair(n, p.lq, p.gt) for n, p in zip(names, pairs)]
    else:
        pairs = [Pair(p.name.replace('/', '_'), p.lq, p.gt) for p in pairs]
    return pairs


class MatBlocks:
    """Lazy reader of a (images, blocks, H, W, 3) uint8 array in a MATLAB .mat file.

    Old-style (v5, scipy.io) files are loaded whole (scipy cannot read part of a variable:
    252 MB per SIDD file); v7.3 files are HDF5, read one block at a time with h5py. HDF5 stores
    MATLAB's column-major array with its dimensions reversed, (3, W, H, blocks, images), so each
    block is transposed back.
    """

    def __init__(self, path: str):
        self.path = path
        self._h5 = None
        self._array = None
        try:
            shape = self._open(path)
        except Exception as e:
            self.close()
            if isinstance(e, BadDataError):
                raise
            raise BadDataError(f'{path}: cannot read as a .mat file '
                               f'({type(e).__name__}: {e})') from e
        dtype = self._dataset.dtype if self._h5 is not None else self._array.dtype
        if len(shape) != 5 or shape[-1] != 3 or dtype != np.uint8:
            raise BadDataError(f'{path}: expected a uint8 array (images, blocks, H, W, 3), '
                               f'got {dtype} {shape}')
        self.shape = shape

    def _open(self, path: str) -> tuple:
        """Opens the one variable of the file; returns its MATLAB-order shape."""
        import scipy.io
        import h5py
        try:
            contents = scipy.io.loadmat(path)
        except (NotImplementedError, ValueError):
            # NotImplementedError: "Please use HDF reader for matlab v7.3 files"; ValueError: an
            # HDF5 file without MATLAB's 512-byte header.
            if not h5py.is_hdf5(path):
                raise
            self._h5 = h5py.File(path, 'r')
            self._dataset = self._h5[self._only([k for k in self._h5.keys() if k[0] != '#'])]
            return tuple(reversed(self._dataset.shape))
        self._array = contents[self._only([k for k in contents if not k.startswith('__')])]
        return self._array.shape

    def _only(self, names: list[str]) -> str:
        if len(names) != 1:
            raise BadDataError(f'{self.path}: expected one variable in the .mat file, '
                               f'found {names}')
        return names[0]

    def block(self, image: int, block: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB block."""
        if self._h5 is not None:
            return np.ascontiguousarray(self._dataset[:, :, :, block, image].transpose(2, 1, 0))
        return self._array[image, block]

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()


def find_mat(manual_dir: str, root: str, which: str) -> str:
    for folder in dict.fromkeys((manual_dir, root)):
        path = os.path.join(folder, MAT_FILES[which])
        if os.path.isfile(path):
            return path
    raise BadDataError(f'manual_dir {manual_dir}: missing {MAT_FILES[which]} (the validation '
                       f'blocks; expected in {manual_dir} or {root})')


def validation_examples(lq_path: str, gt_path: str, raw: bool = False
                        ) -> Iterator[tuple[int, dict]]:
    """The 1280 blocks as 'ValidationBlocksSrgb_<i>', i = image * blocks + block (the original).

    raw=False: PNG bytes; raw=True: uint8 arrays.
    """
    encode = (lambda block: block) if raw else encode_png
    with contextlib.ExitStack() as stack:
        lq, gt = MatBlocks(lq_path), MatBlocks(gt_path)
        stack.callback(lq.close)
        stack.callback(gt.close)
        if lq.shape != gt.shape:
            raise BadDataError(f'sizes differ: {lq_path} holds {lq.shape}, {gt_path} holds '
                               f'{gt.shape}')
        images, blocks = lq.shape[:2]
        for i in range(images):
            for j in range(blocks):
                name = f'ValidationBlocksSrgb_{i * blocks + j}'
                yield i * blocks + j, {'lq': encode(lq.block(i, j)),
                                       'gt': encode(gt.block(i, j)), 'name': name}


def validation_blocks(mat_paths: tuple[str, str, bool], report: DataReport
                      ) -> Iterator[tuple[str, dict]]:
    """Work-item function of the validation split: (lq .mat, gt .mat, raw) -> named blocks."""
    del report  # the .mat blocks are uint8 RGB: nothing is converted
    for _, example in validation_examples(*mat_paths):
        yield example['name'], example


class Sidd(StreamingBuilder):
    """SIDD-Medium sRGB pairs and validation blocks from a manual download."""

    BUILDER_CONFIGS = [
        PairsConfig(name='frames', description='Whole train images, PNG.'),
        PairsConfig(name='patches512', patches=SIDD_PATCHES,
                    description='Train: the original\'s 512x512 patches (step 384, named '
                                '<image>_s001...); validation: the blocks. Raw uint8.'),
    ]
    DESCRIPTION = ('SIDD-Medium sRGB smartphone denoising: noisy (lq) and ground-truth (gt) '
                   'images; validation: 1280 256x256 blocks.')
    HOMEPAGE = 'https://abdokamel.github.io/sidd/'
    CITATION = ('@inproceedings{SIDD_2018_CVPR, title={A High-Quality Denoising Dataset for '
                'Smartphone Cameras}, author={Abdelhamed, Abdelrahman and Lin, Stephen and '
                'Brown, Michael S.}, booktitle={CVPR}, year={2018}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Download SIDD_Medium_Srgb.zip and the sRGB validation blocks (ValidationNoisyBlocksSrgb'
        '.mat, ValidationGtBlocksSrgb.mat) from https://abdokamel.github.io/sidd/ and extract '
        f'them as {_EXPECTED}. Both old-style and v7.3 (HDF5) .mat files are read.')

    def _features(self):
        return raw_pair_features() if self.builder_config.patches else pair_features()

    def _split_plans(self, dl_manager) -> dict[str, SplitPlan]:
        manual_dir = os.fspath(dl_manager.manual_dir)
        root = find_root(manual_dir, ('', 'SIDD_Medium_Srgb', 'SIDD'), _is_root, _EXPECTED)
        pairs = train_pairs(root)
        warn_count(self.name, 'train', len(pairs), SPLITS['train'])
        lq_mat, gt_mat = find_mat(manual_dir, root, 'lq'), find_mat(manual_dir, root, 'gt')
        grid = self.builder_config.patches
        items = [WorkItem(file_key(p.name, p.lq, p.gt), p) for p in pairs]
        if grid is None:  # ~60 MB of PNG per pair: shards of ~1 GB
            train = SplitPlan(items, examples.png_pair, items_per_shard=16)
        else:  # 88-112 raw patch pairs, 140-180 MB per image: shards of ~1 GB
            train = SplitPlan(items, functools.partial(examples.raw_patches, grid),
                              items_per_shard=6)
        # One item streaming all blocks from the .mat files, in this process (a v5 file is
        # loaded whole: once, not once per worker).
        blocks = WorkItem(file_key('validation_blocks', lq_mat, gt_mat),
                          (lq_mat, gt_mat, grid is not None))
        validation = SplitPlan([blocks], validation_blocks, items_per_shard=1, parallel=False)
        return {'train': train, 'validation': validation}
