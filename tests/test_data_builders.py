"""Every tfds builder, prepared from a small fake tree in the real on-disk layout, then loaded."""

import dataclasses
import os
import shutil
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import nafnet_jax.data.builders  # noqa: F401  (registers the builders)
from nafnet_jax.data.builders import bundled, examples, paired_folder_config
from nafnet_jax.data.builders.gopro import Gopro
from nafnet_jax.data.builders.streaming import StreamingBuilder
from nafnet_jax.data.images import BadDataError
from nafnet_jax.data.patches import GOPRO_PATCHES, SIDD_PATCHES, patch_starts, patch_windows
from nafnet_jax.data.testing import (coordinate_image, sidd_blocks, textured_image,
                                     write_gopro_tree, write_image, write_mat_v5,
                                     write_paired_folder, write_reds_tree, write_sidd_tree)

tfds.disable_progress_bar()


def _prepare(name, data_dir, manual_dir=None, config=None, file_format='array_record',
             **builder_kwargs):
    kwargs = dict(builder_kwargs, **({'config': config} if config is not None else {}))
    builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format=file_format, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir)))
    return builder


def _examples(builder, split):
    """[(name, lq, gt)] of a split, read by random access (tfds.data_source)."""
    source = builder.as_data_source(split)
    return [(e['name'].decode(), e['lq'], e['gt']) for e in (source[i] for i in range(len(source)))]


def _assert_coordinate_pairs(examples, tags):
    """gt is coordinate_image(tag) and lq = 255 - gt, for the expected tags in order."""
    assert len(examples) == len(tags), [n for n, _, _ in examples]
    for (name, lq, gt), tag in zip(examples, tags):
        np.testing.assert_array_equal(gt, coordinate_image(*gt.shape[:2], tag), err_msg=name)
        np.testing.assert_array_equal(lq, 255 - gt, err_msg=f'{name}: lq is not 255 - gt')


