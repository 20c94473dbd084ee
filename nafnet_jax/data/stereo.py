"""The stereo super-resolution input pipeline (NAFSSR): 6-channel LR/HR pairs, tf.data on the host.

`nafnet_jax.data.pipeline.create_train_dataset` / `create_eval_dataset` hand stereo datasets
(data.dataset in config.STEREO_DATASETS) to `create_stereo_train_dataset` /
`create_stereo_eval_dataset` here. Batches: {'lq': (B, h, w, 6), 'gt': (B, s*h, s*w, 6)} float32
in [0, 1], channels 0..2 the left view, 3..5 the right; (h, w) = data.lr_crop_size, s = data.scale.

Training augmentations are the original's PairedStereoImageDataset's (NAFNET.md 2.3):
  * flip_RGB (data.use_flip_rgb): a random one of the 6 permutations of the colour channels,
    the same for both views (the original draws it before cropping; a channel permutation
    commutes with a crop, so drawing it after is the same and touches fewer pixels);
  * a random crop: an lq window of lr_crop_size and the gt window scale times it, at scale times
    its corner (an image smaller than the crop is first mirrored at the bottom/right, edge pixel
    repeated, lq by n px and gt by s*n px, which keeps gt's pixels over lq's);
  * hflip (data.use_flip, p=0.5) that also swaps the views (channels [3,4,5,0,1,2]): a mirrored
    left view is the right view of the mirrored scene;
  * vflip (data.use_vflip, p=0.5); no transpose (data.use_rot must be False: it would turn the
    horizontal epipolar lines vertical);
  * data.channel_order='bgr' then feeds each view in BGR order, as the original's datasets do.

Determinism, O(1) resume from start_step and per-process shards are those of
nafnet_jax.data.pipeline (its module doc): the stream is a pure function of (seed, element index).
"""

from __future__ import annotations

import tensorflow as tf

from nafnet_jax.data.config import eval_split_of, validate_data_config
from nafnet_jax.data.pipeline import (EvalDataset, PipelineIterator, _fold, _graph_fn, _options,
                                      eval_share, hide_accelerators_from_tf, parallelism,
                                      process_layout, train_batches, train_layout)
from nafnet_jax.data.stereo_sources import open_stereo_source
from nafnet_jax.data.transforms import mirror_indices

# The original's flip_RGB table: the 6 permutations of (R, G, B), applied to both views.
COLOUR_PERMUTATIONS = ((0, 1, 2, 3, 4, 5), (0, 2, 1, 3, 5, 4), (1, 0, 2, 4, 3, 5),
                       (1, 2, 0, 4, 5, 3), (2, 0, 1, 5, 3, 4), (2, 1, 0, 5, 4, 3))
SWAP_VIEWS = (3, 4, 5, 0, 1, 2)
BGR = (2, 1, 0, 5, 4, 3)  # RGB -> BGR of both views (and back)


