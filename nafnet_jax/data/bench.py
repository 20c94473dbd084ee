"""Cost and throughput of the training pipeline here: `python -m nafnet_jax.data.bench`.

Measures what `create_train_iterator` delivers (256x256 training pairs, batch 16, one process) for
  * `gopro/patches512` and `sidd/patches512`: the original's pre-cut patches, stored raw, prepared
    from synthetic trees (GoPro-sized 1280x720 frames; SIDD-sized 5328x3000 images);
  * `gopro/frames` and `sidd/frames`: the same frames whole, as PNG (one crop per decoded pair,
    as the original's sampling) -- the cost before pre-cutting;
each at `--parallel` tf.data parallel calls (data.num_parallel_calls). It prints pairs/s and CPU
ms per delivered pair (user + system time of all threads of the process, divided by the pairs:
what sizes a host, and stable under other load, unlike pairs/s), and with `--formats` the decode
cost of one 512x512 patch pair in each storage form considered (raw, zlib, PNG levels 0/1/3).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

from nafnet_jax.data import create_train_iterator, default_data_config, prepare
from nafnet_jax.data.builders.bundled import TRAIN_IMAGES, load_image
from nafnet_jax.data.builders.common import pair_features
from nafnet_jax.data.builders.streaming import raw_pair_features
from nafnet_jax.data.images import encode_png
from nafnet_jax.data.testing import sidd_blocks, write_mat_v5

CASES = ('gopro/patches512', 'sidd/patches512', 'gopro/frames', 'sidd/frames')
GOPRO_SIZE = (720, 1280)
SIDD_SIZE = (3000, 5328)  # Galaxy S6 images of SIDD-Medium, the largest (112 patches each)


def _photo_pair(index: int, height: int, width: int, noise: float, rng) -> tuple[np.ndarray, ...]:
    """(lq, gt) uint8: gt = an upscaled photograph + sensor-like noise (so it compresses like a
    real frame); lq = a blurred (downscaled and upscaled) copy with `noise` more noise."""
    photos = list(TRAIN_IMAGES.values())
    photo = Image.fromarray(load_image(*photos[index % len(photos)]))
    photo = photo.resize((width, height), Image.BICUBIC)
    gt = np.asarray(photo, np.float32) + rng.normal(0, 3, (height, width, 3))
    lq = np.asarray(photo.resize((width // 2, height // 2)).resize((width, height)), np.float32)
    lq = lq + rng.normal(0, 3 + noise, lq.shape)
    return tuple(np.clip(x, 0, 255).round().astype(np.uint8) for x in (lq, gt))


def _write_png(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(encode_png(image))


def synthetic_gopro(root: str, frames: int, size: tuple[int, int] = GOPRO_SIZE) -> str:
    """root/{train,test}/{input,target}/*.png (the flat layout): `frames` train pairs, 1 test."""
    rng = np.random.default_rng(0)
    for split, count in (('train', frames), ('test', 1)):
        for i in range(count):
            lq, gt = _photo_pair(i, *size, noise=0, rng=rng)
            _write_png(os.path.join(root, split, 'input', f'GOPR0001_00_00-{i:06d}.png'), lq)
            _write_png(os.path.join(root, split, 'target', f'GOPR0001_00_00-{i:06d}.png'), gt)
    return root


def synthetic_sidd(root: str, images: int, size: tuple[int, int] = SIDD_SIZE) -> str:
    """root/Data/<scene>/<id>_{NOISY,GT}_SRGB_010.PNG (`images` pairs; noise sigma 10 on top of
    the blur) and small validation .mat files (1 image x 2 blocks of 256x256)."""
    rng = np.random.default_rng(0)
    for i in range(images):
        lq, gt = _photo_pair(i, *size, noise=10, rng=rng)
        scene = os.path.join(root, 'Data', f'{i + 1:04d}_001_S6_00100_00060_3200_L')
        _write_png(os.path.join(scene, f'{i + 1:04d}_NOISY_SRGB_010.PNG'), lq)
        _write_png(os.path.join(scene, f'{i + 1:04d}_GT_SRGB_010.PNG'), gt)
    blocks = sidd_blocks(images=1, blocks=2, size=256)
    write_mat_v5(os.path.join(root, 'ValidationGtBlocksSrgb.mat'), 'ValidationGtBlocksSrgb', blocks)
    write_mat_v5(os.path.join(root, 'ValidationNoisyBlocksSrgb.mat'), 'ValidationNoisyBlocksSrgb',
                 255 - blocks)
    return root


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pairs_per_second(config, batch: int, seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(pairs/s, CPU seconds per pair) of the train iterator over at least `seconds` (and one
    batch).

    CPU seconds per pair (all threads) hardly depend on other load on the machine, unlike
    pairs/s: cores needed = pairs/s wanted x CPU seconds per pair.
    """
    iterator = create_train_iterator(config, global_batch_size=batch, seed=0, process_index=0,
                                     process_count=1)
    for _ in range(warmup):
        next(iterator)
    start, cpu_start, count = time.perf_counter(), _cpu_seconds(), 0
    while count == 0 or time.perf_counter() - start < seconds:  # at least one batch
        next(iterator)
        count += batch
    rate = count / (time.perf_counter() - start)
    cpu = (_cpu_seconds() - cpu_start) / count
    iterator.close()
    return rate, cpu


def storage_decode_ms(patch_lq: np.ndarray, patch_gt: np.ndarray,
                      repeats: int = 20) -> dict[str, tuple[float, int]]:
    """{storage form: (CPU ms to decode one stored lq+gt pair, stored bytes)}.

    Each form is decoded as the pipeline reads it: tfds deserialises the stored example
    (`deserialize_example_np`, what `tfds.data_source` runs per read).
    """
    import tensorflow_datasets as tfds
    example = {'lq': patch_lq, 'gt': patch_gt, 'name': 'patch'}
    zlib = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding='zlib')
    forms = {'raw uint8': (raw_pair_features(), example),
             'zlib (level 6)': (tfds.features.FeaturesDict(
                 {'lq': zlib, 'gt': zlib, 'name': tfds.features.Text()}), example)}
    for level in (0, 1, 3):
        encoded = {'lq': encode_png(patch_lq, level), 'gt': encode_png(patch_gt, level),
                   'name': 'patch'}
        forms[f'PNG level {level}'] = (pair_features(), encoded)
    out = {}
    for name, (features, value) in forms.items():
        record = features.serialize_example(value)
        features.deserialize_example_np(record)
        start = time.thread_time()
        for _ in range(repeats):
            features.deserialize_example_np(record)
        out[name] = ((time.thread_time() - start) / repeats * 1e3, len(record))
    return out


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
    return (f'date {datetime.datetime.now().isoformat(timespec="minutes")}; {cpu}, '
            f'{os.cpu_count()} cores; python {platform.python_version()}, '
            f'tensorflow {tf.__version__}, tensorflow-datasets {tfds.__version__}, '
            f'numpy {np.__version__}, Pillow {PIL.__version__}; uptime: {_uptime()}')


def _uptime() -> str:
    try:
        return subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
    except OSError:
        return '?'


def _prepare_case(case: str, manual_dirs: dict, data_dir: str) -> tuple[object, float]:
    """(data config of `case`, seconds its preparation took)."""
    dataset, builder_config = case.split('/')
    config = default_data_config()
    config.dataset, config.builder_config = dataset, builder_config
    config.manual_dir, config.data_dir = manual_dirs[dataset], data_dir
    config.use_flip = config.use_rot = dataset == 'gopro'  # as the recipes
    start = time.perf_counter()
    prepare(config)
    return config, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=CASES)
    parser.add_argument('--parallel', type=int, nargs='+', default=[1, 2],
                        help='data.num_parallel_calls values to measure')
    parser.add_argument('--seconds', type=float, default=20.0, help='measuring time per row')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--gopro_frames', type=int, default=30, help='synthetic 1280x720 pairs')
    parser.add_argument('--sidd_images', type=int, default=2, help='synthetic 5328x3000 pairs')
    parser.add_argument('--formats', action='store_true',
                        help='also the decode cost of a 512x512 patch pair per storage form')
    parser.add_argument('--step_seconds', type=float, default=0.15,
                        help='accelerator step time to size the host for (NAFNet-w32, batch 32)')
    parser.add_argument('--small', action='store_true', help=argparse.SUPPRESS)  # smoke tests
    args = parser.parse_args(argv)
    print(machine())
    gopro_size, sidd_size = ((600, 800), (600, 800)) if args.small else (GOPRO_SIZE, SIDD_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manual = {'gopro': synthetic_gopro(os.path.join(tmp, 'gopro'), args.gopro_frames,
                                           gopro_size)}
        if any(c.startswith('sidd') for c in args.cases):
            manual['sidd'] = synthetic_sidd(os.path.join(tmp, 'sidd'), args.sidd_images,
                                            sidd_size)
        print(f'wrote the synthetic trees in {time.perf_counter() - start:.0f} s')
        if args.formats:
            _, gt = _photo_pair(0, *gopro_size, noise=0, rng=np.random.default_rng(0))
            lq = _photo_pair(1, *gopro_size, noise=10, rng=np.random.default_rng(1))[0]
            print('\n| storage of a 512x512 patch pair | decode CPU ms | stored MB |\n'
                  '|---|---|---|')
            for name, (ms, size) in storage_decode_ms(lq[:512, :512], gt[:512, :512]).items():
                print(f'| {name} | {ms:.1f} | {size / 1e6:.2f} |')
        need = 32 / args.step_seconds
        print(f'\none accelerator at {args.step_seconds} s per batch-32 step consumes {need:.0f} '
              'pairs/s\n')
        print('| dataset | parallel calls | pairs/s here | CPU ms/pair | cores per accelerator | '
              'prepared in |\n|---|---|---|---|---|---|')
        for case in args.cases:
            config, prep_s = _prepare_case(case, manual, os.path.join(tmp, 'tfds'))
            for parallel in args.parallel:
                config.num_parallel_calls = parallel
                rate, cpu = pairs_per_second(config, args.batch, args.seconds)
                print(f'| {case} | {parallel} | {rate:.1f} | {cpu * 1e3:.1f} | '
                      f'{need * cpu:.1f} | {prep_s:.0f} s |', flush=True)
    print(f'uptime after: {_uptime()}')


if __name__ == '__main__':
    main()
