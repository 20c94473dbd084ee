"""Stereo super-resolution datasets (NAFSSR): `stereo` (the original's data) and `stereo_bundled`.

Examples are {'lq': uint8 (h, w, 6), 'gt': uint8 (s*h, s*w, 6), 'name'}: channels 0..2 are the
left view (RGB), 3..5 the right view, gt is exactly s times lq in each dimension. They are stored
as raw uint8 (reading one is a copy, no codec), like the other builders' patch configs: by
arithmetic, 81 KB per x2 training patch (24 GB for the original's 298,143) and 275 KB per x4
patch (13.5 GB for 49,020).

`stereo` reads a manual_dir in the original's layout (NAFNET.md 2.3; manual_dir or
manual_dir/StereoSR), made by iPASSR's MATLAB scripts from Flickr1024 + Middlebury:

    patches_x{2,4}/<id>/{hr0,hr1,lr0,lr1}.png                  -> split 'train'
    test/<Set>/hr/<scene>/{hr0,hr1}.png                         -> split 'test_<set>' (lower case)
    test/<Set>/lr_x{2,4}/<scene>/{lr0,lr1}.png                     Set: Flickr1024, KITTI2012,
                                                                        KITTI2015, Middlebury
Builder configs `x2` (default) and `x4` pick the scale. Each split is built from its folder when
the folder is there: `patches_x{s}` absent (say, to evaluate converted weights only) or a test set
absent leaves that split out with a warning naming the folder; with none of them the build fails.
Within a present folder, a missing file, an unreadable image, views of different sizes or
hr != scale * lr are errors naming the file.

`stereo_bundled` is the offline CPU demo: synthetic stereo pairs cut from the bundled
scikit-image photographs (builders/bundled.py) with a horizontal disparity, LR made by
MATLAB-style bicubic down-sampling at x2 (nafnet_jax.data.resize).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

import numpy as np
import tensorflow_datasets as tfds

from nafnet_jax.data.builders.bundled import TRAIN_IMAGES, VALIDATION_IMAGES, load_image
from nafnet_jax.data.builders.common import PairedImageBuilder, find_root, require_dir
from nafnet_jax.data.builders.streaming import SplitPlan, StreamingBuilder, WorkItem, file_key
from nafnet_jax.data.images import BadDataError, DataReport, read_rgb8
from nafnet_jax.data.resize import imresize_down

TEST_SETS = ('Flickr1024', 'KITTI2012', 'KITTI2015', 'Middlebury')
_EXPECTED = ('patches_x{2,4}/<id>/{hr0,hr1,lr0,lr1}.png and '
             'test/{Flickr1024,KITTI2012,KITTI2015,Middlebury}/{hr,lr_x2,lr_x4}/<scene>/'
             '{hr0,hr1 | lr0,lr1}.png (root = manual_dir or manual_dir/StereoSR)')


def split_of_test_set(test_set: str) -> str:
    """The tfds split of a test set: 'Flickr1024' -> 'test_flickr1024'."""
    return f'test_{test_set.lower()}'


def stereo_features() -> tfds.features.FeaturesDict:
    """lq (h, w, 6) and gt (s*h, s*w, 6) uint8, raw bytes; name: the pair's id or scene."""
    image = tfds.features.Tensor(shape=(None, None, 6), dtype=np.uint8, encoding='bytes')
    return tfds.features.FeaturesDict({'lq': image, 'gt': image, 'name': tfds.features.Text()})


@dataclasses.dataclass(frozen=True)
class StereoFiles:
    """The four files of one stereo example (left/right views of LR and HR) and its scale."""
    name: str
    lr: tuple[str, str]
    hr: tuple[str, str]
    scale: int


def stack_views(left: np.ndarray, right: np.ndarray, left_path: str, right_path: str
                ) -> np.ndarray:
    """(H, W, 6): left then right view; BadDataError naming both files if their sizes differ."""
    if left.shape != right.shape:
        raise BadDataError(f'stereo views differ in size: {left_path} is '
                           f'{left.shape[1]}x{left.shape[0]}, {right_path} is '
                           f'{right.shape[1]}x{right.shape[0]} (width x height)')
    return np.concatenate([left, right], axis=-1)


def check_scale(lq_shape, gt_shape, scale: int, lq_path: str, gt_path: str) -> None:
    """BadDataError naming the files unless gt is exactly `scale` times lq in height and width."""
    if tuple(gt_shape[:2]) != (scale * lq_shape[0], scale * lq_shape[1]):
        raise BadDataError(f'{gt_path} is {gt_shape[1]}x{gt_shape[0]}, not {scale} x the LR '
                           f'{lq_path} ({lq_shape[1]}x{lq_shape[0]}) (width x height)')


