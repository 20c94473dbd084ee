"""Stereo SR data (NAFSSR): MATLAB bicubic, the original's layout, augmentations, resume, demo.

Data: views are coordinate images (channel 0 = row, 1 = column, 2 = tag; left tag i, right tag
i + 128, see data.testing.stereo_views), so every element says which pair, view and window it
came from; textured (random) views where a resize must be checked.
"""

import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from nafnet_jax.data import (BadDataError, create_eval_dataset, default_data_config, validate_data_config)
from nafnet_jax.data.builders.stereo import (StereoFiles, patch_files, read_stereo_example,
                                             scenes_of_test_set, synthetic_stereo_pairs)
from nafnet_jax.data.resize import contributions, crop_to_multiple, imresize_down, imresize_up
from nafnet_jax.data.stereo import COLOUR_PERMUTATIONS
from nafnet_jax.data.stereo_sources import StereoFolderSource, stereo_folder_pairs
from test_data_pipeline import _batches as pipeline_batches
from nafnet_jax.data.testing import (textured_image, write_image, write_stereo_folder,
                                     write_stereo_tree)

tfds.disable_progress_bar()
PATCHES = 5
LR = (6, 10)  # lr size of the fake patches


# ------------------------------------------------------------------------------- bicubic

def test_matlab_x2_weights_are_the_hand_worked_antialiased_cubic():
    # h(x) = cubic(x / 2) / 2 at distances 0.5, 1.5, 2.5, 3.5 from u = 2j - 0.5, normalised:
    # cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625, cubic(1.25) = -0.0703125,
    # cubic(1.75) = -0.0234375 (sum 1 per side).
    expected = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875]) / 2
    expected = np.concatenate([expected, expected[::-1]])
    weights, indices = contributions(16, 8, 0.5)
    np.testing.assert_allclose(weights[3], expected, atol=1e-15)
    np.testing.assert_array_equal(indices[3], np.arange(3, 11))
    # At the border MATLAB mirrors with the edge pixel repeated: [2, 1, 0, 0, 1, 2, 3, 4].
    np.testing.assert_array_equal(indices[0], [2, 1, 0, 0, 1, 2, 3, 4])


@pytest.mark.parametrize('factor', [2, 4])
def test_constant_image_stays_constant(factor):
    image = np.full((4 * factor, 6 * factor, 3), 77, np.uint8)
    out = imresize_down(image, factor)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, 77)


@pytest.mark.parametrize('factor', [2, 4])
def test_linear_ramp_gives_block_means_inside_and_mirrored_values_at_the_border(factor):
    ramp = np.tile(np.arange(16 * factor, dtype=np.float64), (factor, 1))  # value = column
    out = imresize_down(ramp, factor)[0]
    # Interior: a symmetric kernel centred between pixels reproduces a line: the block mean.
    block_means = ramp[0].reshape(-1, factor).mean(axis=1)
    np.testing.assert_allclose(out[2:-2], block_means[2:-2], atol=1e-12)
    # Border: mirroring bends the ramp. Hand-worked for x2: sum(w * [2,1,0,0,1,2,3,4]).
    if factor == 2:
        assert out[0] == pytest.approx(0.44921875, abs=1e-12)
        assert out[0] != pytest.approx(block_means[0])


@pytest.mark.parametrize('factor', [2, 4])
def test_pil_bicubic_agrees_inside_and_differs_only_in_two_border_pixels(factor):
    # PIL truncates the kernel at the border (renormalising) where MATLAB mirrors.
    image = np.random.default_rng(factor).random((12 * factor, 16 * factor)).astype(np.float32)
    ours = imresize_down(image, factor)
    pil = np.asarray(Image.fromarray(image, 'F').resize((16, 12), Image.Resampling.BICUBIC))
    diff = np.abs(ours - pil)
    assert diff[2:-2, 2:-2].max() < 1e-6, 'interior differs from PIL'
    border = np.ones_like(diff, bool)
    border[2:-2, 2:-2] = False
    assert diff[border].max() > 1e-3, 'the border should differ from PIL (mirror vs truncate)'
    rgb = (image[..., None].repeat(3, -1) * 255).astype(np.uint8)
    pil8 = np.asarray(Image.fromarray(rgb).resize((16, 12), Image.Resampling.BICUBIC))
    diff8 = np.abs(imresize_down(rgb, factor).astype(int) - pil8.astype(int))
    assert diff8[2:-2, 2:-2].max() <= 1, 'uint8 interior differs from PIL by more than 1 level'


