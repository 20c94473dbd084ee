"""The input pipeline: `create_train_iterator` and `create_eval_dataset` (tf.data on the host).

Design (what makes it deterministic and resumable in O(1)):
  * Each process owns a contiguous shard [lo, hi) of the split (an even split, as
    `tfds.even_splits`), and reads it by random access (array_record or the folder source).
  * Process p's local element counter l = 0, 1, 2, ... maps to an image by an index permutation:
    unit u = l // crops_per_image, epoch e = u // n, image = lo + index_shuffle(u % n,
    seed=(seed, p, e)) -- `tf.random.experimental.index_shuffle` computes one position of the
    permutation without materialising it.
  * Every random choice of element l (crop window, flips, degradation) comes from the stateless
    seed (seed, g) with g = l * process_count + p, a global element index unique across processes.
  * So the stream is a pure function of (seed, l): starting at step N begins at l = N * B_local,
    with no replay and no iterator state to checkpoint.
Batches hold B_local = global_batch_size // process_count pairs; the trainer places them on the
mesh (nafnet_jax.training.partitioning.host_to_global).
"""

from __future__ import annotations

import atexit
import gc
import weakref
from typing import Callable

import numpy as np
import tensorflow as tf

from nafnet_jax.data import degradations, transforms
from nafnet_jax.data.config import eval_split_of, is_stereo, validate_data_config
from nafnet_jax.data.sources import PairSource, open_source

_INT64_MAX = np.iinfo(np.int64).max
# The map functions have no tensor-dependent Python control flow: skipping AutoGraph's source
# conversion makes building the pipeline several times faster.
_graph_fn = tf.autograph.experimental.do_not_convert


class PipelineIterator:
    """Iterator over a tf.data pipeline's numpy elements that can be closed.

    tf.data's background threads call into Python (the readers run through tf.numpy_function);
    if such an iterator is still alive when the interpreter shuts down, the process can hang.
    Every PipelineIterator is therefore closed by an atexit hook (and `close()` may be called
    earlier to free the threads and buffers).
    """

    def __init__(self, dataset: tf.data.Dataset, transform: Callable[[dict], dict] | None = None):
        self._iterator = dataset.as_numpy_iterator()
        self._transform = transform
        _LIVE_ITERATORS.add(self)

    def __iter__(self) -> PipelineIterator:
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            raise StopIteration
        element = next(self._iterator)
        return self._transform(element) if self._transform else element

    def close(self) -> None:
        self._iterator = None  # the last reference: TF cancels and joins its threads


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    for iterator in list(_LIVE_ITERATORS):
        iterator.close()
    gc.collect()


def hide_accelerators_from_tf() -> None:
    """Keeps TensorFlow off the GPUs/TPUs so that it takes no device memory from JAX."""
    for kind in ('GPU', 'TPU'):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # already initialised, or no such device type
            pass


