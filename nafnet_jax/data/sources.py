"""Random-access pair sources: index -> (lq, gt, name), the only thing the pipeline reads through.

Two kinds: a prepared tfds dataset (array_record, through `tfds.data_source`) and, for
`paired_folder`, the two folders read directly (no preparation step).
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np
import tensorflow_datasets as tfds

from nafnet_jax.data.builders.paired_folder import folder_pairs, paired_folder_config
from nafnet_jax.data.builders.streaming import StreamingBuilder
from nafnet_jax.data.images import DataReport, check_pair_headers, check_same_size, read_pair_pixels

log = logging.getLogger(__name__)


class PairSource(Protocol):
    """`len(source)` pairs; `source.load(i)` -> (lq (H,W,3), gt (H,W,3), name), pixels of `source.dtype`.

    dtype: np.uint8 or np.uint16 (integer pixels; the float image is value / its maximum, as
    `nafnet_jax.data.image_io.to_unit`). With need_lq=False the lq image is not read (None): a
    degradation of gt replaces it.
    """

    dtype: type

    def __len__(self) -> int: ...

    def load(self, index: int, need_lq: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray, str]: ...


class FolderPairSource:
    """The paired-folder reader: two folders' images matched by stem, read on each access.

    The rules (pairing by stem, EXIF orientation, 16 bits kept, grayscale, alpha) are
    nafnet_jax.data.images' and image_io's; training (data.dataset='paired_folder') and eval.py
    (--lq_dir/--gt_dir, via `nafnet_jax.evaluation.evaluate.FolderDataset`) both read through it.
    Construction lists both folders and reads every header (no pixel decode): missing
    counterparts, duplicate stems, unequal sizes and unreadable headers fail here, naming the
    file; conversions are counted and logged. A file whose pixels turn out corrupt (or
    transparent) fails when first read, naming it. Pixels are uint16 if any file of the folders
    has 16 bits (8-bit files then scaled by 257: the same float image), else uint8.
    gt_dir only (lq_dir=None): clean images, lq = gt.
    """

    def __init__(self, gt_dir: str, lq_dir: str | None = None):
        self.pairs = folder_pairs(gt_dir, lq_dir)
        self.clean = lq_dir is None
        self.report = DataReport()
        bits = check_pair_headers(self.pairs, self.report)
        self.dtype = np.uint16 if bits > 8 else np.uint8
        self.report.log(f'paired folders lq={lq_dir} gt={gt_dir}')

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, need_lq: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray, str]:
        pair = self.pairs[index]
        gt = read_pair_pixels(pair.gt, self.dtype)
        if self.clean or not need_lq:
            return (gt if need_lq else None), gt, pair.name
        lq = read_pair_pixels(pair.lq, self.dtype)
        check_same_size(pair.name, lq.shape, gt.shape, pair.lq, pair.gt)
        return lq, gt, pair.name


class TfdsPairSource:
    """A split of a prepared tfds builder (array_record), decoded on access."""

    dtype = np.uint8  # the builders store 8-bit PNGs

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        self._source = builder.as_data_source(split)
        # The same records with lq left encoded (not decoded) for when lq is not needed.
        self._gt_only = builder.as_data_source(split, decoders={'lq': tfds.decode.SkipDecoding()})

    def __len__(self) -> int:
        return len(self._source)

    def load(self, index: int, need_lq: bool = True
             ) -> tuple[np.ndarray | None, np.ndarray, str]:
        example = (self._source if need_lq else self._gt_only)[int(index)]
        name = example['name']
        name = name.decode() if isinstance(name, bytes) else name
        return (example['lq'] if need_lq else None), example['gt'], name


def tfds_builder(config, workers: int | None = None) -> tfds.core.DatasetBuilder:
    """The tfds builder `config.dataset` names (array_record files), with its builder config.

    workers: processes preparing gopro/sidd/reds (None: one per core; see builders.streaming).
    """
    kwargs = {}
    if config['dataset'] == 'stereo_folder':
        raise ValueError("dataset 'stereo_folder' is read from its folders directly "
                         '(nafnet_jax.data.stereo_sources): there is no tfds dataset to prepare')
    if config['dataset'] == 'paired_folder':
        kwargs['config'] = paired_folder_config(config['gt_dir'], config['lq_dir'],
                                                config['eval_gt_dir'], config['eval_lq_dir'])
    elif config['builder_config'] is not None:
        kwargs['config'] = config['builder_config']
    if issubclass(tfds.builder_cls(config['dataset']), StreamingBuilder):
        kwargs['workers'] = workers
    return tfds.builder(config['dataset'], data_dir=config['data_dir'],
                        file_format='array_record', **kwargs)


def prepare(config, workers: int | None = None) -> tfds.core.DatasetBuilder:
    """Builds the tfds dataset of `config` if it is not there yet; returns the builder.

    workers: processes preparing gopro/sidd/reds (None: one per core).
    """
    builder = tfds_builder(config, workers)
    if not builder.is_prepared():
        manual_dir = config['manual_dir']
        download_config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None)
        builder.download_and_prepare(file_format='array_record', download_config=download_config)
    return builder


def _config_flag(config) -> str:
    name = config['builder_config']
    return f' --builder_config {name}' if name and config['dataset'] != 'paired_folder' else ''


def open_source(config, split: str, process_count: int = 1) -> FolderPairSource | TfdsPairSource:
    """The pairs of `split` for `config.data`, preparing a missing tfds dataset if allowed.

    Preparation runs only in single-process runs (`config.prepare`); a multi-process run must find
    the dataset prepared (`tfds build`, see docs), so that hosts do not write it concurrently.
    """
    if config['dataset'] == 'paired_folder' and not config['paired_folder_via_tfds']:
        if split == 'train':
            return FolderPairSource(config['gt_dir'], config['lq_dir'])
        if split == 'validation':
            if config['eval_gt_dir'] is None:
                raise ValueError("data.eval_gt_dir is required to evaluate dataset 'paired_folder'")
            return FolderPairSource(config['eval_gt_dir'], config['eval_lq_dir'])
        raise ValueError(f"paired_folder read from folders has splits 'train' (lq_dir/gt_dir) and "
                         f"'validation' (eval_lq_dir/eval_gt_dir), not {split!r}; set "
                         'data.paired_folder_via_tfds=True for tfds split slicing')
    builder = tfds_builder(config)
    if not builder.is_prepared():
        if not config['prepare'] or process_count > 1:
            raise FileNotFoundError(
                f"tfds dataset {config['dataset']!r} is not prepared in {builder.data_dir}; "
                'prepare it once before a multi-process run (or set data.prepare=True in a '
                'single-process run): python -m nafnet_jax.data.build '
                f"{config['dataset']}{_config_flag(config)} --manual_dir <dir> "
                '--data_dir <data_dir>')
        builder = prepare(config)
    try:
        return TfdsPairSource(builder, split)
    except NotImplementedError as e:
        raise ValueError(f'{builder.data_dir}: prepared without array_record files, which random '
                         'access needs; rebuild with file_format=array_record') from e