@pytest.mark.parametrize('factor', [2, 4])
def test_bicubic_enlargement_is_pils_inside_and_keeps_constants(factor):
    """imresize_up: the bicubic baseline of SR validation (no antialiasing when enlarging)."""
    image = np.random.default_rng(factor).random((12, 16)).astype(np.float32)
    ours = imresize_up(image, factor)
    assert ours.shape == (12 * factor, 16 * factor)
    pil = np.asarray(Image.fromarray(image, 'F').resize((16 * factor, 12 * factor), Image.Resampling.BICUBIC))
    inner = slice(2 * factor, -2 * factor)
    assert np.abs(ours - pil)[inner, inner].max() < 1e-5, 'interior differs from PIL'
    np.testing.assert_allclose(imresize_up(np.full((5, 7, 3), 0.3), factor), 0.3, atol=1e-12)
    with pytest.raises(ValueError, match='float'):
        imresize_up(np.zeros((4, 4), np.uint8), factor)


def test_resize_rejects_sizes_not_a_multiple_of_the_factor():
    with pytest.raises(ValueError, match='13x8 is not a multiple of the factor 2'):
        imresize_down(np.zeros((13, 8), np.uint8), 2)
    assert crop_to_multiple(np.zeros((13, 9)), 4).shape == (12, 8)


# ------------------------------------------------------------- the original's layout (tfds)

@pytest.fixture(scope='module')
def stereo_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('stereo')
    manual = write_stereo_tree(root / 'manual', patches=PATCHES, lr_size=LR)
    return manual, os.fspath(root / 'data')


def _stereo_config(stereo_tree, **overrides):
    manual, data_dir = stereo_tree
    c = default_data_config()
    c.dataset, c.builder_config, c.scale = 'stereo', 'x2', 2
    c.manual_dir, c.data_dir = manual, data_dir
    c.use_rot, c.use_flip = False, False
    c.lr_crop_size = (3, 4)
    c.num_parallel_calls = 1
    for key, value in overrides.items():
        c[key] = value
    return c


def _batches(config, steps, **kwargs):
    """The first `steps` batches (test_data_pipeline's reader), seed 0 and 4 pairs by default."""
    return pipeline_batches(config, steps, **{'seed': 0, 'global_batch_size': 4, **kwargs})


def _u8(x):
    return np.round(x * 255).astype(int)


def test_stereo_layout_gives_six_channel_pairs_with_gt_twice_lq(stereo_tree):
    evalset = create_eval_dataset(_stereo_config(stereo_tree), split='test_kitti2015',
                                  process_index=0, process_count=1)
    examples = list(evalset)
    assert [e['name'] for e in examples] == ['scene_000', 'scene_001']
    for e in examples:
        assert e['lq'].shape == (10, 14, 6) and e['gt'].shape == (20, 28, 6)  # hr 4*(5,7), x2
        assert e['lq'].dtype == np.float32 and 0 <= e['lq'].min() and e['gt'].max() <= 1
        np.testing.assert_array_equal(e['lq'], e['gt'][::2, ::2])  # lr = hr[::2, ::2]
        left_tag, right_tag = _u8(e['gt'][0, 0, 2]), _u8(e['gt'][0, 0, 5])
        assert right_tag == left_tag + 128, 'channels 3..5 must be the right view'