def test_gopro_scene_layout(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual')
    builder = _prepare('gopro', tmp_path / 'data', manual)
    train = _examples(builder, 'train')
    assert [n for n, _, _ in train] == ['GOPR0001_01_00_000001', 'GOPR0001_01_00_000002',
                                        'GOPR0002_02_00_000001', 'GOPR0002_02_00_000002']
    _assert_coordinate_pairs(train, [0, 1, 2, 3])
    _assert_coordinate_pairs(_examples(builder, 'test'), [4, 5])


def test_gopro_flat_layout_loads_with_tfds_load(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual', layout='flat')
    ds = tfds.load('gopro', split='test', data_dir=os.fspath(tmp_path / 'data'),
                   download_and_prepare_kwargs={'download_config': tfds.download.DownloadConfig(
                       manual_dir=manual)})
    examples = [(e['name'].decode(), e['lq'], e['gt']) for e in tfds.as_numpy(ds)]
    assert [n for n, _, _ in examples] == ['GOPR0003_03_00-000001', 'GOPR0003_03_00-000002']
    _assert_coordinate_pairs(examples, [4, 5])


@pytest.mark.parametrize('mat_format', ['v5', 'v7.3'])
def test_sidd_train_pairs_and_validation_blocks(tmp_path, mat_format):
    manual = write_sidd_tree(tmp_path / 'manual', mat_format=mat_format)
    builder = _prepare('sidd', tmp_path / 'data', manual)
    train = _examples(builder, 'train')
    assert [n for n, _, _ in train] == ['0001_SRGB_010', '0001_SRGB_011', '0002_SRGB_010',
                                        '0002_SRGB_011']
    _assert_coordinate_pairs(train, [0, 1, 2, 3])
    validation = _examples(builder, 'validation')
    assert [n for n, _, _ in validation] == [f'ValidationBlocksSrgb_{i}' for i in range(6)]
    blocks = sidd_blocks()  # (2 images, 3 blocks, 8, 8, 3): block (i, j) tagged i * 3 + j
    for (name, lq, gt), expected in zip(validation, blocks.reshape(6, 8, 8, 3)):
        np.testing.assert_array_equal(gt, expected, err_msg=f'{name} ({mat_format})')
        np.testing.assert_array_equal(lq, 255 - expected, err_msg=f'{name} ({mat_format})')


def test_reds_validation_keeps_frames_ending_in_9_and_jpeg_pixels_losslessly(tmp_path):
    manual = write_reds_tree(tmp_path / 'manual', videos=2, frames=20)
    builder = _prepare('reds', tmp_path / 'data', manual)
    assert len(builder.as_data_source('train')) == 40
    validation = _examples(builder, 'validation')
    assert [n for n, _, _ in validation] == ['000_00000009', '000_00000019', '001_00000009',
                                             '001_00000019']
    for name, lq, gt in validation:
        video, frame = name.split('_')
        jpg = os.path.join(manual, 'val', 'val_blur_jpeg', video, frame + '.jpg')
        np.testing.assert_array_equal(lq, np.asarray(Image.open(jpg).convert('RGB')),
                                      err_msg=f'{name}: stored lq differs from the decoded JPEG')


def test_paired_folder_config_builds_train_and_validation(tmp_path):
    lq, gt = write_paired_folder(tmp_path / 'train', num=3)
    eval_lq, eval_gt = write_paired_folder(tmp_path / 'val', num=2)
    config = paired_folder_config(gt, lq, eval_gt, eval_lq)
    builder = _prepare('paired_folder', tmp_path / 'data', config=config)
    train = _examples(builder, 'train')
    assert [n for n, _, _ in train] == ['img_000', 'img_001', 'img_002']
    _assert_coordinate_pairs(train, [0, 1, 2])
    _assert_coordinate_pairs(_examples(builder, 'validation'), [0, 1])


def test_paired_folder_without_lq_dir_stores_clean_images_as_lq(tmp_path):
    _, gt = write_paired_folder(tmp_path / 'train', num=2)
    builder = _prepare('paired_folder', tmp_path / 'data', config=paired_folder_config(gt))
    for name, lq, gt_image in _examples(builder, 'train'):
        np.testing.assert_array_equal(lq, gt_image, err_msg=name)


def test_bundled_has_offline_photographs_with_held_out_validation(tmp_path):
    builder = _prepare('bundled', tmp_path / 'data')
    train, validation = _examples(builder, 'train'), _examples(builder, 'validation')
    assert sorted(n for n, _, _ in train) == sorted(bundled.TRAIN_IMAGES)
    assert sorted(n for n, _, _ in validation) == sorted(bundled.VALIDATION_IMAGES)
    assert not set(bundled.TRAIN_IMAGES) & set(bundled.VALIDATION_IMAGES)
    for name, lq, gt in train + validation:
        assert gt.ndim == 3 and gt.shape[2] == 3 and max(gt.shape[:2]) <= 512, (name, gt.shape)
        assert min(gt.shape[:2]) >= 256, f'{name} {gt.shape} is smaller than a 256 crop'
        np.testing.assert_array_equal(lq, gt, err_msg=name)


def test_build_command_prepares_a_dataset_for_later_runs(tmp_path, capsys):
    from nafnet_jax.data import build
    manual = write_gopro_tree(tmp_path / 'manual')
    build.main(['gopro', '--manual_dir', manual, '--data_dir', os.fspath(tmp_path / 'data')])
    assert "{'train': 4, 'test': 2}" in capsys.readouterr().out
    builder = tfds.builder('gopro', data_dir=os.fspath(tmp_path / 'data'))
    assert builder.is_prepared() and len(builder.as_data_source('test')) == 2


def test_build_command_rejects_a_builder_config_the_dataset_lacks(capsys):
    from nafnet_jax.data import build
    with pytest.raises(SystemExit):
        build.main(['reds', '--builder_config', 'patches512', '--manual_dir', '/nonexistent'])
    assert "--builder_config 'patches512': reds has no builder configs" in capsys.readouterr().err


# ------------------------------------------------------------------------------- bad data


def test_grayscale_frame_is_stored_as_rgb_and_reported_by_name(tmp_path, caplog):
    manual = write_gopro_tree(tmp_path / 'manual')
    scene = os.path.join(manual, 'GOPRO_Large', 'test', 'GOPR0003_03_00')
    gray = coordinate_image(12, 16, 5)[..., 1]
    write_image(os.path.join(scene, 'sharp', '000002.png'), gray)
    write_image(os.path.join(scene, 'blur', '000002.png'), 255 - gray)
    with caplog.at_level('WARNING'):
        builder = _prepare('gopro', tmp_path / 'data', manual)
    name, lq, gt = _examples(builder, 'test')[1]
    np.testing.assert_array_equal(gt, np.repeat(gray[..., None], 3, -1), err_msg=name)
    np.testing.assert_array_equal(lq, 255 - gt, err_msg=name)
    assert '2 file(s) converted: grayscale -> RGB' in caplog.text, caplog.text
    assert 'sharp/000002.png' in caplog.text, caplog.text



@pytest.mark.parametrize('name', ['gopro', 'sidd', 'reds'])
def test_manual_dir_without_the_layout_is_an_error_naming_it(tmp_path, name):
    manual = tmp_path / 'wrong'
    write_image(manual / 'some_image.png', coordinate_image(4, 4))
    with pytest.raises(BadDataError, match=f'manual_dir {manual} does not have the expected '
                                           r'layout.*some_image.png'):
        _prepare(name, tmp_path / 'data', manual)


def test_gopro_scene_without_sharp_folder_is_an_error_naming_it(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual')
    sharp = os.path.join(manual, 'GOPRO_Large', 'train', 'GOPR0002_02_00', 'sharp')
    shutil.rmtree(sharp)
    with pytest.raises(BadDataError, match=f'{sharp}: missing folder'):
        _prepare('gopro', tmp_path / 'data', manual)


def test_gopro_pair_of_different_sizes_is_an_error_naming_both(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual')
    blur = os.path.join(manual, 'GOPRO_Large', 'test', 'GOPR0003_03_00', 'blur', '000002.png')
    write_image(blur, coordinate_image(12, 15))
    with pytest.raises(BadDataError, match=r"sizes differ: .*blur/000002.png is 15x12.*"
                                           r"sharp/000002.png is 16x12"):
        _prepare('gopro', tmp_path / 'data', manual)


def test_gopro_corrupt_image_is_an_error_naming_it(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual')
    sharp = os.path.join(manual, 'GOPRO_Large', 'train', 'GOPR0001_01_00', 'sharp', '000002.png')
    with open(sharp, 'r+b') as f:
        f.truncate(60)
    with pytest.raises(BadDataError, match=f'{sharp}: cannot decode'):
        _prepare('gopro', tmp_path / 'data', manual)


def test_gopro_missing_counterpart_is_an_error_naming_it(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual')
    sharp = os.path.join(manual, 'GOPRO_Large', 'test', 'GOPR0003_03_00', 'sharp', '000001.png')
    os.remove(sharp)
    with pytest.raises(BadDataError, match=r'lq file\(s\) without gt: .*blur/000001.png'):
        _prepare('gopro', tmp_path / 'data', manual)


def test_sidd_noisy_image_without_gt_twin_is_an_error_naming_it(tmp_path):
    manual = write_sidd_tree(tmp_path / 'manual')
    scene = os.path.join(manual, 'SIDD_Medium_Srgb', 'Data', '0002_001_S6_00100_00020_3200_N')
    os.remove(os.path.join(scene, '0002_GT_SRGB_011.PNG'))
    with pytest.raises(BadDataError, match='0002_NOISY_SRGB_011.PNG'):
        _prepare('sidd', tmp_path / 'data', manual)


def test_sidd_missing_validation_mat_is_an_error_naming_it(tmp_path):
    manual = write_sidd_tree(tmp_path / 'manual')
    os.remove(os.path.join(manual, 'ValidationGtBlocksSrgb.mat'))
    with pytest.raises(BadDataError, match='missing ValidationGtBlocksSrgb.mat'):
        _prepare('sidd', tmp_path / 'data', manual)


def test_sidd_mat_of_the_wrong_shape_is_an_error_naming_it(tmp_path):
    manual = write_sidd_tree(tmp_path / 'manual')
    bad = write_mat_v5(os.path.join(manual, 'ValidationGtBlocksSrgb.mat'), 'ValidationGtBlocksSrgb',
                       np.zeros((6, 8, 8, 3), np.uint8))
    with pytest.raises(BadDataError, match=f'{bad}: expected a uint8 array'):
        _prepare('sidd', tmp_path / 'data', manual)


def test_sidd_noisy_and_gt_mat_of_different_shapes_is_an_error(tmp_path):
    manual = write_sidd_tree(tmp_path / 'manual')
    write_mat_v5(os.path.join(manual, 'ValidationGtBlocksSrgb.mat'), 'ValidationGtBlocksSrgb',
                 sidd_blocks(images=1))
    with pytest.raises(BadDataError, match='sizes differ: .*ValidationNoisyBlocksSrgb.mat holds'):
        _prepare('sidd', tmp_path / 'data', manual)


# ------------------------------------------------------------------------- pre-cut patches
# The original's scripts/data_preparation/{gopro,sidd}.py (BasicSR extract_subimages, thresh 0):
# windows every `step` px, plus one flush with the far edge if pixels are left uncovered,
# numbered row by row from 1, named '<frame>_s<index:03d>'.


def test_patch_windows_of_a_gopro_frame_are_the_originals_8():
    # NAFNET.md: rows {0, 208} x columns {0, 256, 512, 768}, s001..s008 row by row.
    expected = [(i * 4 + j + 1, top, left) for i, top in enumerate((0, 208))
                for j, left in enumerate((0, 256, 512, 768))]
    assert patch_windows(720, 1280, GOPRO_PATCHES) == expected


def test_patch_windows_of_a_sidd_image_end_flush_with_its_edges():
    # 3000x5328 (Galaxy S6), step 384: 0..2304 then 2488 = 3000 - 512; 0..4608 then 4816.
    windows = patch_windows(3000, 5328, SIDD_PATCHES)
    assert sorted({top for _, top, _ in windows}) == list(range(0, 2305, 384)) + [2488]
    assert sorted({left for _, _, left in windows}) == list(range(0, 4609, 384)) + [4816]
    assert len(windows) == 8 * 14 and windows[13] == (14, 0, 4816) and windows[14] == (15, 384, 0)
    assert patch_starts(1280, 512, 256) == [0, 256, 512, 768], 'an exact fit adds no window'


_GOPRO_WINDOWS_600x800 = [(top, left) for top in (0, 88) for left in (0, 256, 288)]


def _assert_patches(examples, frames, windows, height=600, width=800):
    """examples are the patches of textured `frames` [(name, tag)] at `windows`, named as the
    original (textured frames: no two windows look alike)."""
    expected = [(f'{frame}_s{i:03d}', tag, top, left) for frame, tag in frames
                for i, (top, left) in enumerate(windows, 1)]
    assert [n for n, _, _ in examples] == [e[0] for e in expected]
    for (name, lq, gt), (_, tag, top, left) in zip(examples, expected):
        window = textured_image(height, width, tag)[top:top + 512, left:left + 512]
        np.testing.assert_array_equal(gt, window, err_msg=f'{name}: not the window at '
                                                          f'({top}, {left}) of frame {tag}')
        np.testing.assert_array_equal(lq, 255 - window, err_msg=f'{name}: lq')


def test_gopro_patches512_stores_the_originals_patches_and_whole_test_frames(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual', frames=1, height=600, width=800,
                              pattern='textured')
    builder = _prepare('gopro/patches512', tmp_path / 'data', manual)
    _assert_patches(_examples(builder, 'train'),
                    [('GOPR0001_01_00_000001', 0), ('GOPR0002_02_00_000001', 1)],
                    _GOPRO_WINDOWS_600x800)
    ((name, lq, gt),) = _examples(builder, 'test')
    np.testing.assert_array_equal(gt, textured_image(600, 800, 2), err_msg='whole test frame')
    np.testing.assert_array_equal(lq, 255 - gt, err_msg=name)


def test_sidd_patches512_stores_the_originals_patches_and_the_validation_blocks(tmp_path):
    manual = write_sidd_tree(tmp_path / 'manual', height=600, width=800, pattern='textured')
    builder = _prepare('sidd/patches512', tmp_path / 'data', manual)
    images = [('0001_SRGB_010', 0), ('0001_SRGB_011', 1), ('0002_SRGB_010', 2),
              ('0002_SRGB_011', 3)]
    _assert_patches(_examples(builder, 'train'), images,
                    [(top, left) for top in (0, 88) for left in (0, 288)])
    validation = _examples(builder, 'validation')
    for (name, lq, gt), expected in zip(validation, sidd_blocks().reshape(6, 8, 8, 3)):
        np.testing.assert_array_equal(gt, expected, err_msg=name)
        np.testing.assert_array_equal(lq, 255 - expected, err_msg=name)


def test_frame_smaller_than_a_patch_is_an_error_naming_it(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual', frames=1, height=300, width=800)
    with pytest.raises(BadDataError, match=r'blur/000001.png.*800x300 frame is smaller than the '
                                           r'512x512 patches'):
        _prepare('gopro/patches512', tmp_path / 'data', manual)


@pytest.fixture
def one_frame_per_shard(monkeypatch):
    """gopro plans with one frame per shard (so a fake tree has several), and a log of the
    frames whose patches were cut (preparation runs in this process: workers=1)."""
    cut = []
    original_plans, original_cut = Gopro._split_plans, examples.raw_patches

    def plans(self, dl_manager):
        return {split: dataclasses.replace(plan, items_per_shard=1)
                for split, plan in original_plans(self, dl_manager).items()}

    def raw_patches(grid, pair, report):
        cut.append(pair.name)
        return original_cut(grid, pair, report)

    monkeypatch.setattr(Gopro, '_split_plans', plans)
    monkeypatch.setattr(examples, 'raw_patches', raw_patches)
    return cut


def test_interrupted_preparation_resumes_after_its_finished_shards(tmp_path,
                                                                   one_frame_per_shard):
    manual = write_gopro_tree(tmp_path / 'manual', frames=1, height=600, width=800,
                              pattern='textured')
    second = os.path.join(manual, 'GOPRO_Large', 'train', 'GOPR0002_02_00', 'sharp', '000001.png')
    os.rename(second, second + '.bak')
    write_image(second, coordinate_image(4, 4))  # wrong size: fails the second shard
    with pytest.raises(BadDataError, match='sizes differ'):
        _prepare('gopro/patches512', tmp_path / 'data', manual, workers=1)
    assert one_frame_per_shard == ['GOPR0001_01_00_000001', 'GOPR0002_02_00_000001']
    os.replace(second + '.bak', second)  # fixed; the frame of the finished shard is unchanged
    builder = _prepare('gopro/patches512', tmp_path / 'data', manual, workers=1)
    assert one_frame_per_shard[2:] == ['GOPR0002_02_00_000001'], 'the finished shard was redone'
    _assert_patches(_examples(builder, 'train'),
                    [('GOPR0001_01_00_000001', 0), ('GOPR0002_02_00_000001', 1)],
                    _GOPRO_WINDOWS_600x800)
    assert not os.path.exists(tmp_path / 'data' / 'gopro' / 'patches512' / '1.0.0.partial')


def test_rerun_refuses_to_resume_when_a_finished_shards_source_changed(tmp_path,
                                                                       one_frame_per_shard):
    manual = write_gopro_tree(tmp_path / 'manual', frames=1, height=600, width=800,
                              pattern='textured')
    scene = os.path.join(manual, 'GOPRO_Large', 'train')
    write_image(os.path.join(scene, 'GOPR0002_02_00', 'sharp', '000001.png'),
                coordinate_image(4, 4))
    with pytest.raises(BadDataError, match='sizes differ'):
        _prepare('gopro/patches512', tmp_path / 'data', manual, workers=1)
    write_image(os.path.join(scene, 'GOPR0001_01_00', 'sharp', '000001.png'),
                coordinate_image(600, 800, 7))  # a frame already in a finished shard
    staging = tmp_path / 'data' / 'gopro' / 'patches512' / '1.0.0.partial'
    with pytest.raises(BadDataError, match=f'{staging}: an interrupted preparation .*'
                                           'GOPR0001_01_00_000001.*delete the folder'):
        _prepare('gopro/patches512', tmp_path / 'data', manual, workers=1)


def test_preparation_refuses_while_another_process_holds_the_lock(tmp_path):
    manual = write_gopro_tree(tmp_path / 'manual', frames=1, height=600, width=800,
                              pattern='textured')
    staging = tmp_path / 'data' / 'gopro' / 'patches512' / '1.0.0.partial'
    os.makedirs(staging)
    (staging / 'LOCK').write_text(f'{socket.gethostname()} {os.getppid()}')  # a live process
    with pytest.raises(BadDataError, match=f'another preparation .*process {os.getppid()}'):
        _prepare('gopro/patches512', tmp_path / 'data', manual, workers=1)


@pytest.mark.slow  # each spawned worker imports TensorFlow: ~30 s on 2 busy cores
def test_worker_processes_write_the_same_dataset_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(StreamingBuilder, 'MIN_ITEMS_FOR_WORKERS', 1)  # workers for 3 frames
    monkeypatch.setattr(StreamingBuilder, 'ITEMS_PER_WORKER', 1)
    manual = write_gopro_tree(tmp_path / 'manual', frames=1, height=600, width=800,
                              pattern='textured')
    one = _prepare('gopro/patches512', tmp_path / 'one', manual, workers=1)
    two = _prepare('gopro/patches512', tmp_path / 'two', manual, workers=2)
    for split in ('train', 'test'):
        a, b = _examples(one, split), _examples(two, split)
        assert [n for n, _, _ in a] == [n for n, _, _ in b]
        for (name, lq_a, gt_a), (_, lq_b, gt_b) in zip(a, b):
            np.testing.assert_array_equal(lq_a, lq_b, err_msg=name)
            np.testing.assert_array_equal(gt_a, gt_b, err_msg=name)
