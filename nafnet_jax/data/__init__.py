"""Datasets (tfds builders) and the tf.data input pipeline.

Using this package's pipeline or sources registers the tfds builders `bundled`, `gopro`, `sidd`, `reds`,
`paired_folder` (gopro and sidd with configs `frames`, whole frames, and `patches512`, the
original's pre-cut training patches: data.builder_config), and the stereo SR builders `stereo`
(configs `x2`, `x4`) and `stereo_bundled` (nafnet_jax.data.stereo: 6-channel left/right pairs;
`stereo_folder` reads HR pairs from folders), and hides accelerators from TensorFlow
(JAX keeps all device memory). The config schema (`default_data_config`,
`validate_data_config`, `parse_degradation`) imports without TensorFlow; everything else is
loaded on first use, so the model, the train step and the benchmarks never import TensorFlow.

    config.data = default_data_config()          # then override fields
    batches = create_train_iterator(config.data, global_batch_size=32, seed=0, start_step=step)
    evalset = create_eval_dataset(config.data)  # whole images with names
"""

from __future__ import annotations

import importlib
from typing import Any

from nafnet_jax.data.config import (DATASETS, STEREO_DATASETS, default_data_config,
                                    validate_data_config)
from nafnet_jax.data.degradation_spec import parse_degradation

# name -> submodule that defines it; imported (with TensorFlow) on first access.
_LAZY = {
    'BadDataError': 'images', 'EvalDataset': 'pipeline', 'create_eval_dataset': 'pipeline',
    'create_train_dataset': 'pipeline', 'create_train_iterator': 'pipeline', 'shard_bounds': 'pipeline',
    'open_source': 'sources', 'prepare': 'sources',
    'StereoEvalDataset': 'stereo', 'open_stereo_source': 'stereo_sources',
}


def __getattr__(name: str) -> Any:
    if name == 'builders' or name in _LAZY:
        pipeline = importlib.import_module('nafnet_jax.data.pipeline')
        pipeline.hide_accelerators_from_tf()  # before anything else touches TensorFlow devices
        builders = importlib.import_module('nafnet_jax.data.builders')  # registers the tfds builders
        if name == 'builders':
            return builders
        return getattr(importlib.import_module(f'nafnet_jax.data.{_LAZY[name]}'), name)
    raise AttributeError(f"module 'nafnet_jax.data' has no attribute {name!r}")


__all__ = [
    'DATASETS', 'STEREO_DATASETS', 'BadDataError', 'EvalDataset', 'StereoEvalDataset', 'builders',
    'create_eval_dataset', 'create_train_dataset', 'create_train_iterator', 'default_data_config',
    'open_source', 'open_stereo_source', 'parse_degradation', 'prepare', 'shard_bounds',
    'validate_data_config',
]
