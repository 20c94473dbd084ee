"""Any user data: two folders whose images match by file name (a builder config per folder pair).

The training pipeline can also read the folders directly with no preparation
(`data.paired_folder_via_tfds = False`, the default; see nafnet_jax.data.sources.FolderPairSource).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import tensorflow_datasets as tfds

from nafnet_jax.data.builders.common import PairedImageBuilder
from nafnet_jax.data.images import Pair, list_images, pair_folders


@dataclasses.dataclass(eq=False)
class PairedFolderConfig(tfds.core.BuilderConfig):
    """Folders of one paired_folder dataset. lq_dir=None: clean images only (lq = gt)."""
    gt_dir: str = ''
    lq_dir: str | None = None
    eval_gt_dir: str | None = None
    eval_lq_dir: str | None = None


def paired_folder_config(gt_dir: str, lq_dir: str | None = None, eval_gt_dir: str | None = None,
                         eval_lq_dir: str | None = None) -> PairedFolderConfig:
    """A config named after a hash of the absolute folder paths (one tfds directory per dataset)."""
    dirs = [None if d is None else os.path.abspath(os.fspath(d))
            for d in (gt_dir, lq_dir, eval_gt_dir, eval_lq_dir)]
    digest = hashlib.sha1(repr(dirs).encode()).hexdigest()[:12]
    return PairedFolderConfig(name=f'folders_{digest}', version='1.0.0',
                              description=f'lq={dirs[1]} gt={dirs[0]} eval_lq={dirs[3]} '
                                          f'eval_gt={dirs[2]}',
                              gt_dir=dirs[0], lq_dir=dirs[1], eval_gt_dir=dirs[2],
                              eval_lq_dir=dirs[3])


def folder_pairs(gt_dir: str, lq_dir: str | None) -> list[Pair]:
    """Pairs by file name; with no lq_dir every gt image is its own lq."""
    if lq_dir is None:
        return [Pair(name, path, path) for name, path in list_images(gt_dir).items()]
    return pair_folders(lq_dir, gt_dir)


class PairedFolder(PairedImageBuilder):
    """Split 'train' from (lq_dir, gt_dir); 'validation' from (eval_lq_dir, eval_gt_dir) if set."""

    DESCRIPTION = 'User images: lq and gt folders with matching file names.'

    def _split_generators(self, dl_manager):
        config = self.builder_config
        if not isinstance(config, PairedFolderConfig) or not config.gt_dir:
            raise ValueError("paired_folder needs a config: tfds.builder('paired_folder', "
                             'config=paired_folder_config(gt_dir, lq_dir, ...))')
        clean = config.lq_dir is None
        generators = {'train': self._generate_examples(folder_pairs(config.gt_dir, config.lq_dir),
                                                       'train', same_image=clean)}
        if config.eval_gt_dir is not None:
            generators['validation'] = self._generate_examples(
                folder_pairs(config.eval_gt_dir, config.eval_lq_dir), 'validation',
                same_image=config.eval_lq_dir is None)
        return generators
