"""Datasets (tfds builders) and the tf.data input pipeline.

Importing this package registers the tfds builders `bundled`, `gopro`, `sidd`, `reds` and
`paired_folder`, and hides accelerators from TensorFlow (JAX keeps all device memory).

    config.data = default_data_config()          # then override fields
    batches = create_train_iterator(config.data, global_batch_size=32, seed=0, start_step=step)
    evalset = create_eval_dataset(config.data)  # whole images with names
"""

from nafnet_jax.data.pipeline import hide_accelerators_from_tf

hide_accelerators_from_tf()  # before anything else touches TensorFlow devices

from nafnet_jax.data import builders  # noqa: E402  (registers the tfds builders)
from nafnet_jax.data.config import (DATASETS, default_data_config,  # noqa: E402
                                    validate_data_config)
from nafnet_jax.data.degradations import parse_degradation  # noqa: E402
from nafnet_jax.data.images import BadDataError  # noqa: E402
from nafnet_jax.data.pipeline import (EvalDataset, create_eval_dataset,  # noqa: E402
                                      create_train_dataset, create_train_iterator, shard_bounds)
from nafnet_jax.data.sources import open_source, prepare  # noqa: E402

__all__ = [
    'DATASETS', 'BadDataError', 'EvalDataset', 'builders', 'create_eval_dataset',
    'create_train_dataset', 'create_train_iterator', 'default_data_config', 'open_source',
    'parse_degradation', 'prepare', 'shard_bounds', 'validate_data_config',
]