def paired_random_crop_scaled(lq: tf.Tensor, gt: tf.Tensor, lq_size: tuple[int, int], scale: int,
                              seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """An lq window of `lq_size` (h, w) at a uniform corner (t, l), gt's (s*h, s*w) at (s*t, s*l).

    gt must be `scale` times lq. An image smaller than the window is mirrored at its bottom/right
    (edge pixel repeated), lq by n px and gt by scale * n px: gt's mirrored block over each lq
    pixel is then the mirror of the block over the pixel lq mirrored, so the pair stays consistent.
    """
    h, w = lq_size
    shape = tf.shape(lq)
    top = tf.random.stateless_uniform([], _fold(seed, 0), 0, tf.maximum(shape[0], h) - h + 1,
                                      dtype=tf.int32)
    left = tf.random.stateless_uniform([], _fold(seed, 1), 0, tf.maximum(shape[1], w) - w + 1,
                                       dtype=tf.int32)

    def slice_window():
        return (tf.slice(lq, [top, left, 0], [h, w, -1]),
                tf.slice(gt, [scale * top, scale * left, 0], [scale * h, scale * w, -1]))

    def gather_window():
        def window(image, start_row, start_col, rows, cols, s):
            r = mirror_indices(start_row + tf.range(rows), s * shape[0], symmetric=True)
            c = mirror_indices(start_col + tf.range(cols), s * shape[1], symmetric=True)
            return tf.gather(tf.gather(image, r, axis=0), c, axis=1)

        return (window(lq, top, left, h, w, 1),
                window(gt, scale * top, scale * left, scale * h, scale * w, scale))

    fits = tf.logical_and(shape[0] >= h, shape[1] >= w)
    return tf.cond(fits, slice_window, gather_window)


def _coin(seed: tf.Tensor, salt: int) -> tf.Tensor:
    return tf.random.stateless_uniform([], _fold(seed, salt)) < 0.5


def _permute_both(lq, gt, order):
    return tf.gather(lq, order, axis=-1), tf.gather(gt, order, axis=-1)


def stereo_augment(lq: tf.Tensor, gt: tf.Tensor, seed: tf.Tensor, use_flip_rgb: bool,
                   use_flip: bool, use_vflip: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """flip_RGB, hflip + view swap, vflip (module doc), each decided from `seed`; (H, W, 6) each."""
    if use_flip_rgb:
        pick = tf.random.stateless_uniform([], _fold(seed, 0), 0, len(COLOUR_PERMUTATIONS),
                                           dtype=tf.int32)
        lq, gt = _permute_both(lq, gt, tf.gather(tf.constant(COLOUR_PERMUTATIONS), pick))
    if use_flip:
        def mirror_and_swap():
            return _permute_both(tf.reverse(lq, [1]), tf.reverse(gt, [1]), SWAP_VIEWS)

        lq, gt = tf.cond(_coin(seed, 1), mirror_and_swap, lambda: (lq, gt))
    if use_vflip:
        lq, gt = tf.cond(_coin(seed, 2), lambda: (tf.reverse(lq, [0]), tf.reverse(gt, [0])),
                         lambda: (lq, gt))
    return lq, gt


def _to_model(image: tf.Tensor, channel_order: str) -> tf.Tensor:
    """uint8 -> float32 [0, 1] (value / 255), views in `channel_order`."""
    image = tf.cast(image, tf.float32) / 255.0
    return tf.gather(image, BGR, axis=-1) if channel_order == 'bgr' else image


def stereo_train_pair(lq, gt, seed, config) -> tuple[tf.Tensor, tf.Tensor]:
    """One training pair: crop, augmentations, float32 [0, 1]; lq (h, w, 6), gt (s*h, s*w, 6)."""
    h, w = config['lr_crop_size']
    s = config['scale']
    lq, gt = paired_random_crop_scaled(lq, gt, (h, w), s, _fold(seed, 1))
    lq, gt = stereo_augment(lq, gt, _fold(seed, 2), config['use_flip_rgb'], config['use_flip'],
                            config['use_vflip'])
    lq, gt = _to_model(lq, config['channel_order']), _to_model(gt, config['channel_order'])
    lq.set_shape([h, w, 6])
    gt.set_shape([s * h, s * w, 6])
    return lq, gt


def _load_fn(source, with_name: bool):
    """A tf function index -> (lq, gt[, name]) reading the stereo `source` (uint8, 6 channels)."""
    def load(index):
        lq, gt, name = source.load(int(index))
        return (lq, gt, name) if with_name else (lq, gt)

    out_types = [tf.uint8, tf.uint8] + ([tf.string] if with_name else [])

    def tf_load(index):
        outputs = tf.numpy_function(load, [index], out_types, stateful=False)
        for image in outputs[:2]:
            image.set_shape([None, None, 6])
        if with_name:
            outputs[2].set_shape([])
        return tuple(outputs)

    return tf_load


def create_stereo_train_dataset(data_config, *, global_batch_size: int, seed: int,
                                start_step: int = 0, process_index: int | None = None,
                                process_count: int | None = None) -> tf.data.Dataset:
    """The infinite stereo tf.data.Dataset (see pipeline.create_train_dataset, same arguments).

    Elements: {'lq': (B_local, h, w, 6), 'gt': (B_local, s*h, s*w, 6)} float32 [0, 1].
    data.crops_per_image and data.shuffle_buffer act as in the NAFNet pipeline (the same stream).
    """
    hide_accelerators_from_tf()
    validate_data_config(data_config)
    p, count, batch = train_layout(global_batch_size, start_step, process_index, process_count)
    source = open_stereo_source(data_config, data_config['train_split'], count)

    def train_pair(lq, gt, element_seed):
        return stereo_train_pair(lq, gt, element_seed, data_config)

    return train_batches(data_config, source, _load_fn(source, with_name=False), train_pair, batch=batch,
                         seed=seed, start_step=start_step, process_index=p, process_count=count)


def create_stereo_train_iterator(data_config, **kwargs) -> PipelineIterator:
    """Endless numpy stereo batches (create_stereo_train_dataset's arguments); close() frees it."""
    return PipelineIterator(create_stereo_train_dataset(data_config, **kwargs))


class StereoEvalDataset(EvalDataset):
    """This process's share of a stereo eval split: whole pairs {'lq', 'gt', 'name'}, split order.

    lq: float32 [0, 1] (h, w, 6), gt: (s*h, s*w, 6), views in data.channel_order; name: str.
    len(), num_examples and max_per_process as EvalDataset's.
    """

    def __init__(self, source, indices: range, num_examples: int, max_per_process: int,
                 channel_order: str, parallel):
        super().__init__(source, indices, num_examples, max_per_process, None, 0, parallel)
        self._channel_order = channel_order

    def as_tf_dataset(self) -> tf.data.Dataset:
        order = self._channel_order
        load = _load_fn(self._source, with_name=True)

        def to_example(index):
            lq, gt, name = load(index)
            return {'lq': _to_model(lq, order), 'gt': _to_model(gt, order), 'name': name}

        indices = tf.constant(list(self._indices), dtype=tf.int64, shape=[len(self._indices)])
        ds = tf.data.Dataset.from_tensor_slices(indices)
        ds = ds.map(_graph_fn(to_example), num_parallel_calls=self._parallel)
        return ds.prefetch(2).with_options(_options())


def create_stereo_eval_dataset(data_config, *, split: str | None = None,
                               process_index: int | None = None,
                               process_count: int | None = None) -> StereoEvalDataset:
    """Whole stereo eval pairs of this process's shard (see pipeline.create_eval_dataset).

    split: default data.eval_split, else 'test_flickr1024' (stereo) or 'validation'.
    data.eval_max_images keeps the first N pairs of the split, before sharding.
    """
    hide_accelerators_from_tf()
    validate_data_config(data_config)
    p, count = process_layout(process_index, process_count)
    split = split or eval_split_of(data_config)
    source = open_stereo_source(data_config, split, count)
    return StereoEvalDataset(source, *eval_share(data_config, len(source), p, count),
                             data_config['channel_order'], parallelism(data_config))


__all__ = ['COLOUR_PERMUTATIONS', 'StereoEvalDataset', 'create_stereo_eval_dataset',
           'create_stereo_train_dataset', 'create_stereo_train_iterator',
           'paired_random_crop_scaled', 'stereo_augment', 'stereo_train_pair']
