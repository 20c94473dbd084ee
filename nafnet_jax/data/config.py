"""The data config (`config.data`): its defaults and validation."""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder  # None that the command line can override

from nafnet_jax.data.degradation_spec import DegradationSpec, parse_degradation

# Stereo super-resolution (NAFSSR): 6-channel (left RGB, right RGB) pairs, gt = data.scale x lq.
STEREO_DATASETS = ('stereo', 'stereo_folder', 'stereo_bundled')
DATASETS = ('bundled', 'gopro', 'sidd', 'reds', 'paired_folder') + STEREO_DATASETS
# Split evaluated when data.eval_split is None.
DEFAULT_EVAL_SPLIT = {'bundled': 'validation', 'gopro': 'test', 'sidd': 'validation',
                      'reds': 'validation', 'paired_folder': 'validation',
                      'stereo': 'test_flickr1024', 'stereo_folder': 'validation',
                      'stereo_bundled': 'validation'}
# Datasets whose stored lq equals gt: training on them needs a degradation.
CLEAN_ONLY = ('bundled',)
# tfds builder configs a dataset offers (data.builder_config); None (the default) is always valid.
BUILDER_CONFIGS = {'gopro': ('frames', 'patches512'), 'sidd': ('frames', 'patches512'),
                   'stereo': ('x2', 'x4'), 'stereo_bundled': ('x2',)}
