"""GoPro deblurring (Nah et al., CVPR 2017): 2103 train / 1111 test pairs of 1280x720 PNGs.

Configs: `gopro/frames` (default) stores the frames as PNG; `gopro/patches512` stores the
original's training patches (8 per frame, 512x512 with step 256: 16,824 pairs) and the test
frames as raw uint8 (26.5 + 6.1 GB), which the pipeline reads at about a copy's cost.
"""

from __future__ import annotations

import functools
import os

from nafnet_jax.data.builders import examples
from nafnet_jax.data.builders.common import find_root, pair_features, require_dir, warn_count
from nafnet_jax.data.builders.streaming import (PairsConfig, SplitPlan, StreamingBuilder,
                                                WorkItem, file_key, raw_pair_features)
from nafnet_jax.data.images import BadDataError, Pair, list_images, match_pairs, pair_folders
from nafnet_jax.data.patches import GOPRO_PATCHES

SPLITS = {'train': 2103, 'test': 1111}
_EXPECTED = ('<root>/{train,test}/<scene>/{blur,sharp}/*.png (GOPRO_Large, root = manual_dir, '
             'manual_dir/GOPRO_Large or manual_dir/GoPro), or the flat '
             '<root>/{train,test}/{input,target}/*.png of the original repo\'s preparation')


def _is_root(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, split)) for split in SPLITS)


def split_pairs(split_dir: str) -> list[Pair]:
    """Pairs of one split folder, flat (input/target) or per scene (<scene>/blur, <scene>/sharp).

    Scene pairs are named '<scene>_<frame>'; flat pairs keep their file name. The `blur_gamma`
    folders of GOPRO_Large are not used (as in the original).
    """
    flat_in, flat_gt = os.path.join(split_dir, 'input'), os.path.join(split_dir, 'target')
    if os.path.isdir(flat_in) or os.path.isdir(flat_gt):
        return pair_folders(require_dir(flat_in, 'flat layout: input/ beside target/'),
                            require_dir(flat_gt, 'flat layout: target/ beside input/'))
    scenes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not scenes:
        raise BadDataError(f'{split_dir}: no scene folders (expected {_EXPECTED})')
    pairs = []
    for scene in scenes:
        blur = require_dir(os.path.join(split_dir, scene, 'blur'), 'a scene has blur/ and sharp/')
        sharp = require_dir(os.path.join(split_dir, scene, 'sharp'), 'a scene has blur/ and sharp/')
        for pair in match_pairs(list_images(blur, recursive=False),
                                list_images(sharp, recursive=False), f'{blur} vs {sharp}'):
            pairs.append(Pair(f'{scene}_{pair.name}', pair.lq, pair.gt))
    return pairs


class Gopro(StreamingBuilder):
    """GoPro_Large blur/sharp pairs from a manual download (configs: see module doc)."""

    BUILDER_CONFIGS = [
        PairsConfig(name='frames', description='Whole frames, PNG.'),
        PairsConfig(name='patches512', patches=GOPRO_PATCHES,
                    description='Train: the original\'s 512x512 patches (step 256, 8 per frame, '
                                'named <frame>_s001..s008); test: whole frames. Raw uint8.'),
    ]
    DESCRIPTION = 'GoPro dynamic-scene deblurring: blurred (lq) and sharp (gt) 1280x720 frames.'
    HOMEPAGE = 'https://seungjunnah.github.io/Datasets/gopro'
    CITATION = ('@inproceedings{Nah_2017_CVPR, title={Deep Multi-Scale Convolutional Neural '
                'Network for Dynamic Scene Deblurring}, author={Nah, Seungjun and Kim, Tae Hyun '
                'and Lee, Kyoung Mu}, booktitle={CVPR}, year={2017}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Download GOPRO_Large.zip from https://seungjunnah.github.io/Datasets/gopro and extract '
        f'it into manual_dir. Accepted layouts: {_EXPECTED}.')

    def _features(self):
        return raw_pair_features() if self.builder_config.patches else pair_features()

    def _split_plans(self, dl_manager) -> dict[str, SplitPlan]:
        root = find_root(dl_manager.manual_dir, ('', 'GOPRO_Large', 'GoPro'), _is_root, _EXPECTED)
        grid = self.builder_config.patches
        plans = {}
        for split, expected in SPLITS.items():
            pairs = split_pairs(os.path.join(root, split))
            warn_count(self.name, split, len(pairs), expected)
            items = [WorkItem(file_key(p.name, p.lq, p.gt), p) for p in pairs]
            if grid is None:  # ~3.6 MB of PNG per pair: shards of ~0.9 GB
                plans[split] = SplitPlan(items, examples.png_pair, items_per_shard=256)
            elif split == 'train':  # 8 raw patch pairs, 12.6 MB per frame: shards of 0.8 GB
                plans[split] = SplitPlan(items, functools.partial(examples.raw_patches, grid),
                                         items_per_shard=64)
            else:  # 5.5 MB per raw frame pair: shards of 0.7 GB
                plans[split] = SplitPlan(items, examples.raw_pair, items_per_shard=128)
        return plans
