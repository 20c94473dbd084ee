"""The train/eval pipeline: alignment, determinism, O(1) resume, process shards, eval, bad data.

Data: coordinate-encoded images (gt[y, x] = (y, x, tag), lq = 255 - gt, tag = image index), so
each element says which image and which window it came from.
"""

import glob
import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nafnet_jax.data import (BadDataError, create_eval_dataset, create_train_iterator,
                             default_data_config, prepare, shard_bounds, validate_data_config)
from nafnet_jax.data.testing import (coordinate_image, textured_image, write_gopro_tree,
                                     write_image, write_paired_folder)

tfds.disable_progress_bar()
NUM_IMAGES = 10


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('pairs')
    return write_paired_folder(root / 'train', num=NUM_IMAGES, height=12, width=16) + \
        write_paired_folder(root / 'val', num=5, height=10, width=14)


def _config(folders, **overrides):
    lq, gt, eval_lq, eval_gt = folders
    c = default_data_config()
    c.dataset = 'paired_folder'
    c.lq_dir, c.gt_dir, c.eval_lq_dir, c.eval_gt_dir = lq, gt, eval_lq, eval_gt
    c.crop_size = 8
    for key, value in overrides.items():
        c[key] = value
    return c


def _batches(config, steps, **kwargs):
    kwargs.setdefault('process_index', 0)
    kwargs.setdefault('process_count', 1)
    iterator = create_train_iterator(config, **kwargs)
    out = list(itertools.islice(iterator, steps))
    iterator.close()
    return out


def _tags(batch):
    """Image index of every element (constant channel 2 of gt)."""
    return [int(t) for t in np.round(batch['gt'][:, 0, 0, 2] * 255)]


def _assert_batches_equal(a, b, what):
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b)):
        for key in ('lq', 'gt'):
            np.testing.assert_array_equal(x[key], y[key], err_msg=f'{what}: batch {step} {key}')


def test_batches_are_float32_unit_range_local_batches(folders):
    (batch,) = _batches(_config(folders), 1, global_batch_size=8, seed=0, process_index=1,
                        process_count=2)
    assert set(batch) == {'lq', 'gt'}
    for key in ('lq', 'gt'):
        assert batch[key].shape == (4, 8, 8, 3) and batch[key].dtype == np.float32, key
        assert 0 <= batch[key].min() and batch[key].max() <= 1, key


def test_crops_of_lq_and_gt_stay_aligned_under_every_augmentation(folders):
    batches = _batches(_config(folders), 8, global_batch_size=8, seed=3)
    variants_seen = set()
    for batch in batches:
        np.testing.assert_allclose(batch['lq'], 1 - batch['gt'], atol=1e-6,
                                   err_msg='lq is not 1 - gt: the pair lost alignment')
        for gt in np.round(batch['gt'] * 255).astype(np.uint8):
            # Undo each dihedral variant; exactly one must give a window of the source image.
            tag = int(gt[0, 0, 2])
            source = coordinate_image(12, 16, tag)
            found = []
            for h, v, r in itertools.product((0, 1), repeat=3):
                x = gt.transpose(1, 0, 2) if r else gt
                x = x[::-1] if v else x
                x = x[:, ::-1] if h else x
                top, left = int(x[0, 0, 0]), int(x[0, 0, 1])
                if np.array_equal(x, source[top:top + 8, left:left + 8]):
                    found.append((h, v, r))
            assert len(found) == 1, f'image {tag}: crop is not one dihedral transform of a window'
            variants_seen.add(found[0])
    assert len(variants_seen) == 8, f'only {sorted(variants_seen)} of the 8 variants in 64 crops'


def test_two_runs_with_one_seed_give_equal_batches(folders):
    config = _config(folders, degradation={'noise': {'sigma': (0, 30)}, 'jpeg': {}},
                     num_parallel_calls=4)
    a = _batches(config, 3, global_batch_size=4, seed=11)
    b = _batches(config, 3, global_batch_size=4, seed=11)
    _assert_batches_equal(a, b, 'same seed')
    c = _batches(config, 1, global_batch_size=4, seed=12)
    assert not np.array_equal(a[0]['lq'], c[0]['lq']), 'seed 12 gave the batches of seed 11'