def read_stereo_example(files: StereoFiles, report: DataReport) -> list[tuple[str, dict]]:
    """Work item of `stereo`: reads and checks the four files -> [(name, example)]."""
    lq = stack_views(read_rgb8(files.lr[0], report), read_rgb8(files.lr[1], report), *files.lr)
    gt = stack_views(read_rgb8(files.hr[0], report), read_rgb8(files.hr[1], report), *files.hr)
    check_scale(lq.shape, gt.shape, files.scale, files.lr[0], files.hr[0])
    return [(files.name, {'lq': lq, 'gt': gt, 'name': files.name})]


def _require_files(folder: str, names: tuple[str, ...]) -> tuple[str, ...]:
    paths = tuple(os.path.join(folder, n) for n in names)
    for path in paths:
        if not os.path.isfile(path):
            raise BadDataError(f'{path}: missing file (expected {_EXPECTED})')
    return paths


def _subfolders(folder: str) -> list[str]:
    names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not names:
        raise BadDataError(f'{folder}: no example folders (expected {_EXPECTED})')
    return names


def patch_files(root: str, scale: int) -> list[StereoFiles]:
    """The training patches root/patches_x{scale}/<id>/{hr0,hr1,lr0,lr1}.png, by id."""
    folder = require_dir(os.path.join(root, f'patches_x{scale}'), f'training patches at x{scale}')
    out = []
    for name in _subfolders(folder):
        hr0, hr1, lr0, lr1 = _require_files(os.path.join(folder, name),
                                            ('hr0.png', 'hr1.png', 'lr0.png', 'lr1.png'))
        out.append(StereoFiles(name, (lr0, lr1), (hr0, hr1), scale))
    return out


def scenes_of_test_set(root: str, test_set: str, scale: int) -> list[StereoFiles]:
    """Scenes of root/test/<test_set>: hr/<scene>/{hr0,hr1}.png, lr_x{scale}/<scene>/{lr0,lr1}."""
    base = require_dir(os.path.join(root, 'test', test_set), f'test set {test_set}')
    hr_dir = require_dir(os.path.join(base, 'hr'), f'{test_set} HR images')
    lr_dir = require_dir(os.path.join(base, f'lr_x{scale}'), f'{test_set} LR images at x{scale}')
    hr_scenes, lr_scenes = _subfolders(hr_dir), _subfolders(lr_dir)
    for missing, there, where in ((set(hr_scenes) - set(lr_scenes), hr_dir, lr_dir),
                                  (set(lr_scenes) - set(hr_scenes), lr_dir, hr_dir)):
        if missing:
            raise BadDataError(f'{os.path.join(there, sorted(missing)[0])}: no counterpart in '
                               f'{where} ({len(missing)} scene(s) unmatched)')
    out = []
    for scene in hr_scenes:
        hr = _require_files(os.path.join(hr_dir, scene), ('hr0.png', 'hr1.png'))
        lr = _require_files(os.path.join(lr_dir, scene), ('lr0.png', 'lr1.png'))
        out.append(StereoFiles(scene, lr, hr, scale))
    return out


def _is_root(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, d)) for d in ('patches_x2', 'patches_x4', 'test'))


@dataclasses.dataclass(eq=False)
class StereoConfig(tfds.core.BuilderConfig):
    """The super-resolution factor of a stereo dataset."""
    scale: int = 2