def test_every_test_set_has_a_split_and_train_holds_the_patches(stereo_tree):
    config = _stereo_config(stereo_tree)
    from nafnet_jax.data.sources import prepare
    splits = prepare(config).info.splits
    assert {name: s.num_examples for name, s in splits.items()} == {
        'train': PATCHES, 'test_flickr1024': 2, 'test_kitti2012': 2, 'test_kitti2015': 2,
        'test_middlebury': 2}


def test_absent_folders_leave_their_splits_out_and_nothing_at_all_is_an_error(tmp_path):
    """Only Flickr1024 present (evaluating converted weights needs no training patches)."""
    import shutil
    from nafnet_jax.data.sources import prepare
    manual = write_stereo_tree(tmp_path / 'manual', scales=(2,), patches=1, test_scenes=1)
    shutil.rmtree(os.path.join(manual, 'patches_x2'))
    for test_set in ('KITTI2012', 'KITTI2015', 'Middlebury'):
        shutil.rmtree(os.path.join(manual, 'test', test_set))
    config = _stereo_config((manual, os.fspath(tmp_path / 'data')))
    assert set(prepare(config).info.splits) == {'test_flickr1024'}
    assert [e['name'] for e in create_eval_dataset(config, process_index=0, process_count=1)] == ['scene_000']
    shutil.rmtree(os.path.join(manual, 'test', 'Flickr1024'))
    with pytest.raises(BadDataError, match='neither patches_x2 nor any test set'):
        prepare(_stereo_config((manual, os.fspath(tmp_path / 'data2'))))


def test_a_missing_view_is_an_error_naming_the_file(tmp_path):
    manual = write_stereo_tree(tmp_path, scales=(2,), patches=2, test_scenes=1)
    os.remove(os.path.join(manual, 'patches_x2', '000002', 'lr1.png'))
    with pytest.raises(BadDataError, match=r'000002/lr1\.png: missing file'):
        patch_files(manual, 2)
    os.remove(os.path.join(manual, 'test', 'Middlebury', 'lr_x2', 'scene_000', 'lr0.png'))
    with pytest.raises(BadDataError, match=r'scene_000/lr0\.png: missing file'):
        scenes_of_test_set(manual, 'Middlebury', 2)


def test_hr_not_scale_times_lr_is_an_error_naming_both_files(tmp_path):
    manual = write_stereo_tree(tmp_path, scales=(2,), patches=1, test_scenes=1)
    (files,) = patch_files(manual, 2)
    with pytest.raises(BadDataError, match=r'hr0\.png is 20x12, not 4 x the LR .*lr0\.png'):
        read_stereo_example(StereoFiles(files.name, files.lr, files.hr, 4), report=None)
    write_image(files.hr[1], np.zeros((12, 18, 3), np.uint8))  # right view narrower
    with pytest.raises(BadDataError, match=r'views differ in size: .*hr0\.png is 20x12, '
                                           r'.*hr1\.png is 18x12'):
        read_stereo_example(files, report=None)


def test_an_unreadable_image_is_an_error_naming_it(tmp_path):
    manual = write_stereo_tree(tmp_path, scales=(2,), patches=1, test_scenes=1)
    (files,) = patch_files(manual, 2)
    with open(files.lr[0], 'wb') as f:
        f.write(b'not a png')
    with pytest.raises(BadDataError, match=r'lr0\.png: cannot decode'):
        read_stereo_example(files, report=None)


# ------------------------------------------------------------------ training augmentations

def _views(x):
    """Per view: which channel holds rows, columns and the constant tag (coordinate views)."""
    roles = []
    for view in (x[..., :3], x[..., 3:]):
        role = {}
        for c in range(3):
            ch = view[..., c]
            if np.all(ch == ch[0, 0]):
                role['tag'] = c
            elif np.all(ch == ch[:, :1]):
                role['row'] = c
            else:
                role['col'] = c
        roles.append(role)
    return roles