@pytest.mark.parametrize('crops_per_image,shuffle_buffer', [(1, 0), (3, 5)])
def test_resume_at_step_equals_the_uninterrupted_stream(folders, crops_per_image, shuffle_buffer):
    config = _config(folders, crops_per_image=crops_per_image, shuffle_buffer=shuffle_buffer,
                     degradation={'blur': {'kernel_size': 5, 'motion_length': (1, 5),
                                           'defocus_radius': (1, 2)}})
    full = _batches(config, 5, global_batch_size=4, seed=5)
    for start in (1, 4):
        resumed = _batches(config, 5 - start, global_batch_size=4, seed=5, start_step=start)
        _assert_batches_equal(resumed, full[start:], f'resumed at step {start}')


def test_each_epoch_visits_every_image_once_in_a_new_order(folders):
    batches = _batches(_config(folders), 4, global_batch_size=5, seed=0)
    epoch1 = _tags(batches[0]) + _tags(batches[1])
    epoch2 = _tags(batches[2]) + _tags(batches[3])
    assert sorted(epoch1) == list(range(NUM_IMAGES)), epoch1
    assert sorted(epoch2) == list(range(NUM_IMAGES)), epoch2
    assert epoch1 != epoch2, 'two epochs in the same order'


def test_crops_per_image_cuts_k_crops_from_each_decoded_image(folders):
    batches = _batches(_config(folders, crops_per_image=2), 2, global_batch_size=4, seed=0)
    tags = _tags(batches[0]) + _tags(batches[1])
    assert tags[0::2] == tags[1::2], f'consecutive crops should share an image: {tags}'
    assert not np.array_equal(batches[0]['gt'][0], batches[0]['gt'][1]), 'two identical crops'


def test_two_processes_read_disjoint_shards_whose_union_is_the_dataset(folders):
    # 8 devices over 2 processes: global batch 8, 4 per process; 5 steps = 4 epochs of a shard.
    seen = []
    for p in range(2):
        batches = _batches(_config(folders), 5, global_batch_size=8, seed=0, process_index=p,
                           process_count=2)
        seen.append({t for b in batches for t in _tags(b)})
    assert not seen[0] & seen[1], f'processes share images {seen[0] & seen[1]}'
    assert seen[0] | seen[1] == set(range(NUM_IMAGES)), seen
    assert len(seen[0]) == len(seen[1]) == NUM_IMAGES // 2


@pytest.mark.parametrize('n,count', [(10, 2), (7, 3), (3, 8), (1280, 8)])
def test_shard_bounds_split_evenly_and_cover_everything(n, count):
    bounds = [shard_bounds(n, p, count) for p in range(count)]
    covered = [i for lo, hi in bounds for i in range(lo, hi)]
    assert covered == list(range(n)), bounds
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_global_batch_not_divisible_by_processes_is_an_error(folders):
    with pytest.raises(ValueError, match='global_batch_size 6 must be a positive multiple of '
                                         'process_count 4'):
        create_train_iterator(_config(folders), global_batch_size=6, seed=0, process_index=0,
                              process_count=4)


def test_images_smaller_than_the_crop_are_padded_and_stay_aligned(tmp_path):
    lq, gt = write_paired_folder(tmp_path, num=2, height=5, width=6)
    config = _config((lq, gt, None, None), crop_size=16)
    (batch,) = _batches(config, 1, global_batch_size=2, seed=0)
    assert batch['gt'].shape == (2, 16, 16, 3)
    np.testing.assert_allclose(batch['lq'], 1 - batch['gt'], atol=1e-6)


def test_degradation_makes_lq_from_gt(folders):
    config = _config(folders, degradation={'noise': {'sigma': 20.0}, 'quantize': False})
    (batch,) = _batches(config, 1, global_batch_size=8, seed=0)
    noise = (batch['lq'] - batch['gt']) * 255
    assert abs(noise.std() - 20) < 2.5, noise.std()  # 1536 samples
    assert abs(noise.mean()) < 2.5, noise.mean()


def test_clean_folder_needs_a_degradation(tmp_path):
    _, gt = write_paired_folder(tmp_path, num=2)
    config = _config((None, gt, None, None))
    with pytest.raises(ValueError, match="data.degradation: dataset 'paired_folder' holds clean"):
        validate_data_config(config)
    config.degradation = {'noise': {'sigma': 10.0}}
    (batch,) = _batches(config, 1, global_batch_size=2, seed=0)
    assert not np.array_equal(batch['lq'], batch['gt'])