def process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) given, or JAX's when both are None."""
    if process_index is None and process_count is None:
        import jax
        return jax.process_index(), jax.process_count()
    if process_index is None or process_count is None:
        raise ValueError('give both process_index and process_count, or neither')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    return process_index, process_count


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[lo, hi) of process `process_index` in an even split (the first n % count get one more)."""
    base, extra = divmod(num_examples, process_count)
    lo = process_index * base + min(process_index, extra)
    return lo, lo + base + (1 if process_index < extra else 0)


def _pixel_dtype(source: PairSource) -> np.dtype:
    """The integer pixel type `source.load` returns: uint8 (tfds PNGs) or uint16 (16-bit folders)."""
    return np.dtype(getattr(source, 'dtype', np.uint8))


def _to_unit(image: tf.Tensor, max_value: int) -> tf.Tensor:
    """Integer pixels -> float32 [0, 1] as nafnet_jax.data.image_io.to_unit (value / max, exactly)."""
    return tf.cast(image, tf.float32) / float(max_value)


def _to_255(image: tf.Tensor, max_value: int) -> tf.Tensor:
    """Integer pixels -> float32 on the 0..255 scale the degradations work on."""
    x = tf.cast(image, tf.float32)
    return x if max_value == 255 else x * (255.0 / max_value)


def _load_fn(source: PairSource, with_name: bool, need_lq: bool):
    """A tf function index -> (lq, gt[, name]) reading `source` in Python (pixels: `_pixel_dtype`).

    need_lq=False: lq is not read (the degradation makes it from gt) and gt is returned in its
    place, so the caller's graph is the same either way.
    """
    dtype = _pixel_dtype(source)
    no_image = np.zeros((0, 0, 3), dtype)

    def load(index):
        lq, gt, name = source.load(int(index), need_lq)
        lq = no_image if lq is None else lq
        return (lq, gt, name) if with_name else (lq, gt)

    out_types = [tf.as_dtype(dtype)] * 2 + ([tf.string] if with_name else [])

    def tf_load(index):
        outputs = tf.numpy_function(load, [index], out_types, stateful=False)
        for image in outputs[:2]:
            image.set_shape([None, None, 3])
        if with_name:
            outputs[2].set_shape([])
        if not need_lq:
            outputs[0] = outputs[1]
        return tuple(outputs)

    return tf_load


def _needs_lq(spec: degradations.DegradationSpec | None) -> bool:
    return spec is None or spec.source == 'lq'


def _element_seed(seed: int, local_index, process_index: int, process_count: int) -> tf.Tensor:
    """Stateless seed (seed, g) of local element `local_index`: g is its global element index."""
    g = tf.cast(local_index, tf.int64) * process_count + process_index
    return tf.stack([tf.constant(seed, tf.int64), g])


def _fold(seed: tf.Tensor, salt: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, salt)


def _train_crop(lq, gt, seed, config, spec: degradations.DegradationSpec | None,
                max_value: int = 255):
    """One training pair: crop (+ margin for blur), flips, degradation; float32 [0, 1] (c, c, 3).

    The flips act on the integer window (less data than float); the window is square and its
    margin equal on all sides, so flipping before degrading and cropping the margin is the same as
    flipping after. max_value: 255 (uint8 pixels) or 65535 (uint16).
    """
    size, margin = config['crop_size'], (spec.margin if spec else 0)
    lq, gt = transforms.paired_random_crop(lq, gt, size, _fold(seed, 1), margin)
    lq, gt = transforms.paired_dihedral(lq, gt, _fold(seed, 2), config['use_flip'],
                                        config['use_rot'])
    if spec is None:
        lq = _to_unit(lq, max_value)
    else:
        lq = degradations.degrade(_to_255(gt if spec.source == 'gt' else lq, max_value), spec,
                                  _fold(seed, 3)) / 255.0
    gt = _to_unit(gt, max_value)
    lq, gt = transforms.center_crop(lq, margin), transforms.center_crop(gt, margin)
    lq.set_shape([size, size, 3])
    gt.set_shape([size, size, 3])
    return lq, gt


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return options


def parallelism(data_config) -> int:
    """tf.data map parallelism of data.num_parallel_calls (-1: AUTOTUNE)."""
    parallel = data_config['num_parallel_calls']
    return tf.data.AUTOTUNE if parallel == -1 else parallel


def train_layout(global_batch_size: int, start_step: int, process_index: int | None,
                 process_count: int | None) -> tuple[int, int, int]:
    """(process index, process count, local batch) of a training stream; bad values raise naming them."""
    p, count = process_layout(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % count:
        raise ValueError(f'global_batch_size {global_batch_size} must be a positive multiple of '
                         f'process_count {count}')
    if start_step < 0:
        raise ValueError(f'start_step must be >= 0, got {start_step}')
    return p, count, global_batch_size // count


def train_batches(data_config, source, load: Callable, train_pair: Callable, *, batch: int, seed: int,
                  start_step: int, process_index: int, process_count: int) -> tf.data.Dataset:
    """The deterministic, resumable training stream every training dataset is built on (module doc).

    Args:
      source: the split's reader (its len() is the split's size); this process reads its shard.
      load: a tf function index -> (lq, gt) decoding one example of `source`.
      train_pair: (lq, gt, element_seed) -> (lq, gt), one training pair (crop, augmentations,
        float32) decided by the element's stateless seed only.
      batch, process_index, process_count: from `train_layout`.
    Returns:
      endless batches {'lq', 'gt'} of `batch` pairs; data.crops_per_image, data.shuffle_buffer
      and data.prefetch act here.
    """
    p, count = process_index, process_count
    lo, hi = shard_bounds(len(source), p, count)
    n = hi - lo
    if n == 0:
        raise ValueError(f"split {data_config['train_split']!r} has {len(source)} examples, fewer "
                         f'than the {count} processes')
    k = data_config['crops_per_image']
    window = data_config['shuffle_buffer'] or 1
    parallel = parallelism(data_config)

    # First local element to yield; a mixing window is regenerated from its start.
    first = start_step * batch
    window_start = first - first % window
    unit0, crops_to_skip = divmod(window_start, k)
    process_seed = tf.constant([seed, p], tf.int64)

    def image_index(unit):
        epoch_seed = _fold(process_seed, 0)
        epoch_seed = tf.random.experimental.stateless_fold_in(epoch_seed, unit // n)
        pos = tf.random.experimental.index_shuffle(unit % n, epoch_seed, n - 1)
        return unit, lo + pos

    def crops(unit, lq, gt):
        # k elements (local element index, lq, gt) sharing the decoded images (no copies).
        return tf.data.Dataset.range(k).map(_graph_fn(lambda j: (unit * k + j, lq, gt)))

    def element(local_index, lq, gt):
        return train_pair(lq, gt, _element_seed(seed, local_index, p, count))

    ds = tf.data.Dataset.range(unit0, _INT64_MAX)
    ds = ds.map(_graph_fn(image_index))
    ds = ds.map(_graph_fn(lambda unit, index: (unit, *load(index))),
                num_parallel_calls=parallel)
    if k > 1:  # (with k = 1 the unit is the element index already: no nested dataset needed)
        ds = ds.flat_map(_graph_fn(crops)).skip(crops_to_skip)
    ds = ds.map(_graph_fn(element), num_parallel_calls=parallel)
    if window > 1:
        def mix(w, pair):
            lq, gt = pair
            order = tf.random.experimental.index_shuffle(
                tf.range(window, dtype=tf.int64), _fold(_fold(process_seed, 1), w), window - 1)
            return tf.gather(lq, order), tf.gather(gt, order)

        ds = ds.batch(window, drop_remainder=True).enumerate(start=window_start // window)
        ds = ds.map(_graph_fn(mix)).unbatch().skip(first - window_start)
    ds = ds.map(_graph_fn(lambda lq, gt: {'lq': lq, 'gt': gt}))
    ds = ds.batch(batch, drop_remainder=True).prefetch(data_config['prefetch'])
    return ds.with_options(_options())


def create_train_dataset(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                         process_index: int | None = None,
                         process_count: int | None = None) -> tf.data.Dataset:
    """The infinite tf.data.Dataset behind `create_train_iterator` (same arguments)."""
    if is_stereo(data_config):  # 6-channel LR/HR pairs: nafnet_jax.data.stereo
        from nafnet_jax.data.stereo import create_stereo_train_dataset
        return create_stereo_train_dataset(
            data_config, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
            process_index=process_index, process_count=process_count)
    hide_accelerators_from_tf()
    spec = validate_data_config(data_config)
    p, count, batch = train_layout(global_batch_size, start_step, process_index, process_count)
    source = open_source(data_config, data_config['train_split'], count)
    load = _load_fn(source, with_name=False, need_lq=_needs_lq(spec))
    max_value = int(np.iinfo(_pixel_dtype(source)).max)

    def train_pair(lq, gt, element_seed):
        return _train_crop(lq, gt, element_seed, data_config, spec, max_value)

    return train_batches(data_config, source, load, train_pair, batch=batch, seed=seed,
                         start_step=start_step, process_index=p, process_count=count)


def create_train_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                          process_index: int | None = None,
                          process_count: int | None = None) -> PipelineIterator:
    """Endless numpy batches {'lq', 'gt'}: float32 [0, 1], (B_local, crop, crop, 3).

    Stereo datasets: (B_local, h, w, 6) and (B_local, s*h, s*w, 6) (nafnet_jax.data.stereo).

    B_local = global_batch_size // process_count. Deterministic in `seed`; the iterator started at
    `start_step` yields exactly what an uninterrupted one yields from that step (module doc).
    process_index/process_count default to JAX's. `close()` frees the reader threads.
    """
    return PipelineIterator(create_train_dataset(
        data_config, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count))


class EvalDataset:
    """This process's share of an eval split: whole images {'lq', 'gt', 'name'}, in split order.

    `len()` is this process's count; `num_examples` the whole (possibly truncated) split and
    `max_per_process` the largest share, so an evaluator can pad every process to equal steps.
    lq/gt: float32 [0, 1] (H, W, 3); name: str. Iterating again re-reads the split.
    """

    def __init__(self, source, indices: range, num_examples: int, max_per_process: int,
                 spec: degradations.DegradationSpec | None, eval_seed: int, parallel):
        self._source, self._indices, self._spec = source, indices, spec
        self._seed, self._parallel = eval_seed, parallel
        self.num_examples = num_examples
        self.max_per_process = max_per_process

    def __len__(self) -> int:
        return len(self._indices)

    def as_tf_dataset(self) -> tf.data.Dataset:
        spec, seed = self._spec, self._seed
        max_value = int(np.iinfo(_pixel_dtype(self._source)).max)

        def to_example(index, lq, gt, name):
            if spec is None:
                lq = _to_unit(lq, max_value)
            else:  # seeded by the image's index: the same lq on every run/host
                lq = degradations.degrade(_to_255(gt if spec.source == 'gt' else lq, max_value), spec,
                                          tf.stack([tf.constant(seed, tf.int64), index])) / 255.0
            return {'lq': lq, 'gt': _to_unit(gt, max_value), 'name': name}

        load = _load_fn(self._source, with_name=True, need_lq=_needs_lq(spec))
        ds = tf.data.Dataset.from_tensor_slices(
            tf.constant(list(self._indices), dtype=tf.int64, shape=[len(self._indices)]))
        ds = ds.map(_graph_fn(lambda i: (i, *load(i))), num_parallel_calls=self._parallel)
        ds = ds.map(_graph_fn(to_example), num_parallel_calls=self._parallel)
        return ds.prefetch(2).with_options(_options())

    def __iter__(self) -> PipelineIterator:
        return PipelineIterator(self.as_tf_dataset(), _decode_name)


def _decode_name(example: dict) -> dict:
    example['name'] = example['name'].decode()
    return example


def create_eval_dataset(data_config, *, split: str | None = None,
                        process_index: int | None = None,
                        process_count: int | None = None) -> EvalDataset:
    """Whole eval images {'lq', 'gt', 'name'} of this process's shard (see EvalDataset).

    split: default data.eval_split (or the dataset's: 'test' for gopro, 'validation' otherwise).
    data.eval_max_images keeps the first N images of the split, before sharding.
    Stereo datasets: nafnet_jax.data.stereo.create_stereo_eval_dataset (6-channel pairs).
    """
    if is_stereo(data_config):
        from nafnet_jax.data.stereo import create_stereo_eval_dataset
        return create_stereo_eval_dataset(data_config, split=split, process_index=process_index,
                                          process_count=process_count)
    hide_accelerators_from_tf()
    spec = validate_data_config(data_config)
    p, count = process_layout(process_index, process_count)
    split = split or eval_split_of(data_config)
    source = open_source(data_config, split, count)
    return EvalDataset(source, *eval_share(data_config, len(source), p, count), spec,
                       data_config['eval_seed'], parallelism(data_config))


def eval_share(data_config, num_examples: int, process_index: int, process_count: int
               ) -> tuple[range, int, int]:
    """(this process's example indices, the evaluated split's size, the largest share) of an eval split
    of `num_examples`; data.eval_max_images keeps the first N before the even split over processes."""
    total = num_examples
    if data_config['eval_max_images'] is not None:
        total = min(total, data_config['eval_max_images'])
    lo, hi = shard_bounds(total, process_index, process_count)
    return range(lo, hi), total, -(-total // process_count)
