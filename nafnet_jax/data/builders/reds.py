"""REDS deblurring (NTIRE 2019, track 'blur_jpeg'): 24000 train pairs, 300-frame validation.

The blurred inputs are JPEG files; their decoded pixels are stored as PNG (lossless), so they are
never re-encoded lossily.
"""

from __future__ import annotations

import os

from nafnet_jax.data.builders import examples
from nafnet_jax.data.builders.common import find_root, warn_count
from nafnet_jax.data.builders.streaming import SplitPlan, StreamingBuilder, WorkItem, file_key
from nafnet_jax.data.images import BadDataError, Pair, pair_folders

SPLITS = {'train': 24000, 'validation': 300}
_FOLDERS = {'train': ('train_blur_jpeg', 'train_sharp'),
            'validation': ('val_blur_jpeg', 'val_sharp')}
_PARENT = {'train': 'train', 'validation': 'val'}
_EXPECTED = ('<root>/{train,val}/{train,val}_{blur_jpeg,sharp}/<video>/<frame>.{jpg,png} '
             '(root = manual_dir or manual_dir/REDS; the {train,val}/ level may be omitted)')


def _split_dirs(root: str, split: str) -> tuple[str, str] | None:
    blur, sharp = _FOLDERS[split]
    for base in (os.path.join(root, _PARENT[split]), root):
        if os.path.isdir(os.path.join(base, blur)) and os.path.isdir(os.path.join(base, sharp)):
            return os.path.join(base, blur), os.path.join(base, sharp)
    return None


def _is_root(path: str) -> bool:
    return all(_split_dirs(path, split) is not None for split in SPLITS)


def is_validation_frame(name: str) -> bool:
    """The REDS validation protocol of the original: frames whose file name matches '*9.*'."""
    return name.endswith('9')


def split_pairs(root: str, split: str) -> list[Pair]:
    """Pairs named '<video>_<frame>'; validation keeps the 300 frames matching '*9.*'."""
    blur, sharp = _split_dirs(root, split)
    pairs = [Pair(p.name.replace('/', '_'), p.lq, p.gt) for p in pair_folders(blur, sharp)]
    if split == 'validation':
        pairs = [p for p in pairs if is_validation_frame(p.name)]
        if not pairs:
            raise BadDataError(f'{blur}: no frame matches *9.* (the validation protocol)')
    return pairs


class Reds(StreamingBuilder):
    """REDS blur_jpeg/sharp pairs from a manual download."""

    DESCRIPTION = ('REDS deblurring, blur_jpeg track: JPEG-compressed blurred frames (lq, stored '
                   'as decoded PNG) and sharp frames (gt), 1280x720.')
    HOMEPAGE = 'https://seungjunnah.github.io/Datasets/reds'
    CITATION = ('@inproceedings{Nah_2019_CVPR_Workshops_REDS, title={NTIRE 2019 Challenge on '
                'Video Deblurring and Super-Resolution: Dataset and Study}, author={Nah, Seungjun '
                'and others}, booktitle={CVPR Workshops}, year={2019}}')
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        'Download train_blur_jpeg, train_sharp, val_blur_jpeg and val_sharp from '
        f'https://seungjunnah.github.io/Datasets/reds and extract them as {_EXPECTED}.')

    def _split_plans(self, dl_manager) -> dict[str, SplitPlan]:
        root = find_root(dl_manager.manual_dir, ('', 'REDS'), _is_root, _EXPECTED)
        plans = {}
        for split, expected in SPLITS.items():
            pairs = split_pairs(root, split)
            warn_count(self.name, split, len(pairs), expected)
            # ~3.5 MB of PNG per pair: shards of ~0.9 GB
            plans[split] = SplitPlan([WorkItem(file_key(p.name, p.lq, p.gt), p) for p in pairs],
                                     examples.png_pair, items_per_shard=256)
        return plans