def test_eval_yields_whole_images_with_names_in_split_order(folders):
    dataset = create_eval_dataset(_config(folders), process_index=0, process_count=1)
    examples = list(dataset)
    assert len(dataset) == dataset.num_examples == 5
    assert [e['name'] for e in examples] == [f'img_{i:03d}' for i in range(5)]
    for i, e in enumerate(examples):
        assert e['lq'].shape == e['gt'].shape == (10, 14, 3) and e['lq'].dtype == np.float32
        np.testing.assert_allclose(e['gt'] * 255, coordinate_image(10, 14, i), atol=1e-4)
        np.testing.assert_allclose(e['lq'], 1 - e['gt'], atol=1e-6)


def test_eval_shards_are_disjoint_cover_the_split_and_report_padding(folders):
    config = _config(folders)
    shards = [create_eval_dataset(config, split='train', process_index=p, process_count=3)
              for p in range(3)]
    names = [[e['name'] for e in shard] for shard in shards]
    assert sum(names, []) == [f'img_{i:03d}' for i in range(NUM_IMAGES)], names
    assert [len(s) for s in shards] == [4, 3, 3]
    assert all(s.num_examples == NUM_IMAGES and s.max_per_process == 4 for s in shards)


def test_eval_max_images_keeps_the_first_images(folders):
    dataset = create_eval_dataset(_config(folders, eval_max_images=3), process_index=0,
                                  process_count=1)
    assert [e['name'] for e in dataset] == ['img_000', 'img_001', 'img_002']
    assert dataset.num_examples == 3


def test_eval_degradation_is_the_same_on_every_pass(folders):
    config = _config(folders, degradation={'noise': {'sigma': 15.0}})
    dataset = create_eval_dataset(config, process_index=0, process_count=1)
    first, second = list(dataset), list(dataset)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a['lq'], b['lq'], err_msg=a['name'])
        assert not np.array_equal(a['lq'], 1 - a['gt']), f"{a['name']}: not degraded"


