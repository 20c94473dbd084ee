"""Checks of the data a config points at, run before a run writes anything (train.py's pre-flight).

`check_data(config.data)` validates every data key, then, for folders read
directly (`dataset='paired_folder'`): lists and pairs the training (and, when
validation runs, evaluation) folders, reads every file's header (readable,
supported mode, lq and gt of equal size) and decodes a sample of the pairs
(`images='sample'`: the first, the last and evenly spaced ones between;
`'all'`: every pair; `'none'`: headers only). Any problem raises `BadDataError`
(a ValueError) naming the key, folder or file.

Prepared tfds datasets are checked as far as is cheap (keys, `manual_dir`); their
records were validated when they were built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence

from nafnet_jax.data.builders.paired_folder import folder_pairs
from nafnet_jax.data.config import validate_data_config
from nafnet_jax.data.images import BadDataError, Pair, check_pair_headers, check_same_size, read_rgb8

IMAGE_CHECKS = ("sample", "all", "none")
SAMPLE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class FolderCheck:
    """What was checked in one pair of folders."""
    split: str
    pairs: int
    decoded: int


def sample_indices(count: int, size: int = SAMPLE_SIZE) -> List[int]:
    """Up to `size` indices of range(count), evenly spaced, always the first and the last."""
    if count <= size:
        return list(range(count))
    if size == 1:
        return [0]
    return sorted({round(i * (count - 1) / (size - 1)) for i in range(size)})


def check_pairs(pairs: Sequence[Pair], images: str = "sample", sample_size: int = SAMPLE_SIZE) -> int:
    """Header checks of every pair, then a full decode of the chosen ones; returns how many were decoded."""
    if images not in IMAGE_CHECKS:
        raise ValueError(f"images={images!r}; expected one of {IMAGE_CHECKS}")
    check_pair_headers(pairs)
    if images == "none":
        return 0
    chosen = range(len(pairs)) if images == "all" else sample_indices(len(pairs), sample_size)
    for i in chosen:
        pair = pairs[i]
        gt = read_rgb8(pair.gt)
        if pair.lq != pair.gt:
            lq = read_rgb8(pair.lq)
            check_same_size(pair.name, lq.shape, gt.shape, pair.lq, pair.gt)
    return len(chosen)


def _folder_pairs(gt_key: str, gt_dir: Optional[str], lq_key: str, lq_dir: Optional[str]) -> List[Pair]:
    for key, folder in ((gt_key, gt_dir), (lq_key, lq_dir)):
        if folder is not None and not os.path.isdir(folder):
            what = "does not exist" if not os.path.exists(folder) else "is not a directory"
            raise BadDataError(f"data.{key}={folder!r} {what}")
    return folder_pairs(gt_dir, lq_dir)


def check_data(data_config, images: str = "sample", need_eval: bool = True,
               sample_size: int = SAMPLE_SIZE) -> List[FolderCheck]:
    """Validates `config.data` and the files it names; raises naming the key, folder or file.

    Args:
      data_config: `config.data` (see `default_data_config`).
      images: 'sample' (decode `sample_size` pairs per folder pair), 'all', or 'none'.
      need_eval: the run will evaluate (train.eval_every > 0), so the eval split must be usable.
    Returns:
      one `FolderCheck` per pair of folders checked (empty for tfds datasets).
    """
    validate_data_config(data_config)
    if images not in IMAGE_CHECKS:
        raise ValueError(f"--check_images={images!r}; expected one of {IMAGE_CHECKS}")
    manual_dir = data_config["manual_dir"]
    if manual_dir is not None and not os.path.isdir(manual_dir):
        raise BadDataError(f"data.manual_dir={manual_dir!r} is not a directory")
    if data_config["dataset"] != "paired_folder" or data_config["paired_folder_via_tfds"]:
        return []
    checks = []
    pairs = _folder_pairs("gt_dir", data_config["gt_dir"], "lq_dir", data_config["lq_dir"])
    checks.append(FolderCheck("train", len(pairs), check_pairs(pairs, images, sample_size)))
    if need_eval:
        if data_config["eval_gt_dir"] is None:
            raise BadDataError("data.eval_gt_dir is required to validate dataset 'paired_folder' "
                               "(or set train.eval_every=0)")
        pairs = _folder_pairs("eval_gt_dir", data_config["eval_gt_dir"], "eval_lq_dir",
                              data_config["eval_lq_dir"])
        checks.append(FolderCheck("validation", len(pairs), check_pairs(pairs, images, sample_size)))
    return checks


__all__ = ["IMAGE_CHECKS", "FolderCheck", "check_data", "check_pairs", "sample_indices"]