def test_crops_have_the_configured_shapes_and_gt_stays_over_lq(stereo_tree):
    config = _stereo_config(stereo_tree, use_flip=True, use_vflip=True)
    seen_flips = set()
    for batch in _batches(config, 4):
        assert batch['lq'].shape == (4, 3, 4, 6) and batch['gt'].shape == (4, 6, 8, 6)
        assert batch['lq'].dtype == np.float32
        for lq, gt in zip(_u8(batch['lq']), _u8(batch['gt'])):
            vflip = lq[1, 0, 0] < lq[0, 0, 0]  # rows decrease
            hflip = lq[0, 1, 1] < lq[0, 0, 1]  # columns decrease
            seen_flips.add((bool(vflip), bool(hflip)))
            # lr = hr[::2, ::2]: after a flip the sampled pixel is the block's other corner.
            ro, co = int(vflip), int(hflip)
            np.testing.assert_array_equal(lq, gt[ro::2, co::2],
                                          err_msg=f'gt window not over lq (flips {vflip, hflip})')
    assert len(seen_flips) == 4, f'not every flip combination drawn: {seen_flips}'


def test_hflip_mirrors_and_swaps_the_views(stereo_tree):
    config = _stereo_config(stereo_tree, use_flip=True)
    flipped = kept = 0
    for batch in _batches(config, 4):
        for lq in _u8(batch['lq']):
            left_tag, right_tag = lq[0, 0, 2], lq[0, 0, 5]
            if lq[0, 1, 1] < lq[0, 0, 1]:  # mirrored: the right view now comes first
                flipped += 1
                assert left_tag == right_tag + 128, 'hflip must swap the views'
            else:
                kept += 1
                assert right_tag == left_tag + 128
    assert flipped and kept


def test_flip_rgb_applies_one_permutation_to_both_views(stereo_tree):
    config = _stereo_config(stereo_tree, use_flip_rgb=True)
    arrangements = set()
    for batch in _batches(config, 6):
        for lq, gt in zip(_u8(batch['lq']), _u8(batch['gt'])):
            left, right = _views(lq)
            assert left == right, f'views permuted differently: {left} vs {right}'
            assert _views(gt) == [left, left], 'gt permuted unlike lq'
            arrangements.add((left['row'], left['col'], left['tag']))
    assert arrangements == {p[:3] for p in COLOUR_PERMUTATIONS}, arrangements


def test_bgr_channel_order_reverses_each_view_in_training_and_evaluation(stereo_tree):
    rgb = _batches(_stereo_config(stereo_tree), 1)[0]
    bgr = _batches(_stereo_config(stereo_tree, channel_order='bgr'), 1)[0]
    for key in ('lq', 'gt'):
        np.testing.assert_array_equal(bgr[key], rgb[key][..., [2, 1, 0, 5, 4, 3]])
    ev = next(iter(create_eval_dataset(_stereo_config(stereo_tree, channel_order='bgr'),
                                       process_index=0, process_count=1)))
    assert _views(ev['gt'])[0] == {'tag': 0, 'col': 1, 'row': 2}


@pytest.mark.parametrize('crops_per_image, shuffle_buffer', [(1, 0), (2, 3)])
def test_runs_are_deterministic_and_resume_at_any_step_in_o1(stereo_tree, crops_per_image,
                                                              shuffle_buffer):
    config = _stereo_config(stereo_tree, use_flip=True, use_vflip=True, use_flip_rgb=True,
                            crops_per_image=crops_per_image, shuffle_buffer=shuffle_buffer)
    stream = _batches(config, 5)
    again = _batches(config, 5)
    resumed = _batches(config, 2, start_step=3)
    for i, (a, b) in enumerate(zip(stream, again)):
        np.testing.assert_array_equal(a['gt'], b['gt'], err_msg=f'run 2, batch {i}')
    for i, b in enumerate(resumed):
        for key in ('lq', 'gt'):
            np.testing.assert_array_equal(stream[3 + i][key], b[key],
                                          err_msg=f'resumed at 3: batch {i} {key}')
    other = _batches(config, 1, seed=1)[0]
    assert not np.array_equal(other['gt'], stream[0]['gt']), 'the seed changes nothing'