class Stereo(StreamingBuilder):
    """The original's stereo SR data (module doc): split 'train', one 'test_<set>' per test set."""

    BUILDER_CONFIGS = [
        StereoConfig(name='x2', scale=2, description='x2: patches_x2 and lr_x2 (LR 30x90).'),
        StereoConfig(name='x4', scale=4, description='x4: patches_x4 and lr_x4 (LR 30x90).'),
    ]
    DESCRIPTION = ('Stereo image super-resolution: Flickr1024 + Middlebury training patches '
                   '(iPASSR) and the Flickr1024, KITTI2012, KITTI2015, Middlebury test sets.')
    HOMEPAGE = 'https://github.com/megvii-research/NAFNet/blob/main/docs/StereoSR.md'
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Prepare datasets/StereoSR as the original repository\'s docs/StereoSR.md describes '
        f'(iPASSR\'s patch scripts) and give it as manual_dir. Layout: {_EXPECTED}.')

    def _features(self):
        return stereo_features()

    def _split_plans(self, dl_manager) -> dict[str, SplitPlan]:
        root = find_root(dl_manager.manual_dir, ('', 'StereoSR'), _is_root, _EXPECTED)
        scale = self.builder_config.scale
        groups = {}
        if os.path.isdir(os.path.join(root, f'patches_x{scale}')):
            groups['train'] = patch_files(root, scale)
        else:
            logging.warning('stereo/x%d: no %s: the train split is left out', scale,
                            os.path.join(root, f'patches_x{scale}'))
        for test_set in TEST_SETS:
            if os.path.isdir(os.path.join(root, 'test', test_set)):
                groups[split_of_test_set(test_set)] = scenes_of_test_set(root, test_set, scale)
            else:
                logging.warning('stereo/x%d: no %s: split %s is left out', scale,
                                os.path.join(root, 'test', test_set), split_of_test_set(test_set))
        if not groups:
            raise BadDataError(f'{root}: neither patches_x{scale} nor any test set (expected {_EXPECTED})')
        return {split: SplitPlan([WorkItem(file_key(f.name, *f.lr, *f.hr), f) for f in files],
                                 read_stereo_example,
                                 # x4 raw patches ~280 KB, x2 ~80 KB: shards of 0.3-0.7 GB
                                 items_per_shard=2048 if split == 'train' else 64)
                for split, files in groups.items()}


# ---------------------------------------------------------------------------- the demo dataset

DEMO_SCALE = 2
DEMO_TRAIN = {'pairs_per_image': 6, 'hr_size': (120, 240)}  # LR 60x120: room for 30x90 crops
DEMO_VALIDATION = {'pairs_per_image': 2, 'hr_size': (96, 192)}
DEMO_DISPARITY = (2, 8)  # px, at HR


def synthetic_stereo_pairs(image: np.ndarray, count: int, hr_size: tuple[int, int], seed: int
                           ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """`count` (left, right, disparity) HR views cut from one photograph.

    Each pair is a window of `hr_size` (h, w) at a seeded random place; the right view is the
    same window cut `disparity` px further right, so a scene point at column x of the left view
    is at x - disparity in the right one (a rectified pair, the whole scene at one depth).
    disparity varies per pair over DEMO_DISPARITY.
    """
    height, width = hr_size
    lo, hi = DEMO_DISPARITY
    if image.shape[0] < height or image.shape[1] < width + hi:
        raise ValueError(f'photograph {image.shape[:2]} is smaller than a pair {hr_size} + '
                         f'{hi} px of disparity')
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(count):
        d = lo + k % (hi - lo + 1)
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width - d + 1))
        pairs.append((image[top:top + height, left:left + width],
                      image[top:top + height, left + d:left + d + width], d))
    return pairs


class StereoBundled(PairedImageBuilder):
    """Synthetic x2 stereo pairs from the bundled photographs: 'train' and held-out 'validation'.

    Training pairs come from builders.bundled.TRAIN_IMAGES, validation pairs from its held-out
    VALIDATION_IMAGES (other photographs).
    """

    BUILDER_CONFIGS = [StereoConfig(name='x2', scale=DEMO_SCALE,
                                    description='x2: LR by MATLAB-style bicubic.')]
    DESCRIPTION = ('Offline stereo SR demo: pairs cut from scikit-image photographs with a 2-8 px '
                   'horizontal disparity; LR = MATLAB-style bicubic x2 of HR.')
    HOMEPAGE = 'https://scikit-image.org/docs/stable/api/skimage.data.html'

    def _features(self):
        return stereo_features()

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {'train': self._pairs(TRAIN_IMAGES, **DEMO_TRAIN),
                'validation': self._pairs(VALIDATION_IMAGES, **DEMO_VALIDATION)}

    def _pairs(self, images: dict, pairs_per_image: int, hr_size: tuple[int, int]):
        scale = self.builder_config.scale
        key = 0
        for seed, (name, (function, index)) in enumerate(sorted(images.items())):
            photo = load_image(function, index)
            for k, (left, right, d) in enumerate(
                    synthetic_stereo_pairs(photo, pairs_per_image, hr_size, seed)):
                gt = np.concatenate([left, right], axis=-1)
                lq = imresize_down(gt, scale)  # per channel: the same as each view on its own
                yield key, {'lq': lq, 'gt': gt, 'name': f'{name}_{k}_d{d}'}
                key += 1
