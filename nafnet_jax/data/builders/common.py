"""What every paired-image builder shares: the features, the example generator, layout checks."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from nafnet_jax.data.images import BadDataError, DataReport, Pair, check_same_size, png_bytes_rgb8

log = logging.getLogger(__name__)


def pair_features() -> tfds.features.FeaturesDict:
    """lq and gt: uint8 (H, W, 3) stored as PNG (lossless); name: the pair's file key."""
    image = tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format='png')
    return tfds.features.FeaturesDict({'lq': image, 'gt': image, 'name': tfds.features.Text()})


class PairedImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the builders: examples {'lq', 'gt', 'name'} in name order (tfds shuffling off)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    DESCRIPTION = ''
    HOMEPAGE = ''
    CITATION = ''

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, features=self._features(),
            supervised_keys=('lq', 'gt'), homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            # Name order: evaluation order is stable and readable; training permutes by index.
            disable_shuffling=True)

    def _features(self) -> tfds.features.FeaturesDict:
        """The stored features (PNG pairs); builders storing another form override it."""
        return pair_features()

    def _generate_examples(self, pairs: Sequence[Pair], what: str = '',
                           same_image: bool = False) -> Iterator[tuple[int, dict]]:
        """Yields one validated pair at a time (never the whole set in memory).

        same_image: lq is gt (clean-only data, degraded on the fly by the pipeline).
        """
        report = DataReport()
        # Keys: position in name order (tfds stores examples in generation order, shuffling off).
        for key, pair in enumerate(pairs):
            gt, gt_hw = png_bytes_rgb8(pair.gt, report)
            if same_image:
                lq = gt
            else:
                lq, lq_hw = png_bytes_rgb8(pair.lq, report)
                check_same_size(pair.name, lq_hw, gt_hw, pair.lq, pair.gt)
            yield key, {'lq': lq, 'gt': gt, 'name': pair.name}
        report.log(f'{self.name} {what}')


def find_root(manual_dir, candidates: Iterable[str], is_root, expected: str) -> str:
    """The first of manual_dir/<candidate> that `is_root` accepts; else an error naming manual_dir.

    The error says which layout was expected and lists what manual_dir holds.
    """
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise BadDataError(f'manual_dir {manual_dir}: not a directory. Expected {expected}')
    for cand in candidates:
        root = os.path.join(manual_dir, cand) if cand else manual_dir
        if os.path.isdir(root) and is_root(root):
            return root
    listing = sorted(os.listdir(manual_dir))[:20]
    raise BadDataError(f'manual_dir {manual_dir} does not have the expected layout: {expected}. '
                       f'It contains: {listing or "nothing"}')


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise BadDataError(f'{path}: missing folder ({what})')
    return path


def warn_count(name: str, split: str, found: int, expected: int) -> None:
    """Logs when a split does not hold the published number of pairs (e.g. a partial download)."""
    if found != expected:
        log.warning('%s %s: found %d pairs, the published split has %d', name, split, found,
                    expected)
