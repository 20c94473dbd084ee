"""The image files layer and the nafnet-restore CLI, end to end on real files."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from nafnet_jax.data import image_io
from nafnet_jax.tools import restore
from nafnet_jax.training.checkpointing import save_model_checkpoint
from tiny_models import tiny_model_and_params


def _rng_image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.int64).astype(dtype)


def _smooth_rgb8(h, w, seed=0):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / 5 + seed), np.cos(xx / 7), np.sin((yy + xx) / 9)], -1)
    noise = np.random.default_rng(seed).normal(0, 0.1, base.shape)
    return np.round(np.clip(0.5 + 0.35 * base + noise, 0, 1) * 255).astype(np.uint8)


def _read_raw(path):
    """Pixels as stored, decoded by TensorFlow (Pillow cannot read 16-bit RGB PNGs)."""
    data = open(path, "rb").read()
    return image_io._decode_png(data), data[24]


# --- image_io --------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_keeps_depth_and_channels(tmp_path, channels, dtype):
    pixels = _rng_image((5, 7, channels), dtype)
    image_io.write_png(tmp_path / "x.png", pixels)
    back, depth = _read_raw(tmp_path / "x.png")
    assert depth == np.iinfo(dtype).bits and back.dtype == dtype
    np.testing.assert_array_equal(back, pixels)


def test_read_16bit_rgb_png_keeps_16bit_values(tmp_path):
    pixels = _rng_image((4, 6, 3), np.uint16, seed=1)
    image_io.write_png(tmp_path / "x.png", pixels)
    pic = image_io.read_image(tmp_path / "x.png")
    assert pic.bit_depth == 16 and not pic.grayscale and pic.alpha is None
    np.testing.assert_allclose(pic.rgb, pixels / 65535.0, atol=1e-7)


def test_read_grayscale_with_alpha_replicates_gray_and_keeps_alpha(tmp_path):
    pixels = _rng_image((4, 6, 2), np.uint8, seed=2)
    image_io.write_png(tmp_path / "x.png", pixels)
    pic = image_io.read_image(tmp_path / "x.png")
    assert pic.grayscale and pic.bit_depth == 8 and pic.rgb.shape == (4, 6, 3)
    np.testing.assert_allclose(pic.rgb, np.repeat(pixels[..., :1], 3, -1) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(pic.alpha, pixels[..., 1])


def test_read_16bit_rgb_tiff(tmp_path):
    pixels = _rng_image((4, 6, 3), np.uint16, seed=3)
    tifffile.imwrite(tmp_path / "x.tif", pixels, photometric="rgb")
    pic = image_io.read_image(tmp_path / "x.tif")
    assert pic.bit_depth == 16
    np.testing.assert_allclose(pic.rgb, pixels / 65535.0, atol=1e-7)


def test_read_jpeg_through_pillow(tmp_path):
    Image.fromarray(_smooth_rgb8(16, 16)).save(tmp_path / "x.jpg", quality=95)
    pic = image_io.read_image(tmp_path / "x.jpg")
    assert pic.bit_depth == 8 and pic.rgb.shape == (16, 16, 3) and not pic.grayscale


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"hello, not an image"])
def test_unreadable_file_error_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(image_io.ImageReadError, match="broken.png"):
        image_io.read_image(path)


def test_quantize_clips_and_rounds_to_the_depth():
    got = image_io.quantize(np.array([-0.1, 0.0, 0.5, 1.2]), 16)
    np.testing.assert_array_equal(got, [0, 0, 32768, 65535])
    assert got.dtype == np.uint16


def test_gray_output_is_the_mean_of_the_restored_channels():
    rgb = np.array([[[0.2, 0.4, 0.6]]], np.float32)
    np.testing.assert_array_equal(image_io.picture_to_array(rgb, 8, grayscale=True), [[[102]]])


def test_write_refuses_to_replace_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        image_io.write_atomic(target, b"new")
    assert target.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["x.png"], os.listdir(tmp_path)


def test_write_with_overwrite_replaces(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    image_io.write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.png"]


# --- the CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model_checkpoint(path, params, config)
    return path


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, checkpoint):
    """One CLI run over a folder of assorted images (all 37x45: one compilation in exact mode)."""
    src = tmp_path_factory.mktemp("inputs")
    out = tmp_path_factory.mktemp("outputs")
    rgb8 = _smooth_rgb8(37, 45)
    gray8 = rgb8[..., 1]
    alpha = _rng_image((37, 45), np.uint8, seed=9)
    image_io.write_png(src / "rgb8.png", rgb8)
    image_io.write_png(src / "rgb16.png", rgb8.astype(np.uint16) * 257)
    image_io.write_png(src / "gray8.png", gray8[..., None])
    image_io.write_png(src / "gray_as_rgb.png", np.repeat(gray8[..., None], 3, -1))
    image_io.write_png(src / "rgba8.png", np.concatenate([rgb8, alpha[..., None]], -1))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x13" * 64)
    (src / "notes.txt").write_text("not an image")
    argv = [str(src), "-o", str(out), "--checkpoint", str(checkpoint), "--compare"]
    stdout, stderr = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        code = restore.main(argv)
    finally:
        sys.stdout, sys.stderr = old
    return dict(src=src, out=out, code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue(), rgb8=rgb8,
                alpha=alpha, argv=argv)


def test_cli_reports_unreadable_files_by_name_and_exits_non_zero(folder_run):
    assert folder_run["code"] == 1
    for name in ("broken.png", "notes.txt"):
        assert f"FAILED {folder_run['src'] / name}" in folder_run["stderr"], folder_run["stderr"]
    assert "restored 5 image(s), 2 failed" in folder_run["stderr"]


def test_cli_restores_the_rest_of_the_folder_at_input_size(folder_run):
    for stem in ("rgb8", "rgb16", "gray8", "gray_as_rgb", "rgba8"):
        pixels, _ = _read_raw(folder_run["out"] / f"{stem}.png")
        assert pixels.shape[:2] == (37, 45), f"{stem}: {pixels.shape}"
    assert not (folder_run["out"] / "broken.png").exists()


def test_cli_changes_the_image(folder_run):
    out, _ = _read_raw(folder_run["out"] / "rgb8.png")
    assert np.abs(out.astype(int) - folder_run["rgb8"]).mean() > 1, "the model output equals its input"


def test_cli_keeps_16_bit_depth(folder_run):
    out16, depth = _read_raw(folder_run["out"] / "rgb16.png")
    out8, _ = _read_raw(folder_run["out"] / "rgb8.png")
    assert depth == 16 and out16.dtype == np.uint16
    assert np.any(out16 % 257 != 0), "16-bit output carries only 8 bits of precision"
    np.testing.assert_allclose(out16 / 65535.0, out8 / 255.0, atol=1.01 / 255,
                               err_msg="16-bit and 8-bit copies of one image restore differently")


def test_cli_keeps_grayscale_as_grayscale(folder_run):
    gray, depth = _read_raw(folder_run["out"] / "gray8.png")
    as_rgb, _ = _read_raw(folder_run["out"] / "gray_as_rgb.png")
    assert depth == 8 and gray.shape[-1] == 1
    unclipped = np.all((as_rgb > 0) & (as_rgb < 255), axis=-1)  # the gray path averages before clipping
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(gray[..., 0][unclipped], as_rgb.mean(-1)[unclipped], atol=1.0,
                               err_msg="gray output is not the mean of the restored replicated channels")


def test_cli_keeps_alpha_unchanged(folder_run):
    rgba, _ = _read_raw(folder_run["out"] / "rgba8.png")
    rgb, _ = _read_raw(folder_run["out"] / "rgb8.png")
    assert rgba.shape[-1] == 4
    np.testing.assert_array_equal(rgba[..., 3], folder_run["alpha"])
    np.testing.assert_array_equal(rgba[..., :3], rgb, err_msg="alpha changed the restored colours")


def test_cli_compare_picture_is_input_beside_output(folder_run):
    pic, _ = _read_raw(folder_run["out"] / "rgb8_compare.png")
    out, _ = _read_raw(folder_run["out"] / "rgb8.png")
    assert pic.shape == (37, 90, 3)
    np.testing.assert_array_equal(pic[:, :45], folder_run["rgb8"])
    np.testing.assert_array_equal(pic[:, 45:], out)


def test_cli_refuses_to_overwrite_existing_outputs(folder_run, capsys):
    before = {p.name: p.read_bytes() for p in folder_run["out"].iterdir()}
    code = restore.main(folder_run["argv"])
    err = capsys.readouterr().err
    assert code == 1 and "exists (pass --overwrite to replace it)" in err
    after = {p.name: p.read_bytes() for p in folder_run["out"].iterdir()}
    assert after == before, "an existing output was modified"


def test_cli_overwrite_replaces_an_existing_output(tmp_path, checkpoint):
    image_io.write_png(tmp_path / "a.png", _smooth_rgb8(20, 20))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"stale")
    code = restore.main([str(tmp_path / "a.png"), "-o", str(out), "--checkpoint", str(checkpoint),
                         "--overwrite"])
    assert code == 0
    assert _read_raw(out / "a.png")[0].shape == (20, 20, 3)
    assert sorted(os.listdir(out)) == ["a.png"], "temporary files left behind"


def test_cli_tiled_output_matches_whole_image_output(tmp_path, checkpoint):
    rgb8 = _smooth_rgb8(50, 70, seed=4)  # neither dimension a multiple of 16
    image_io.write_png(tmp_path / "big.png", rgb8)
    common = [str(tmp_path / "big.png"), "--checkpoint", str(checkpoint), "--bucket", "0"]
    assert restore.main(common + ["-o", str(tmp_path / "full")]) == 0
    assert restore.main(common + ["-o", str(tmp_path / "tiled"), "--tile", "32", "--overlap", "12"]) == 0
    full, _ = _read_raw(tmp_path / "full" / "big.png")
    tiled, _ = _read_raw(tmp_path / "tiled" / "big.png")
    diff = np.abs(full.astype(int) - tiled.astype(int))
    assert diff.mean() < 0.1 and diff.max() <= 3, f"tiled vs whole: mean {diff.mean():.3f}, max {diff.max()}"


def test_cli_rejects_a_model_name_that_disagrees_with_the_checkpoint(tmp_path, checkpoint, capsys):
    image_io.write_png(tmp_path / "a.png", _smooth_rgb8(8, 8))
    code = restore.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                         "--model", "NAFNet-GoPro-width32"])
    err = capsys.readouterr().err
    assert code == 2 and "does not match checkpoint" in err and "width" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists(), "a refused run created its output folder"


def test_model_name_agrees_with_a_config_of_the_same_architecture():
    assert restore.architecture_mismatch("NAFNet-SIDD-width32", {"name": "NAFNet-SIDD-width32",
                                                                 "dtype": "bfloat16"}) == []
    differences = restore.architecture_mismatch("NAFNet-GoPro-width32",
                                                {"name": "NAFNet-GoPro-width32", "tlc_train_size": None})
    assert len(differences) == 1 and differences[0].startswith("tlc_train_size"), differences


def _restore_model(checkpoint):
    from nafnet_jax.evaluation import inference
    from nafnet_jax.training.checkpointing import load_model_checkpoint
    from nafnet_jax.models import build_model
    params, config = load_model_checkpoint(checkpoint)
    model = build_model(config)
    return inference.model_apply_fn(model), params, 2 ** len(model.enc_blk_nums)


def test_default_mode_is_exact_mode_at_the_borders(tmp_path, checkpoint):
    """The default must stay within 1/255 of exact mode everywhere, the last rows/columns included."""
    from nafnet_jax.evaluation import inference
    rgb8 = _smooth_rgb8(37, 45, seed=3)  # neither side a multiple of 16 or 64
    image_io.write_png(tmp_path / "a.png", rgb8)
    assert restore.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "default"), "--checkpoint",
                         str(checkpoint)]) == 0
    apply_fn, params, align = _restore_model(checkpoint)
    picture = image_io.read_image(tmp_path / "a.png")
    exact = image_io.quantize(inference.Restorer(apply_fn, params, bucket=None, align=align)(picture.rgb), 8)
    bucketed = image_io.quantize(inference.Restorer(apply_fn, params, bucket=64, align=align)(picture.rgb), 8)
    default, _ = _read_raw(tmp_path / "default" / "a.png")
    diff = np.abs(default.astype(int) - exact.astype(int))
    assert diff.max() <= 1, (f"default vs exact: max {diff.max()}/255, last row max {diff[-1].max()}, "
                             f"last column max {diff[:, -1].max()}")
    # The check has teeth: the opt-in bucket mode does move border pixels of this model.
    assert np.abs(bucketed.astype(int) - exact.astype(int)).max() > 1


def test_written_images_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        image_io.write_png(tmp_path / "a.png", _smooth_rgb8(4, 4))
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "a.png").st_mode & 0o777) == oct(0o640)


def test_an_empty_file_is_reported_as_empty(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(image_io.ImageReadError, match=r"e\.png: empty file"):
        image_io.read_image(tmp_path / "e.png")


def test_cli_output_folder_that_cannot_be_created_is_one_line_exit_2(tmp_path, checkpoint, capsys):
    image_io.write_png(tmp_path / "a.png", _smooth_rgb8(8, 8))
    (tmp_path / "file").write_text("x")
    code = restore.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "file" / "sub"), "--checkpoint",
                         str(checkpoint)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "file/sub" in err, err


def test_module_entry_point_prints_usage():
    proc = subprocess.run([sys.executable, "-m", "nafnet_jax.tools.restore", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout and "--overwrite" in proc.stdout


def test_cli_use_ema_restores_with_the_ema_parameters(tmp_path):
    """16-bit output, so a difference between raw and EMA weights cannot hide in the rounding."""
    from nafnet_jax.evaluation import inference
    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=None, seed=0)
    _, ema_params, _ = tiny_model_and_params(levels=1, tlc_train_size=None, seed=1)
    save_model_checkpoint(tmp_path / "ckpt", params, config, ema_params=ema_params)
    image_io.write_png(tmp_path / "a.png", _smooth_rgb8(16, 20).astype(np.uint16) * 257)
    picture = image_io.read_image(tmp_path / "a.png")
    outputs = {}
    for use_ema, reference in ((False, params), (True, ema_params)):
        out = tmp_path / f"out_{use_ema}"
        assert restore.main([str(tmp_path / "a.png"), "-o", str(out), "--checkpoint", str(tmp_path / "ckpt")]
                            + (["--use_ema"] if use_ema else [])) == 0
        want = image_io.quantize(inference.Restorer(inference.model_apply_fn(model), reference, align=2)(
            picture.rgb), 16)
        outputs[use_ema], _ = _read_raw(out / "a.png")
        np.testing.assert_array_equal(outputs[use_ema], want, err_msg=f"use_ema={use_ema}")
    assert np.any(outputs[True] != outputs[False]), "EMA and raw parameters gave the same image"


def test_cli_use_ema_without_ema_is_one_line_naming_the_checkpoint(tmp_path, checkpoint, capsys):
    image_io.write_png(tmp_path / "a.png", _smooth_rgb8(8, 8))
    code = restore.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                         "--use_ema"])
    err = capsys.readouterr().err
    assert code == 2 and str(checkpoint) in err and "no EMA parameters" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists(), "a refused run created its output folder"
