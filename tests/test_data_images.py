"""Image reading, conversions and the bad-data errors of nafnet_jax.data.images."""

import os

import numpy as np
import pytest
from PIL import Image

from nafnet_jax.data import images
from nafnet_jax.data.images import BadDataError, DataReport
from nafnet_jax.data.testing import coordinate_image, write_image, write_paired_folder


def _png16(path, array_u16):
    """A 16-bit PNG (Pillow cannot write 16-bit colour, TensorFlow can)."""
    import tensorflow as tf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(tf.io.encode_png(array_u16).numpy())
    return path


def test_rgb_png_reads_back_exactly(tmp_path):
    rgb = coordinate_image(5, 7, tag=9)
    path = write_image(tmp_path / 'a.png', rgb)
    np.testing.assert_array_equal(images.read_rgb8(path), rgb)


def test_grayscale_is_repeated_to_rgb_and_reported(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    path = write_image(tmp_path / 'g.png', gray)
    report = DataReport()
    out = images.read_rgb8(path, report)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
    assert report.conversions['grayscale -> RGB'] == [path], report.summary()


def test_16bit_colour_is_kept_for_the_folder_source_and_rounded_for_8bit_storage(tmp_path):
    rgb16 = (np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3001 + 7)
    path = _png16(str(tmp_path / 'c16.png'), rgb16)
    np.testing.assert_array_equal(images.read_pair_pixels(path), rgb16)
    report = DataReport()
    out = images.read_rgb8(path, report)
    np.testing.assert_array_equal(out, np.round(rgb16 / 65535 * 255).astype(np.uint8))
    assert path in report.conversions[images.SIXTEEN_TO_EIGHT], report.summary()


def test_16bit_gray_is_replicated_and_kept(tmp_path):
    gray16 = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 10000 + 255)
    path = _png16(str(tmp_path / 'g16.png'), gray16[..., None])
    np.testing.assert_array_equal(images.read_pair_pixels(path), np.repeat(gray16[..., None], 3, -1))


def test_8bit_file_in_a_16bit_folder_gives_the_same_floats(tmp_path):
    from nafnet_jax.data.image_io import to_unit
    rgb = coordinate_image(5, 7, tag=200)
    path = write_image(tmp_path / 'a.png', rgb)
    as16 = images.read_pair_pixels(path, np.uint16)
    assert as16.dtype == np.uint16
    np.testing.assert_array_equal(to_unit(as16), to_unit(rgb))


def test_opaque_rgba_drops_alpha(tmp_path):
    rgb = coordinate_image(4, 4)
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 255, np.uint8)], -1)
    path = write_image(tmp_path / 'o.png', rgba)
    report = DataReport()
    np.testing.assert_array_equal(images.read_rgb8(path, report), rgb)
    assert report.conversions['opaque alpha dropped'] == [path]


def test_transparent_rgba_is_an_error_naming_the_file(tmp_path):
    rgba = np.full((4, 4, 4), 200, np.uint8)
    rgba[0, 0, 3] = 10
    path = write_image(tmp_path / 'transparent.png', rgba)
    with pytest.raises(BadDataError, match='transparent.png.*transparent pixels'):
        images.read_rgb8(path)


def test_palette_image_expands_to_rgb(tmp_path):
    rgb = coordinate_image(4, 6, tag=3)
    pal = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path = str(tmp_path / 'p.png')
    pal.save(path)
    np.testing.assert_array_equal(images.read_rgb8(path), np.asarray(pal.convert('RGB')))


def test_cmyk_is_converted_to_rgb_and_reported(tmp_path):
    path = str(tmp_path / 'cmyk.jpg')
    Image.new('CMYK', (4, 4), (0, 255, 255, 0)).save(path)
    report = DataReport()
    out = images.read_rgb8(path, report)
    assert out.shape == (4, 4, 3) and out[0, 0, 0] > 200 and out[0, 0, 1] < 60, out[0, 0]
    assert report.conversions['CMYK -> RGB'] == [path], report.summary()


def test_not_an_image_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / 'junk.png'
    path.write_bytes(b'this is not a png')
    with pytest.raises(BadDataError, match='junk.png: cannot decode'):
        images.read_rgb8(path)
    with pytest.raises(BadDataError, match='junk.png: not a readable image'):
        images.inspect_image(path)