def test_corrupt_image_in_a_folder_fails_the_pipeline_naming_it(tmp_path):
    lq, gt = write_paired_folder(tmp_path, num=2, height=40, width=40)
    bad = os.path.join(gt, 'img_001.png')
    data = open(bad, 'rb').read()
    with open(bad, 'wb') as f:
        f.write(data[:len(data) // 2])  # the header still reads; the pixels do not
    with pytest.raises(Exception, match='img_001.png: cannot decode'):
        _batches(_config((lq, gt, None, None)), 2, global_batch_size=2, seed=0)


def test_folder_conversions_are_reported_by_name_before_training(tmp_path, caplog):
    lq, gt = write_paired_folder(tmp_path, num=2)
    rgba = np.concatenate([coordinate_image(12, 16, 1), np.full((12, 16, 1), 255, np.uint8)], -1)
    write_image(os.path.join(gt, 'img_001.png'), rgba)
    with caplog.at_level('WARNING'):
        iterator = create_train_iterator(_config((lq, gt, None, None)), global_batch_size=2,
                                         seed=0, process_index=0, process_count=1)
    assert "1 file(s) converted: opaque alpha dropped" in caplog.text, caplog.text
    assert 'gt/img_001.png' in caplog.text, caplog.text
    batch = next(iterator)
    iterator.close()
    np.testing.assert_allclose(batch['lq'], 1 - batch['gt'], atol=1e-6)


def test_size_mismatch_in_a_folder_fails_before_training(tmp_path):
    lq, gt = write_paired_folder(tmp_path, num=2)
    write_image(os.path.join(lq, 'img_001.png'), coordinate_image(12, 15))
    with pytest.raises(BadDataError, match='img_001.png is 15x12'):
        create_train_iterator(_config((lq, gt, None, None)), global_batch_size=2, seed=0,
                              process_index=0, process_count=1)


def test_tfds_dataset_is_prepared_on_first_use_and_read_by_index(tmp_path):
    config = default_data_config()
    config.dataset, config.crop_size = 'gopro', 8
    config.manual_dir = write_gopro_tree(tmp_path / 'manual')
    config.data_dir = os.fspath(tmp_path / 'data')
    batches = _batches(config, 2, global_batch_size=2, seed=0)
    assert sorted(_tags(batches[0]) + _tags(batches[1])) == [0, 1, 2, 3]  # train = tags 0-3
    np.testing.assert_allclose(batches[0]['lq'], 1 - batches[0]['gt'], atol=1e-6)
    names = [e['name'] for e in create_eval_dataset(config, process_index=0, process_count=1)]
    assert names == ['GOPR0003_03_00_000001', 'GOPR0003_03_00_000002']  # default split: test


def test_folders_read_directly_or_through_tfds_give_the_same_batches(folders, tmp_path):
    direct = _config(folders)
    via_tfds = _config(folders, paired_folder_via_tfds=True, data_dir=os.fspath(tmp_path / 'tfds'))
    _assert_batches_equal(_batches(via_tfds, 2, global_batch_size=4, seed=1),
                          _batches(direct, 2, global_batch_size=4, seed=1), 'tfds vs folders')
    assert os.path.isdir(tmp_path / 'tfds' / 'paired_folder'), 'no tfds dataset was prepared'


def test_multiprocess_run_does_not_prepare_a_missing_dataset(tmp_path):
    config = default_data_config()
    config.dataset = 'gopro'
    config.manual_dir = write_gopro_tree(tmp_path / 'manual')
    config.data_dir = os.fspath(tmp_path / 'data')
    with pytest.raises(FileNotFoundError,
                       match="'gopro' is not prepared.*python -m nafnet_jax.data.build gopro"):
        create_train_iterator(config, global_batch_size=2, seed=0, process_index=0,
                              process_count=2)


def test_bundled_demo_trains_and_evaluates_with_a_degradation(tmp_path):
    config = default_data_config()
    config.data_dir = os.fspath(tmp_path / 'data')
    config.crop_size = 32
    config.degradation = {'noise': {'sigma': 25.0}}
    (batch,) = _batches(config, 1, global_batch_size=2, seed=0)
    assert batch['lq'].shape == (2, 32, 32, 3)
    assert [e['name'] for e in create_eval_dataset(config, process_index=0, process_count=1)] == \
        ['chelsea', 'coffee']


@pytest.mark.parametrize('key,value,message', [
    ('dataset', 'imagenet', 'data.dataset must be one of'),
    ('crop_size', 0, 'data.crop_size must be a positive int'),
    ('use_flip', 1, 'data.use_flip must be a bool'),
    ('crops_per_image', 0, 'data.crops_per_image must be an int >= 1'),
    ('eval_max_images', -2, 'data.eval_max_images must be a positive int or None'),
    ('num_parallel_calls', 0, 'data.num_parallel_calls must be -1 or >= 1'),
    ('degradation', {'noise': {'sigma': 'a lot'}},
     r'data.degradation.noise.sigma must be a number or a \(low, high\) pair'),
])
def test_bad_config_values_name_the_key(key, value, message):
    config = default_data_config().to_dict()
    config['degradation'] = {'noise': {'sigma': 5.0}}
    config[key] = value
    with pytest.raises(ValueError, match=message):
        validate_data_config(config)


def test_unknown_config_key_is_named():
    config = default_data_config().to_dict()
    config['crop'] = 128
    with pytest.raises(ValueError, match=r"data: unknown key\(s\) \['crop'\]"):
        validate_data_config(config)


def test_default_bundled_config_asks_for_a_degradation():
    with pytest.raises(ValueError, match="data.degradation: dataset 'bundled' holds clean images"):
        validate_data_config(default_data_config())


def test_paired_folder_needs_gt_dir():
    config = default_data_config()
    config.dataset = 'paired_folder'
    with pytest.raises(ValueError, match="data.gt_dir is required for dataset 'paired_folder'"):
        validate_data_config(config)


def test_interpreter_exits_with_live_iterators(folders):
    # tf.data threads calling into Python can hang interpreter shutdown; the atexit hook closes
    # the iterators first.
    lq, gt, _, _ = folders
    script = textwrap.dedent(f'''
        from nafnet_jax.data import create_train_iterator, default_data_config
        c = default_data_config()
        c.dataset, c.lq_dir, c.gt_dir, c.crop_size = 'paired_folder', {lq!r}, {gt!r}, 8
        live = [create_train_iterator(c, global_batch_size=2, seed=s, process_index=0,
                                      process_count=1) for s in range(3)]
        for it in live:
            next(it)
        print('done', flush=True)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=100)
    assert result.returncode == 0 and 'done' in result.stdout, result.stderr[-2000:]


# ------------------------------------------------------------------ pre-cut patch datasets

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(_REPO, 'configs', 'gopro_*.py')))
                         + sorted(glob.glob(os.path.join(_REPO, 'configs', 'sidd_*.py'))))
def test_gopro_and_sidd_recipes_train_from_the_originals_patches(path):
    spec = importlib.util.spec_from_file_location('recipe', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.get_config().data
    assert (data.dataset, data.builder_config, data.crops_per_image) in (
        ('gopro', 'patches512', 1), ('sidd', 'patches512', 1)), os.path.basename(path)
    validate_data_config(data)


@pytest.fixture(scope='module')
def gopro_patches(tmp_path_factory):
    """gopro/patches512 prepared from 600x800 fake frames: 2 train frames x 6 patches."""
    root = tmp_path_factory.mktemp('gopro_patches')
    config = default_data_config()
    config.dataset, config.builder_config = 'gopro', 'patches512'
    config.manual_dir = write_gopro_tree(root / 'manual', frames=1, height=600, width=800,
                                         pattern='textured')
    config.data_dir = os.fspath(root / 'data')
    config.crop_size = 64
    prepare(config, workers=1)
    return config


def test_patch_training_draws_every_patch_once_per_epoch(gopro_patches):
    config = gopro_patches.copy_and_resolve_references()
    config.crop_size, config.use_flip, config.use_rot = 512, False, False  # crop = whole patch
    batches = _batches(config, 3, global_batch_size=4, seed=0)  # 12 patches: one epoch
    windows = [(top, left) for top in (0, 88) for left in (0, 256, 288)]
    seen = []
    for gt in np.concatenate([np.round(b['gt'] * 255).astype(np.uint8) for b in batches]):
        tag = int(gt[0, 0, 2])
        frame = textured_image(600, 800, tag)
        found = [w for w in windows
                 if np.array_equal(gt, frame[w[0]:w[0] + 512, w[1]:w[1] + 512])]
        assert len(found) == 1, f'a crop of frame {tag} is not one of its patches'
        seen.append((tag, found[0]))
    assert sorted(seen) == [(tag, w) for tag in (0, 1) for w in windows]


def test_patch_training_is_deterministic_and_resumes_exactly(gopro_patches):
    full = _batches(gopro_patches, 4, global_batch_size=4, seed=3)
    _assert_batches_equal(_batches(gopro_patches, 4, global_batch_size=4, seed=3), full,
                          'same seed')
    _assert_batches_equal(_batches(gopro_patches, 2, global_batch_size=4, seed=3, start_step=2),
                          full[2:], 'resumed at step 2')
    for batch in full:
        np.testing.assert_allclose(batch['lq'], 1 - batch['gt'], atol=1e-6,
                                   err_msg='lq is not 1 - gt: the pair lost alignment')


def test_patch_dataset_evaluates_on_whole_test_frames(gopro_patches):
    (example,) = create_eval_dataset(gopro_patches, process_index=0, process_count=1)
    assert example['name'] == 'GOPR0003_03_00_000001' and example['gt'].shape == (600, 800, 3)
    np.testing.assert_allclose(example['lq'], 1 - example['gt'], atol=1e-6)


def test_builder_config_is_checked_against_the_dataset():
    config = default_data_config()
    config.dataset, config.builder_config = 'reds', 'patches512'
    with pytest.raises(ValueError, match=r"data.builder_config must be None or one of \(\) for "
                                         r"dataset 'reds', got 'patches512'"):
        validate_data_config(config)


def test_data_bench_measures_the_patch_dataset_it_prepares(capsys):
    from nafnet_jax.data import bench
    bench.main(['--small', '--cases', 'gopro/patches512', '--parallel', '1', '--seconds', '0',
                '--gopro_frames', '2', '--batch', '2'])
    rows = [line.split('|')[1:4] for line in capsys.readouterr().out.splitlines()
            if line.startswith('| gopro/patches512 |')]
    assert len(rows) == 1 and rows[0][1].strip() == '1', rows
    assert float(rows[0][2]) > 0, 'no pairs/s measured'