def test_eval_max_images_and_process_shards(stereo_tree):
    config = _stereo_config(stereo_tree, eval_max_images=3, eval_split='train')
    shards = [create_eval_dataset(config, process_index=p, process_count=2) for p in range(2)]
    names = [[e['name'] for e in shard] for shard in shards]
    assert names == [['000001', '000002'], ['000003']]
    assert shards[0].num_examples == 3 and shards[1].max_per_process == 2


# ------------------------------------------------------------------------- config checks

@pytest.mark.parametrize('overrides, message', [
    ({'use_rot': True}, r'data\.use_rot must be False for stereo'),
    ({'scale': 4}, r"data\.scale must be 2 for dataset 'stereo' with builder_config 'x2'"),
    ({'lr_crop_size': (30,)}, r'data\.lr_crop_size must be two positive ints'),
    ({'channel_order': 'rbg'}, r"data\.channel_order must be 'rgb' or 'bgr'"),
    ({'degradation': {'noise': {'sigma': 5.0}}}, r'data\.degradation: stereo dataset'),
])
def test_bad_stereo_config_names_the_key(overrides, message):
    c = _stereo_config(('/nowhere', '/nowhere'), **{k: v for k, v in overrides.items()
                                                   if k != 'degradation'})
    if 'degradation' in overrides:
        c.degradation = overrides['degradation']
    with pytest.raises(ValueError, match=message):
        validate_data_config(c)


def test_stereo_keys_are_rejected_for_nafnet_datasets():
    c = default_data_config()
    c.dataset, c.gt_dir = 'paired_folder', '/x'
    for key, value, message in (('use_vflip', True, 'applies to stereo datasets only'),
                                ('scale', 2, "must be 1 for dataset 'paired_folder'")):
        bad = c.copy_and_resolve_references()
        bad[key] = value
        with pytest.raises(ValueError, match=f'data.{key} {message}'):
            validate_data_config(bad)


# ----------------------------------------------------------------------------- stereo_folder

def test_stereo_folder_pairs_scene_and_flat_layouts(tmp_path):
    scenes = stereo_folder_pairs(write_stereo_folder(tmp_path / 'a', num=2))
    assert [(p.name, os.path.basename(p.lq), os.path.basename(p.gt)) for p in scenes] == [
        ('pair_0', 'hr0.png', 'hr1.png'), ('pair_1', 'hr0.png', 'hr1.png')]
    flat = stereo_folder_pairs(write_stereo_folder(tmp_path / 'b', num=2, layout='flat'))
    assert [(p.name, os.path.basename(p.lq), os.path.basename(p.gt)) for p in flat] == [
        ('pair_0', 'pair_0_L.png', 'pair_0_R.png'), ('pair_1', 'pair_1_L.png', 'pair_1_R.png')]
    os.remove(tmp_path / 'b' / 'pair_1_R.png')
    with pytest.raises(BadDataError, match=r'pair_1_L\.png: stereo view without its partner'):
        stereo_folder_pairs(tmp_path / 'b')


def test_stereo_folder_makes_lr_by_matlab_bicubic_of_hr_cropped_to_the_scale(tmp_path):
    views = [textured_image(13, 21, 1), textured_image(13, 21, 2)]  # cropped to 12x20
    for i, view in enumerate(views):
        write_image(tmp_path / 's' / 'a' / f'hr{i}.png', view)
    lq, gt, name = StereoFolderSource(tmp_path / 's', 2).load(0)
    expected_gt = np.concatenate([v[:12, :20] for v in views], -1)
    np.testing.assert_array_equal(gt, expected_gt)
    np.testing.assert_array_equal(lq, imresize_down(expected_gt, 2))
    assert name == 'a' and lq.shape == (6, 10, 6)


