"""GoPro deblurring (Nah et al., CVPR 2017): 2103 train / 1111 test pairs of 1280x720 PNGs."""

from __future__ import annotations

import os

from nafnet_jax.data.builders.common import (PairedImageBuilder, find_root, require_dir,
                                             warn_count)
from nafnet_jax.data.images import BadDataError, Pair, list_images, match_pairs, pair_folders

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


class Gopro(PairedImageBuilder):
    """GoPro_Large blur/sharp pairs from a manual download."""

    DESCRIPTION = 'GoPro dynamic-scene deblurring: blurred (lq) and sharp (gt) 1280x720 frames.'
    HOMEPAGE = 'https://seungjunnah.github.io/Datasets/gopro'
    CITATION = ('@inproceedings{Nah_2017_CVPR, title={Deep Multi-Scale Convolutional Neural '
                'Network for Dynamic Scene Deblurring}, author={Nah, Seungjun and Kim, Tae Hyun '
                'and Lee, Kyoung Mu}, booktitle={CVPR}, year={2017}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Download GOPRO_Large.zip from https://seungjunnah.github.io/Datasets/gopro and extract '
        f'it into manual_dir. Accepted layouts: {_EXPECTED}.')

    def _split_generators(self, dl_manager):
        root = find_root(dl_manager.manual_dir, ('', 'GOPRO_Large', 'GoPro'), _is_root, _EXPECTED)
        generators = {}
        for split, expected in SPLITS.items():
            pairs = split_pairs(os.path.join(root, split))
            warn_count(self.name, split, len(pairs), expected)
            generators[split] = self._generate_examples(pairs, split)
        return generators