# The scale of a stereo tfds dataset, per builder config (None: the builder's default, the first).
STEREO_SCALES = {'stereo': {None: 2, 'x2': 2, 'x4': 4}, 'stereo_bundled': {None: 2, 'x2': 2}}


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults of every data option; configs override fields (see each comment)."""
    c = ml_collections.ConfigDict()
    # bundled | gopro | sidd | reds | paired_folder; stereo SR: stereo | stereo_folder |
    # stereo_bundled (nafnet_jax.data.stereo)
    c.dataset = 'bundled'
    # tfds builder config (None: the builder's default). gopro and sidd: 'frames' (whole frames,
    # PNG) or 'patches512' (the original's pre-cut 512x512 training patches, raw uint8: decoding
    # is a copy; sampling a patch uniformly weights each frame by its area, as the original).
    c.builder_config = placeholder(str)
    c.data_dir = placeholder(str)  # tfds data_dir (None: tfds default, ~/tensorflow_datasets)
    c.manual_dir = placeholder(str)  # the extracted download (gopro, sidd, reds)
    c.train_split = 'train'  # tfds split syntax accepted, e.g. 'train[:90%]'
    c.eval_split = placeholder(str)  # None: 'test' for gopro, 'validation' otherwise
    # paired_folder: two folders with matching file names (extensions may differ). lq_dir=None
    # means the folder holds clean images only: lq = gt, to be degraded (data.degradation).
    c.lq_dir = placeholder(str)
    c.gt_dir = placeholder(str)
    c.eval_lq_dir = placeholder(str)
    c.eval_gt_dir = placeholder(str)
    # (stereo_folder reads HR stereo pairs from gt_dir / eval_gt_dir, lq_dir unset: LR is made by
    # MATLAB-style bicubic down-sampling, nafnet_jax.data.resize.)
    c.paired_folder_via_tfds = False  # True: prepare a tfds dataset; False: read the folders
    c.crop_size = 256  # gt_size of the original configs
    c.use_flip = True  # random horizontal flip (p=0.5)
    c.use_rot = True  # random vertical flip and transpose (p=0.5 each); not for stereo data
    # Stereo SR only (crop_size is not used there):
    c.scale = 1  # gt / lq size ratio: 1 for the NAFNet datasets, 2 or 4 for stereo SR
    c.lr_crop_size = (30, 90)  # (h, w) of the lq training crop; gt crop = scale * it (original)
    c.use_flip_rgb = False  # a random one of the 6 colour permutations, same for both views
    c.use_vflip = False  # random vertical flip (p=0.5); use_flip's hflip also swaps the views
    # 'rgb', or 'bgr': views fed in BGR order, as the original's stereo datasets do (NAFNET.md
    # 1.6), to reproduce its published models; evaluation uses the same order.
    c.channel_order = 'rgb'
    # Synthetic degradation of gt into lq, see nafnet_jax.data.degradations; empty: none.
    c.degradation = ml_collections.ConfigDict()
    # Crops cut from each decoded image (1: as the original). k > 1 divides decode cost by k.
    c.crops_per_image = 1
    # Window (in crops) inside which consecutive crops are permuted, to spread the k crops of an
    # image over several batches. 0/1: none. Epoch order is a full index permutation anyway.
    c.shuffle_buffer = 0
    c.eval_max_images = placeholder(int)  # evaluate the first N images of the split (None: all)
    c.eval_seed = 0  # seeds the degradation of eval images (fixed across runs)
    c.prepare = True  # build a missing tfds dataset on first use (single-process runs only)
    c.num_parallel_calls = -1  # tf.data map parallelism; -1: AUTOTUNE
    c.prefetch = 2  # batches prefetched by tf.data
    return c


def _get(config, key: str) -> Any:
    try:
        return config[key]
    except KeyError:
        raise KeyError(f'data.{key} is missing; start from default_data_config()') from None


def _check(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ValueError(f'data.{key} {message}, got {value!r}')


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_data_config(config) -> DegradationSpec | None:
    """Checks every field of `config.data`; raises naming the bad key. Returns the degradation.

    Accepts a ConfigDict or a plain mapping with the keys of `default_data_config()`.
    """
    known = set(default_data_config().keys())
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ValueError(f'data: unknown key(s) {unknown}; known: {sorted(known)}')
    dataset = _get(config, 'dataset')
    _check(dataset in DATASETS, 'dataset', f'must be one of {DATASETS}', dataset)
    builder_config = _get(config, 'builder_config')
    allowed = BUILDER_CONFIGS.get(dataset, ())
    _check(builder_config is None or builder_config in allowed, 'builder_config',
           f'must be None or one of {allowed} for dataset {dataset!r}', builder_config)
    for key in ('data_dir', 'manual_dir', 'lq_dir', 'gt_dir', 'eval_lq_dir', 'eval_gt_dir',
                'eval_split'):
        v = _get(config, key)
        _check(v is None or isinstance(v, str), key, 'must be a string or None', v)
    _check(isinstance(_get(config, 'train_split'), str) and config['train_split'], 'train_split',
           'must be a non-empty string', config['train_split'])
    crop = _get(config, 'crop_size')
    _check(_is_int(crop) and crop > 0, 'crop_size', 'must be a positive int', crop)
    for key in ('use_flip', 'use_rot', 'prepare', 'paired_folder_via_tfds'):
        _check(isinstance(_get(config, key), bool), key, 'must be a bool', config[key])
    k = _get(config, 'crops_per_image')
    _check(_is_int(k) and k >= 1, 'crops_per_image', 'must be an int >= 1', k)
    w = _get(config, 'shuffle_buffer')
    _check(w is None or (_is_int(w) and w >= 0), 'shuffle_buffer', 'must be an int >= 0', w)
    n = _get(config, 'eval_max_images')
    _check(n is None or (_is_int(n) and n > 0), 'eval_max_images', 'must be a positive int or None',
           n)
    _check(_is_int(_get(config, 'eval_seed')), 'eval_seed', 'must be an int', config['eval_seed'])
    p = _get(config, 'num_parallel_calls')
    _check(_is_int(p) and (p == -1 or p >= 1), 'num_parallel_calls', 'must be -1 or >= 1', p)
    f = _get(config, 'prefetch')
    _check(_is_int(f) and f >= 0, 'prefetch', 'must be an int >= 0', f)
    if dataset == 'paired_folder':
        _check(config['gt_dir'] is not None, 'gt_dir', "is required for dataset 'paired_folder'",
               config['gt_dir'])
    _validate_stereo(config, dataset, builder_config)
    degradation = _get(config, 'degradation')
    _check(degradation is None or hasattr(degradation, 'items'), 'degradation',
           'must be a mapping (ConfigDict) or None', degradation)
    spec = parse_degradation(degradation, 'data.degradation')
    if dataset in STEREO_DATASETS and spec is not None:
        raise ValueError(f'data.degradation: stereo dataset {dataset!r} pairs LR with HR images; '
                         'synthetic degradations are not supported for it, leave it empty')
    clean_only = dataset in CLEAN_ONLY or (dataset == 'paired_folder' and config['lq_dir'] is None)
    if clean_only and (spec is None or spec.source != 'gt'):
        raise ValueError(
            f"data.degradation: dataset {dataset!r} holds clean images only (lq == gt), so it "
            "needs a degradation of gt, e.g. data.degradation = {'noise': {'sigma': 25.0}}")
    return spec


def _validate_stereo(config, dataset: str, builder_config) -> None:
    """The stereo keys: scale matches the dataset, crop (h, w), no transposes for stereo pairs."""
    stereo = dataset in STEREO_DATASETS
    scale = _get(config, 'scale')
    _check(_is_int(scale) and scale >= 1, 'scale', 'must be a positive int', scale)
    if dataset in STEREO_SCALES:
        want = STEREO_SCALES[dataset][builder_config]
        _check(scale == want, 'scale', f'must be {want} for dataset {dataset!r} with '
               f'builder_config {builder_config!r}', scale)
    elif dataset == 'stereo_folder':
        _check(scale >= 2, 'scale', "must be >= 2 for dataset 'stereo_folder'", scale)
    else:
        _check(scale == 1, 'scale', f'must be 1 for dataset {dataset!r} (no super-resolution)',
               scale)
    crop = _get(config, 'lr_crop_size')
    _check(isinstance(crop, (tuple, list)) and len(crop) == 2
           and all(_is_int(v) and v > 0 for v in crop), 'lr_crop_size',
           'must be two positive ints (h, w)', crop)
    for key in ('use_flip_rgb', 'use_vflip'):
        value = _get(config, key)
        _check(isinstance(value, bool), key, 'must be a bool', value)
        _check(stereo or not value, key, f'applies to stereo datasets only (dataset {dataset!r})',
               value)
    order = _get(config, 'channel_order')
    _check(order in ('rgb', 'bgr'), 'channel_order', "must be 'rgb' or 'bgr'", order)
    _check(stereo or order == 'rgb', 'channel_order',
           f"'bgr' applies to stereo datasets only (dataset {dataset!r})", order)
    if stereo:
        _check(not config['use_rot'], 'use_rot', 'must be False for stereo datasets (a transpose '
               'breaks the horizontal epipolar geometry; use use_flip and use_vflip)',
               config['use_rot'])
    if dataset == 'stereo_folder':
        _check(config['gt_dir'] is not None, 'gt_dir',
               "is required for dataset 'stereo_folder' (the HR stereo pairs)", config['gt_dir'])
        for key in ('lq_dir', 'eval_lq_dir'):
            _check(config[key] is None, key, "must be None for dataset 'stereo_folder' (LR is "
                   'made from HR by bicubic down-sampling)', config[key])


def is_stereo(config) -> bool:
    """True when `config.data` names a stereo SR dataset (6-channel pairs, data.stereo)."""
    return config.get('dataset') in STEREO_DATASETS


def eval_split_of(config) -> str:
    """The split evaluated: data.eval_split, or the dataset's default."""
    return config['eval_split'] or DEFAULT_EVAL_SPLIT[config['dataset']]