def test_gt_crops_are_the_bicubic_consistent_region_under_all_augmentations(tmp_path):
    for i in range(2):
        for v in range(2):
            write_image(tmp_path / 'hr' / f'p{i}' / f'hr{v}.png', textured_image(24, 32, 2 * i + v))
    c = default_data_config()
    c.dataset, c.scale, c.gt_dir, c.use_rot = 'stereo_folder', 2, os.fspath(tmp_path / 'hr'), False
    c.lr_crop_size, c.use_flip_rgb, c.use_vflip = (7, 8), True, True
    for batch in _batches(c, 2):
        for lq, gt in zip(_u8(batch['lq']), _u8(batch['gt'])):
            # Away from the crop's border (the kernel's reach: 2 LR px) resizing the gt crop
            # gives the lq crop exactly: the same window, flips and permutation.
            again = imresize_down(gt.astype(np.uint8), 2).astype(int)
            np.testing.assert_array_equal(again[2:-2, 2:-2], lq[2:-2, 2:-2])


def test_pairs_smaller_than_the_crop_are_mirrored_at_both_scales(tmp_path):
    views = [textured_image(8, 12, 1), textured_image(8, 12, 2)]  # LR 4x6 < crop 6x8
    for i, view in enumerate(views):
        write_image(tmp_path / 'hr' / 'a' / f'hr{i}.png', view)
    c = default_data_config()
    c.dataset, c.scale, c.gt_dir, c.use_rot = 'stereo_folder', 2, os.fspath(tmp_path / 'hr'), False
    c.lr_crop_size, c.use_flip = (6, 8), False
    lq_full, gt_full, _ = StereoFolderSource(tmp_path / 'hr', 2).load(0)
    batch = _batches(c, 1, global_batch_size=1)[0]
    # Bottom/right mirrored, edge pixel repeated: lq by 2 px, gt by 2 * 2 px.
    np.testing.assert_array_equal(_u8(batch['lq'][0]),
                                  np.pad(lq_full, ((0, 2), (0, 2), (0, 0)), mode='symmetric'))
    np.testing.assert_array_equal(_u8(batch['gt'][0]),
                                  np.pad(gt_full, ((0, 4), (0, 4), (0, 0)), mode='symmetric'))


# ------------------------------------------------------------------------------ the demo

def test_bundled_demo_builds_pairs_with_a_horizontal_disparity(tmp_path):
    c = default_data_config()
    c.dataset, c.scale, c.use_rot, c.data_dir = 'stereo_bundled', 2, False, os.fspath(tmp_path)
    evalset = create_eval_dataset(c, process_index=0, process_count=1)
    assert len(evalset) == 4
    for e in evalset:
        gt = _u8(e['gt'])
        d = int(re.search(r'_d(\d+)$', e['name']).group(1))
        assert 2 <= d <= 8 and e['lq'].shape == (48, 96, 6)
        np.testing.assert_array_equal(gt[:, :-d, 3:], gt[:, d:, :3],
                                      err_msg='right view is not the left moved by d px')
        np.testing.assert_array_equal(_u8(e['lq']), imresize_down(gt.astype(np.uint8), 2))
    batch = _batches(c, 1, global_batch_size=2)[0]
    assert batch['lq'].shape == (2, 30, 90, 6) and batch['gt'].shape == (2, 60, 180, 6)


def test_synthetic_pairs_vary_the_disparity():
    photo = textured_image(64, 80, 0)
    pairs = synthetic_stereo_pairs(photo, 7, (16, 32), seed=0)
    assert [d for _, _, d in pairs] == [2, 3, 4, 5, 6, 7, 8]
    for left, right, d in pairs:
        np.testing.assert_array_equal(right[:, :-d], left[:, d:])