def test_truncated_png_has_a_good_header_but_fails_to_decode(tmp_path):
    full = write_image(tmp_path / 'full.png', coordinate_image(64, 64))
    data = open(full, 'rb').read()
    path = tmp_path / 'truncated.png'
    path.write_bytes(data[:len(data) // 2])
    assert images.inspect_image(path).width == 64  # the header alone looks fine
    with pytest.raises(BadDataError, match='truncated.png: cannot decode'):
        images.read_rgb8(path)


def test_png_bytes_keep_plain_rgb_png_and_encode_the_rest_losslessly(tmp_path):
    rgb = coordinate_image(6, 5)
    png = write_image(tmp_path / 'a.png', rgb)
    jpg = write_image(tmp_path / 'a.jpg', rgb, quality=50)
    kept, hw = images.png_bytes_rgb8(png)
    assert kept == open(png, 'rb').read() and hw == (6, 5)
    encoded, _ = images.png_bytes_rgb8(jpg)
    assert encoded[:8] == b'\x89PNG\r\n\x1a\n', 'JPEG pixels must be stored as PNG'
    np.testing.assert_array_equal(images.decode_rgb8(encoded, 'x'), images.read_rgb8(jpg))


def test_pair_folders_match_by_name_ignoring_extension(tmp_path):
    rgb = coordinate_image(4, 4)
    write_image(tmp_path / 'lq' / 'a.jpg', rgb)
    write_image(tmp_path / 'lq' / 'sub' / 'b.png', rgb)
    write_image(tmp_path / 'gt' / 'a.png', rgb)
    write_image(tmp_path / 'gt' / 'sub' / 'b.png', rgb)
    pairs = images.pair_folders(tmp_path / 'lq', tmp_path / 'gt')
    assert [(p.name, os.path.basename(p.lq)) for p in pairs] == [('a', 'a.jpg'), ('sub/b', 'b.png')]


def test_missing_counterparts_are_errors_naming_the_files(tmp_path):
    lq_dir, gt_dir = write_paired_folder(tmp_path, num=3)
    os.remove(os.path.join(gt_dir, 'img_001.png'))
    write_image(os.path.join(gt_dir, 'extra.png'), coordinate_image(4, 4))
    with pytest.raises(BadDataError) as err:
        images.pair_folders(lq_dir, gt_dir)
    msg = str(err.value)
    assert 'lq file(s) without gt' in msg and 'img_001.png' in msg, msg
    assert 'gt file(s) without lq' in msg and 'extra.png' in msg, msg


def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BadDataError, match='empty: no image files'):
        images.list_images(tmp_path / 'empty')


def test_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(BadDataError, match='nowhere: not a directory'):
        images.list_images(tmp_path / 'nowhere')


def test_non_image_files_are_ignored_and_reported(tmp_path):
    write_image(tmp_path / 'a.png', coordinate_image(4, 4))
    (tmp_path / 'meta_info.txt').write_text('x')
    report = DataReport()
    assert list(images.list_images(tmp_path, report)) == ['a']
    assert len(report.ignored) == 1 and 'meta_info.txt' in report.ignored[0]
    assert 'meta_info.txt' in report.summary()


def test_two_files_with_one_name_are_an_error(tmp_path):
    write_image(tmp_path / 'a.png', coordinate_image(4, 4))
    write_image(tmp_path / 'a.jpg', coordinate_image(4, 4))
    with pytest.raises(BadDataError, match="share the name 'a'"):
        images.list_images(tmp_path)


def test_header_check_finds_size_mismatch_naming_both_files(tmp_path):
    write_image(tmp_path / 'lq' / 'x.png', coordinate_image(4, 6))
    write_image(tmp_path / 'gt' / 'x.png', coordinate_image(4, 5))
    pairs = images.pair_folders(tmp_path / 'lq', tmp_path / 'gt')
    with pytest.raises(BadDataError, match=r"'x'.*lq/x.png is 6x4.*gt/x.png is 5x4"):
        images.check_pair_headers(pairs)
