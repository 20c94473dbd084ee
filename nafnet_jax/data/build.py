"""Prepares a tfds dataset (array_record files) once, before training:

    python -m nafnet_jax.data.build gopro --builder_config patches512 \
        --manual_dir ~/downloads/GoPro --data_dir ~/tensorflow_datasets --workers 16

gopro, sidd and reds are written shard by shard by `--workers` processes with bounded memory; an
interrupted run resumes from its finished shards when re-run with the same sources (and refuses,
naming the folder to delete, when the sources changed). See nafnet_jax.data.builders.streaming.
(`tfds build --imports nafnet_jax.data` prepares the same datasets.) Multi-process training runs
need this step: they never prepare a dataset themselves.
"""

from __future__ import annotations

import argparse
import logging
import time

from nafnet_jax.data.config import BUILDER_CONFIGS, DATASETS, default_data_config
from nafnet_jax.data.sources import prepare


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=DATASETS)
    parser.add_argument('--builder_config',
                        help='gopro/sidd: ' + ' | '.join(BUILDER_CONFIGS['gopro'])
                        + ' (default: frames)')
    parser.add_argument('--manual_dir', help='the extracted download (gopro, sidd, reds)')
    parser.add_argument('--data_dir', help='tfds data_dir (default: ~/tensorflow_datasets)')
    parser.add_argument('--workers', type=int,
                        help='gopro/sidd/reds: preparing processes (default: one per core)')
    for key in ('gt_dir', 'lq_dir', 'eval_gt_dir', 'eval_lq_dir'):
        parser.add_argument(f'--{key}', help='paired_folder folders')
    args = parser.parse_args(argv)
    allowed = BUILDER_CONFIGS.get(args.dataset, ())
    if args.builder_config is not None and args.builder_config not in allowed:
        parser.error(f'--builder_config {args.builder_config!r}: {args.dataset} has '
                     f'{list(allowed) or "no builder configs"}')
    logging.basicConfig(level=logging.INFO)
    config = default_data_config()
    for key in ('dataset', 'builder_config', 'manual_dir', 'data_dir', 'gt_dir', 'lq_dir',
                'eval_gt_dir', 'eval_lq_dir'):
        config[key] = getattr(args, key)
    start = time.perf_counter()
    builder = prepare(config, workers=args.workers)
    splits = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f'{builder.name} ready in {builder.data_dir} ({time.perf_counter() - start:.0f} s): '
          f'{splits}')


if __name__ == '__main__':
    main()
