"""Throughput of the training pipeline on this machine: `python -m nafnet_jax.data.bench`.

Measures 256x256 training pairs per second delivered by `create_train_iterator` for
  * `bundled` (scikit-image photographs <= 512 px, Gaussian noise made on the fly), and
  * a `paired_folder` of synthetic 1280x720 PNG pairs (GoPro-sized; photographs upscaled with
    sensor-like noise, so that they compress like real frames),
each with 1 and 4 crops per decoded image, plus the single-thread decode cost of one 1280x720 PNG
pair, from which the cores a host needs per accelerator follow.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import resource
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

from nafnet_jax.data import create_train_iterator, default_data_config
from nafnet_jax.data.builders.bundled import TRAIN_IMAGES, load_image
from nafnet_jax.data.images import encode_png, read_rgb8


def synthetic_frames(folder: str, num: int, width: int = 1280,
                     height: int = 720) -> tuple[str, str]:
    """`num` lq/gt PNG pairs of width x height: gt = an upscaled photograph + noise, lq blurrier."""
    rng = np.random.default_rng(0)
    lq_dir, gt_dir = os.path.join(folder, 'lq'), os.path.join(folder, 'gt')
    os.makedirs(lq_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    photos = [load_image(*spec) for spec in TRAIN_IMAGES.values()]
    for i in range(num):
        photo = Image.fromarray(photos[i % len(photos)]).resize((width, height), Image.BICUBIC)
        gt = np.clip(np.asarray(photo, np.float32) + rng.normal(0, 3, (height, width, 3)), 0, 255)
        lq = np.asarray(photo.resize((width // 2, height // 2)).resize((width, height)), np.float32)
        lq = np.clip(lq + rng.normal(0, 3, lq.shape), 0, 255)
        for image, d in ((gt, gt_dir), (lq, lq_dir)):
            with open(os.path.join(d, f'{i:04d}.png'), 'wb') as f:
                f.write(encode_png(image.round().astype(np.uint8)))
    return lq_dir, gt_dir


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pairs_per_second(config, batch: int, seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(pairs/s, CPU seconds per pair) of the train iterator over at least `seconds`.

    CPU seconds per pair (all threads) hardly depend on other load on the machine, unlike
    pairs/s: cores needed = pairs/s wanted x CPU seconds per pair.
    """
    iterator = create_train_iterator(config, global_batch_size=batch, seed=0, process_index=0,
                                     process_count=1)
    for _ in range(warmup):
        next(iterator)
    start, cpu_start, count = time.perf_counter(), _cpu_seconds(), 0
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch
    rate = count / (time.perf_counter() - start)
    cpu = (_cpu_seconds() - cpu_start) / count
    iterator.close()
    return rate, cpu


def decode_seconds(lq_dir: str, gt_dir: str, repeats: int = 10) -> float:
    """CPU seconds (one thread) to read and decode one lq+gt PNG pair."""
    names = sorted(os.listdir(gt_dir))
    start = time.thread_time()
    for name in itertools.islice(itertools.cycle(names), repeats):
        read_rgb8(os.path.join(lq_dir, name))
        read_rgb8(os.path.join(gt_dir, name))
    return (time.thread_time() - start) / repeats


def machine() -> str:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    import PIL
    cpu = platform.processor() or ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    load = subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
    return (f'date {datetime.datetime.now().isoformat(timespec="minutes")}; {cpu}, '
            f'{os.cpu_count()} cores; python {platform.python_version()}, '
            f'tensorflow {tf.__version__}, tensorflow-datasets {tfds.__version__}, '
            f'numpy {np.__version__}, Pillow {PIL.__version__}; '
            f'uptime: {load}')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=20.0, help='measuring time per case')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--frames', type=int, default=30, help='synthetic 1280x720 pairs')
    parser.add_argument('--crops', type=int, nargs='+', default=[1, 4], help='crops_per_image')
    parser.add_argument('--step_seconds', type=float, default=0.15,
                        help='accelerator step time to size the host for (NAFNet-w32, batch 32)')
    args = parser.parse_args(argv)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lq_dir, gt_dir = synthetic_frames(os.path.join(tmp, 'frames'), args.frames)
        print(f'wrote {args.frames} 1280x720 PNG pairs in {time.perf_counter() - t0:.1f} s '
              f'({os.path.getsize(os.path.join(gt_dir, "0000.png")) / 1e6:.2f} MB each)')
        pair_s = decode_seconds(lq_dir, gt_dir)
        print(f'decode one 1280x720 PNG pair (read + Pillow decode): {pair_s * 1e3:.0f} ms CPU')
        cases = {}
        bundled = default_data_config()
        bundled.data_dir = os.path.join(tmp, 'tfds')
        bundled.degradation = {'noise': {'sigma': (0.0, 50.0)}}
        t0 = time.perf_counter()
        from nafnet_jax.data import prepare
        prepare(bundled)
        print(f'prepared bundled in {time.perf_counter() - t0:.1f} s')
        cases['bundled (<=512 px, noise)'] = bundled
        folder = default_data_config()
        folder.dataset, folder.lq_dir, folder.gt_dir = 'paired_folder', lq_dir, gt_dir
        cases['paired_folder 1280x720 PNG'] = folder
        need = 32 / args.step_seconds
        print(f'one accelerator at {args.step_seconds} s per batch-32 step consumes {need:.0f} '
              'pairs/s\n')
        print('| dataset | crops/image | pairs/s here | CPU ms/pair | cores per accelerator |\n'
              '|---|---|---|---|---|')
        for (name, config), k in itertools.product(cases.items(), args.crops):
            config.crops_per_image = k
            rate, cpu = pairs_per_second(config, args.batch, args.seconds)
            print(f'| {name} | {k} | {rate:.1f} | {cpu * 1e3:.1f} | {need * cpu:.1f} |',
                  flush=True)
    print(machine().split(';')[-1])


if __name__ == '__main__':
    main()
