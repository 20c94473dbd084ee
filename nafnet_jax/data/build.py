"""Prepares a tfds dataset (array_record files) once, before training:

    python -m nafnet_jax.data.build gopro --manual_dir ~/downloads/GoPro \
        --data_dir ~/tensorflow_datasets

(`tfds build --imports nafnet_jax.data` does the same where apache-beam is installed; the tfds CLI
imports it.) Multi-process runs need this step: they never prepare a dataset themselves.
"""

from __future__ import annotations

import argparse
import logging
import time

from nafnet_jax.data.config import DATASETS, default_data_config
from nafnet_jax.data.sources import prepare


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=DATASETS)
    parser.add_argument('--manual_dir', help='the extracted download (gopro, sidd, reds)')
    parser.add_argument('--data_dir', help='tfds data_dir (default: ~/tensorflow_datasets)')
    for key in ('gt_dir', 'lq_dir', 'eval_gt_dir', 'eval_lq_dir'):
        parser.add_argument(f'--{key}', help='paired_folder folders')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    config = default_data_config()
    for key in ('dataset', 'manual_dir', 'data_dir', 'gt_dir', 'lq_dir', 'eval_gt_dir',
                'eval_lq_dir'):
        config[key] = getattr(args, key)
    start = time.perf_counter()
    builder = prepare(config)
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f'{builder.name} ready in {builder.data_dir} ({time.perf_counter() - start:.0f} s): '
          f'{splits}')


if __name__ == '__main__':
    main()
