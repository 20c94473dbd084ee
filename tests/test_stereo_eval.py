"""Stereo SR (NAFSSR) evaluation: the original's metrics, whole-pair inference, eval.py, validation, restore."""

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from nafnet_jax.data import image_io
from nafnet_jax.evaluation import evaluate as ev
from nafnet_jax.evaluation import metrics, stereo, validation
from trainer_helpers import RecordingWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- references ----------------------------------------------------------------------------------

def original_calculate_psnr(img1, img2):
    """basicsr/metrics/psnr_ssim.py `calculate_psnr` (crop_border=0, HWC, RGB) on a 6-channel pair."""
    img1, img2 = img1.astype(np.float64), img2.astype(np.float64)

    def _psnr(a, b):
        mse = np.mean((a - b) ** 2)
        if mse == 0:
            return float("inf")
        max_value = 1. if a.max() <= 1 else 255.
        return 20. * np.log10(max_value / np.sqrt(mse))

    return (_psnr(img1[:, :, :3], img2[:, :, :3]) + _psnr(img1[:, :, 3:], img2[:, :, 3:])) / 2


def tensor2img(x):
    """The original's tensor2img quantisation (float32: clamp to [0, 1], x255, round, uint8)."""
    return (np.clip(np.asarray(x, np.float32), 0, 1) * np.float32(255.0)).round().astype(np.uint8)


def _pair(h, w, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(20, 236, (h, w, 6)).astype(np.uint8)
    return rng.random((h, w, 6)).astype(np.float32)


def _noisy(pair, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(pair.astype(np.int64) + rng.integers(-sigma, sigma + 1, pair.shape), 0, 255).astype(np.uint8)


class RowMixingSR(nn.Module):
    """A stand-in stereo SR model whose every output pixel depends on its whole row of the other view.

    out = bilinear x`up_scale` of the input + gain * (row mean of the other view - that upsampling).
    Padding a row would change the row mean: a padded or tiled inference cannot match it.
    """
    up_scale: int = 2
    img_channel: int = 6

    @property
    def scale(self) -> int:
        return self.up_scale

    @nn.compact
    def __call__(self, x, deterministic=True):
        gain = self.param("gain", nn.initializers.constant(0.5), (6,))
        n, h, w, c = x.shape
        s = self.up_scale
        up = jax.image.resize(x, (n, h * s, w * s, c), "bilinear")
        other = jnp.concatenate([x[..., 3:], x[..., :3]], axis=-1)
        row = jnp.repeat(jnp.mean(other, axis=2, keepdims=True), s, axis=1)
        return up + gain * (row - up)


def _stand_in(scale=2):
    model = RowMixingSR(up_scale=scale)
    return model, {"gain": np.full(6, 0.5, np.float32)}


# --- metrics --------------------------------------------------------------------------------------

def test_stereo_psnr_is_the_originals_calculate_psnr_on_six_channels():
    hr = _pair(12, 20)
    sr = hr.copy()
    sr[..., :3] = _noisy(hr[..., :3], 3, seed=2)
    sr[..., 3:] = _noisy(hr[..., 3:], 9, seed=3)
    assert metrics.stereo_psnr(sr, hr) == pytest.approx(original_calculate_psnr(sr, hr), abs=1e-12)
    assert metrics.stereo_psnr(sr, hr, peak=None) == pytest.approx(original_calculate_psnr(sr, hr), abs=1e-12)


def test_stereo_psnr_known_case_is_the_mean_of_the_views():
    hr = np.full((4, 5, 6), 100, np.uint8)
    sr = hr.copy()
    sr[..., :3] += 1   # left: mse 1 -> 20 log10(255)
    sr[..., 3:] += 2   # right: mse 4 -> 20 log10(255 / 2)
    want = (20 * np.log10(255.0) + 20 * np.log10(127.5)) / 2
    assert metrics.stereo_psnr(sr, hr) == pytest.approx(want, abs=1e-12)
    assert metrics.stereo_psnr(hr, hr) == float("inf")


def test_stereo_ssim_is_skimage_on_the_six_channel_image():
    hr = _pair(16, 24, seed=4)
    sr = _noisy(hr, 20, seed=5)
    direct = structural_similarity(sr, hr, channel_axis=-1, data_range=255)
    per_channel = np.mean([structural_similarity(sr[..., c], hr[..., c], data_range=255) for c in range(6)])
    assert metrics.stereo_ssim(sr, hr) == pytest.approx(direct, abs=1e-15)
    assert metrics.stereo_ssim(sr, hr) == pytest.approx(per_channel, abs=1e-12), "not the mean of 6 channels"
    assert metrics.stereo_ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
    assert 0.2 < metrics.stereo_ssim(sr, hr) < 0.99


def test_measure_stereo_quantises_as_tensor2img_first():
    gt = _pair(10, 14, seed=6, dtype=np.float32)
    out = gt + np.random.default_rng(7).normal(0, 0.04, gt.shape).astype(np.float32)  # overshoots [0, 1]
    got = metrics.measure_stereo(out, gt)
    a, b = tensor2img(out), tensor2img(gt)
    assert got["psnr"] == pytest.approx(original_calculate_psnr(a, b), abs=1e-12)
    assert got["ssim"] == pytest.approx(structural_similarity(a, b, channel_axis=-1, data_range=255), abs=1e-15)


@pytest.mark.parametrize("shape, message", [((8, 8, 3), r"expected \(H, W, 6\)"), ((5, 30, 6), "H, W >= 7")])
def test_stereo_metrics_reject_bad_shapes_by_shape(shape, message):
    img = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=message):
        metrics.stereo_ssim(img, img)
    if shape[-1] != 6:
        with pytest.raises(ValueError, match=message):
            metrics.stereo_psnr(img, img)


# --- geometry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4])
def test_bilinear_upsample_is_torchs_half_pixel_interpolate(scale):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(8).random((5, 7, 6)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], scale_factor=scale,
                                           mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(stereo.bilinear_upsample(x, scale), want, atol=1e-6)
    from nafnet_jax.models import upsample_bilinear  # the model's skip connection: the same rule
    np.testing.assert_allclose(stereo.bilinear_upsample(x, scale), np.asarray(upsample_bilinear(x[None], scale))[0],
                               atol=1e-6)


def test_stereo_transforms_are_involutions_and_hflip_swaps_the_views():
    x = np.random.default_rng(9).random((3, 4, 6))
    for t in range(stereo.ENSEMBLE_SIZE):
        np.testing.assert_array_equal(stereo.stereo_transform(stereo.stereo_transform(x, t), t), x)
    mirrored = stereo.stereo_transform(x, 2)
    np.testing.assert_array_equal(mirrored[..., :3], x[:, ::-1, 3:], err_msg="mirrored right view is the left")
    np.testing.assert_array_equal(mirrored[..., 3:], x[:, ::-1, :3])


# --- whole-pair inference -------------------------------------------------------------------------

def test_restorer_runs_the_whole_pair_unpadded_and_compiles_once_per_shape():
    model, params = _stand_in(scale=2)
    restorer = stereo.StereoRestorer(lambda p, x: model.apply({"params": p}, x), params, scale=2)
    rng = np.random.default_rng(10)
    first, second, other = (rng.random(s).astype(np.float32) for s in ((5, 7, 6), (5, 7, 6), (6, 9, 6)))
    out = restorer(first)
    assert out.shape == (10, 14, 6) and out.dtype == np.float32
    direct = np.asarray(model.apply({"params": params}, first[None]))[0]
    np.testing.assert_allclose(out, np.clip(direct, 0, 1), atol=1e-6,
                               err_msg="the restorer's output is not the model's on the whole, unpadded pair")
    restorer(second)
    assert restorer.trace_count == 1, "a second pair of the same shape recompiled"
    assert restorer(other).shape == (12, 18, 6) and restorer.trace_count == 2


def test_ensemble_maps_every_transform_back_and_averages():
    model, params = _stand_in(scale=2)
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x = np.random.default_rng(11).random((6, 8, 6)).astype(np.float32)
    plain = stereo.StereoRestorer(apply, params, scale=2)(x)
    ens = stereo.StereoRestorer(apply, params, scale=2, ensemble=True)(x)
    # The stand-in commutes with flips and with a mirror that swaps the views: the ensemble must agree.
    np.testing.assert_allclose(ens, plain, atol=1e-6, err_msg="an output was not mapped back (views unswapped?)")

    def tilted(p, x):  # not equivariant: each transform gives a different output
        ramp = jnp.linspace(0.0, 0.3, x.shape[2] * 2)[None, None, :, None]
        return jax.image.resize(x, (x.shape[0], x.shape[1] * 2, x.shape[2] * 2, 6), "bilinear") * 0.5 + ramp
    runs = [stereo.stereo_transform(np.asarray(tilted(None, stereo.stereo_transform(x, t)[None]))[0], t)
            for t in range(4)]
    np.testing.assert_allclose(stereo.StereoRestorer(tilted, None, scale=2, ensemble=True)(x),
                               np.clip(np.mean(runs, axis=0), 0, 1), atol=1e-6)


def test_restorer_rejects_a_single_view():
    model, params = _stand_in()
    restorer = stereo.StereoRestorer(lambda p, x: model.apply({"params": p}, x), params, scale=2)
    with pytest.raises(ValueError, match=r"expected \(H, W, 6\).*\(5, 7, 3\)"):
        restorer(np.zeros((5, 7, 3), np.float32))


def _items(shapes, scale=2, seed=12):
    rng = np.random.default_rng(seed)
    items = []
    for i, (h, w) in enumerate(shapes):
        gt = rng.random((h * scale, w * scale, 6)).astype(np.float32)
        lq = gt[::scale, ::scale]  # a plain decimation of gt
        items.append({"lq": np.ascontiguousarray(lq), "gt": gt, "name": f"scene{i}"})
    return items


def test_evaluate_scores_each_pair_with_the_stereo_metrics():
    model, params = _stand_in()
    items = _items([(8, 10), (8, 10), (7, 12)])
    restorer = stereo.StereoRestorer(lambda p, x: model.apply({"params": p}, x), params, scale=2)
    result = ev.evaluate(None, None, items, ev.default_eval_config(), restorer=restorer,
                         scorer=stereo.score_stereo)
    assert [r["name"] for r in result["per_image"]] == ["scene0", "scene1", "scene2"]
    for item, record in zip(items, result["per_image"]):
        out = np.asarray(model.apply({"params": params}, item["lq"][None]))[0]
        a, b = tensor2img(out), tensor2img(item["gt"])
        assert record["psnr"] == pytest.approx(original_calculate_psnr(a, b), abs=1e-9), record["name"]
        assert record["ssim"] == pytest.approx(structural_similarity(a, b, channel_axis=-1, data_range=255),
                                               abs=1e-12), record["name"]
        assert (record["height"], record["width"]) == item["gt"].shape[:2]


def test_stereo_eval_refuses_padding_tiles_and_other_protocols_by_name():
    for key, value in (("bucket", 32), ("tile", 64), ("protocol", "float"), ("test_y_channel", True)):
        config = ev.default_eval_config()
        config[key] = value
        with pytest.raises(ValueError, match=f"invalid config value eval.{key}={value!r}.*stereo"):
            stereo.check_stereo_eval_config(config)
    stereo.check_stereo_eval_config(ev.default_eval_config())


# --- training validation --------------------------------------------------------------------------


def _validator(items, **eval_overrides):
    from nafnet_jax.training import partitioning
    model, params = _stand_in()
    config = ml_collections.ConfigDict({"eval": ev.default_eval_config(), "train": {"num_val_images": 1}})
    config.eval.update(eval_overrides)
    setup = types.SimpleNamespace(model=model, mesh=partitioning.create_mesh(num_devices=1))
    return validation.Validator(config, setup, dataset=items), model, params


def test_validator_scores_a_stereo_model_with_stereo_metrics_and_a_bilinear_baseline():
    items = _items([(8, 10), (8, 10)], seed=13)
    validator, model, params = _validator(items)
    ema = {"gain": np.full(6, 0.25, np.float32)}
    writer = RecordingWriter()
    got = validator(params, 3, writer, ema_params=ema)
    for suffix, p in (("", params), ("_ema", ema)):
        want = ev.evaluate(None, None, items, ev.default_eval_config(), scorer=stereo.score_stereo,
                           restorer=stereo.StereoRestorer(lambda q, x: model.apply({"params": q}, x), p, scale=2))
        assert got[f"val/psnr{suffix}"] == pytest.approx(want["psnr"], abs=1e-6), suffix
        assert got[f"val/ssim{suffix}"] == pytest.approx(want["ssim"], abs=1e-9), suffix
    from nafnet_jax.data.resize import imresize_up
    baseline = np.mean([metrics.measure_stereo(np.clip(imresize_up(it["lq"].astype(np.float64), 2), 0, 1),
                                               it["gt"])["psnr"] for it in items])
    assert got["val/psnr_input"] == pytest.approx(baseline, abs=1e-9) and got["val/count"] == 2
    picture = writer.images[3]["val/sample_0"]
    assert picture.shape == (1, 16, 60, 3), "left view: upsampled LR | output | GT"
    np.testing.assert_array_equal(picture[0, :, 40:], (np.clip(items[0]["gt"][..., :3], 0, 1) * 255 + 0.5)
                                  .astype(np.uint8))


@pytest.mark.parametrize("override, message", [(dict(bucket=32), "eval.bucket=32 for a stereo SR model"),
                                               (dict(protocol="float"), "eval.protocol='float' for a stereo")])
def test_validator_refuses_settings_a_stereo_model_cannot_honour(override, message):
    with pytest.raises(ValueError, match=message):
        _validator([], **override)


def test_validator_stereo_ensemble_matches_the_restorers():
    items = _items([(6, 8)], seed=14)
    validator, model, params = _validator(items, ensemble=True)
    got = validator.evaluate(params)
    want = ev.evaluate(None, None, items, ev.default_eval_config(), scorer=stereo.score_stereo,
                       restorer=stereo.StereoRestorer(lambda q, x: model.apply({"params": q}, x), params, scale=2,
                                                      ensemble=True))
    assert got["val/psnr"] == pytest.approx(want["psnr"], abs=1e-6)


# --- folders --------------------------------------------------------------------------------------

def _write_stereo_folders(root, scenes, scale=2, seed=15):
    rng = np.random.default_rng(seed)
    for name, (h, w) in scenes.items():
        hr = rng.integers(30, 226, (h * scale, w * scale, 6)).astype(np.uint8)
        lr = hr[::scale, ::scale]
        for sub, views, img in (("lr", stereo.LQ_VIEWS, lr), ("hr", stereo.GT_VIEWS, hr)):
            os.makedirs(root / sub / name, exist_ok=True)
            image_io.write_png(root / sub / name / f"{views[0]}.png", np.ascontiguousarray(img[..., :3]))
            image_io.write_png(root / sub / name / f"{views[1]}.png", np.ascontiguousarray(img[..., 3:]))
    return root / "lr", root / "hr"


def test_stereo_folders_pair_by_scene_and_name_what_is_missing(tmp_path):
    lr, hr = _write_stereo_folders(tmp_path, {"a": (8, 10), "b": (7, 9)})
    data = stereo.StereoFolderDataset(str(lr), str(hr))
    items = list(data)
    assert data.names == ["a", "b"] and items[1]["lq"].shape == (7, 9, 6) and items[1]["gt"].shape == (14, 18, 6)
    assert stereo.looks_like_stereo_folder(str(lr)) and not stereo.looks_like_stereo_folder(str(lr / "a"))
    os.remove(hr / "b" / "hr1.png")
    with pytest.raises(ValueError, match=r"one view only, missing: .*b/hr1"):
        stereo.pair_stereo_folders(str(lr), str(hr))


# --- with the real NAFSSR ------------------------------------------------------------------------

def _tiny_nafssr_config(scale=2):
    return {"name": f"NAFSSR-T-x{scale}", "width": 8, "num_blks": 1}


@pytest.fixture(scope="module")
def nafssr_checkpoint(tmp_path_factory):
    models = pytest.importorskip("nafnet_jax.models")
    if not hasattr(models, "NAFSSR"):
        pytest.skip("nafnet_jax.models.NAFSSR is not there yet")
    from tiny_models import random_params
    from nafnet_jax.training.checkpointing import save_model_checkpoint
    config = _tiny_nafssr_config()
    model = models.build_model(config)
    params = random_params(model, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "nafssr"
    save_model_checkpoint(path, params, config)
    return path, model, params


def test_eval_script_on_stereo_folders(tmp_path, nafssr_checkpoint):
    ckpt, model, params = nafssr_checkpoint
    lr, hr = _write_stereo_folders(tmp_path, {"s0": (8, 12), "s1": (8, 12)})
    (tmp_path / "cfg.py").write_text(textwrap.dedent("""
        import ml_collections
        from nafnet_jax.evaluation.evaluate import default_eval_config
        def get_config():
            return ml_collections.ConfigDict({"eval": default_eval_config()})
    """))
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(REPO, "eval.py"), f"--config={tmp_path / 'cfg.py'}",
               f"--checkpoint={ckpt}", f"--lq_dir={lr}", f"--gt_dir={hr}", f"--output_dir={out}",
               "--save_images", "--noprogress"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert summary["stereo"] is True and summary["scale"] == 2 and summary["count"] == 2
    assert [r["name"] for r in rows] == ["s0", "s1"]
    apply = jax.jit(model.apply)
    for row in rows:  # an independent reference: the model by hand, the original's formulas
        lq = stereo.read_stereo_pair(*(str(lr / row["name"] / f"{v}.png") for v in stereo.LQ_VIEWS))
        gt = stereo.read_stereo_pair(*(str(hr / row["name"] / f"{v}.png") for v in stereo.GT_VIEWS))
        sr = tensor2img(np.asarray(apply({"params": params}, lq[None]))[0])
        assert float(row["psnr"]) == pytest.approx(original_calculate_psnr(sr, tensor2img(gt)), abs=1e-6), row
        assert float(row["ssim"]) == pytest.approx(
            structural_similarity(sr, tensor2img(gt), channel_axis=-1, data_range=255), abs=1e-6), row
        for suffix, view in (("_L", sr[..., :3]), ("_R", sr[..., 3:])):
            saved = image_io.read_image(out / "images" / f"{row['name']}{suffix}.png")
            np.testing.assert_array_equal(np.round(saved.rgb * 255).astype(np.uint8), view)
    config = ml_collections.ConfigDict({"eval": ev.default_eval_config()})
    with pytest.raises(FileExistsError, match="metrics.json exists .*--overwrite"):  # refused before any work
        ev.run_eval(config, str(ckpt), str(out), lq_dir=str(lr), gt_dir=str(hr), save_images=True,
                    progress=False)


def _run_restore(argv):
    from nafnet_jax.tools import restore
    stdout, stderr = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        code = restore.main([str(a) for a in argv])
    finally:
        sys.stdout, sys.stderr = old
    return code, stdout.getvalue(), stderr.getvalue()


def test_restore_writes_both_views_of_a_pair_and_of_folders(tmp_path, nafssr_checkpoint):
    ckpt, model, params = nafssr_checkpoint
    rng = np.random.default_rng(16)
    left, right = (rng.integers(0, 256, (9, 11, 3)).astype(np.uint8) for _ in range(2))
    for folder in ("L", "R"):
        (tmp_path / folder).mkdir()
    image_io.write_png(tmp_path / "L" / "x.png", left)
    image_io.write_png(tmp_path / "R" / "x.png", right)
    image_io.write_png(tmp_path / "L" / "lonely.png", left)
    sr = np.asarray(jax.jit(model.apply)({"params": params}, stereo.join_views(
        image_io.to_unit(left), image_io.to_unit(right))[None]))[0]
    want = image_io.quantize(sr, 8)

    code, out, err = _run_restore(["--left", tmp_path / "L" / "x.png", "--right", tmp_path / "R" / "x.png",
                                   "-o", tmp_path / "one", "--checkpoint", ckpt, "--compare"])
    assert code == 0, err
    for suffix, view in (("_L", want[..., :3]), ("_R", want[..., 3:])):
        got = image_io.read_pixels(tmp_path / "one" / f"x{suffix}.png")
        assert got.shape == (18, 22, 3)
        np.testing.assert_array_equal(got, view, err_msg=suffix)
    compare = image_io.read_pixels(tmp_path / "one" / "x_compare.png")  # upsampled input | output; L above R
    assert compare.shape == (36, 44, 3)
    np.testing.assert_array_equal(compare[18:, 22:], want[..., 3:])
    np.testing.assert_array_equal(compare[:18, :22], image_io.quantize(
        stereo.bilinear_upsample(image_io.to_unit(left), 2), 8))

    code, out, err = _run_restore(["--left_dir", tmp_path / "L", "--right_dir", tmp_path / "R",
                                   "-o", tmp_path / "many", "--checkpoint", ckpt])
    assert code == 1 and "lonely.png: no right view" in err, err  # the unpaired file fails by name ...
    assert sorted(os.listdir(tmp_path / "many")) == ["x_L.png", "x_R.png"]  # ... the pair is still restored
    np.testing.assert_array_equal(image_io.read_pixels(tmp_path / "many" / "x_R.png"), want[..., 3:])

    before = (tmp_path / "one" / "x_L.png").read_bytes()
    code, out, err = _run_restore(["--left", tmp_path / "L" / "x.png", "--right", tmp_path / "R" / "x.png",
                                   "-o", tmp_path / "one", "--checkpoint", ckpt])
    assert code == 1 and "x_L.png exists (pass --overwrite to replace it)" in err, err
    assert (tmp_path / "one" / "x_L.png").read_bytes() == before


def test_restore_refuses_a_single_image_for_a_stereo_model(tmp_path, nafssr_checkpoint):
    ckpt, _, _ = nafssr_checkpoint
    image_io.write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = _run_restore([tmp_path / "a.png", "-o", tmp_path / "out", "--checkpoint", ckpt])
    assert code == 2 and "stereo SR model" in err and "--left/--right" in err, err
    assert not (tmp_path / "out").exists()


def test_restore_refuses_a_pair_for_a_single_image_model(tmp_path):
    from tiny_models import tiny_model_and_params
    from nafnet_jax.training.checkpointing import save_model_checkpoint
    _, params, config = tiny_model_and_params(levels=1, tlc_train_size=None)
    save_model_checkpoint(tmp_path / "ckpt", params, config)
    for side in ("l", "r"):
        image_io.write_png(tmp_path / f"{side}.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = _run_restore(["--left", tmp_path / "l.png", "--right", tmp_path / "r.png", "-o",
                                 tmp_path / "out", "--checkpoint", tmp_path / "ckpt"])
    assert code == 2 and "3-channel single-image model" in err, err
    assert not (tmp_path / "out").exists()


def test_restore_pair_flags_are_checked_before_loading_anything(tmp_path):
    code, _, err = _run_restore(["--left", tmp_path / "l.png", "-o", tmp_path / "o", "--checkpoint", tmp_path])
    assert code == 2 and "--left and --right go together" in err, err
    code, _, err = _run_restore(["--left", "l", "--right", "r", "--tile", "64", "-o", tmp_path / "o",
                                 "--checkpoint", tmp_path])
    assert code == 2 and "--tile/--bucket do not apply to stereo pairs" in err, err


@pytest.mark.slow
def test_several_devices_give_the_same_stereo_scores_as_one():
    """A batch of same-shape pairs split over 4 (forced host) devices, padded with a repeat."""
    script = textwrap.dedent("""
        import json, sys, numpy as np, jax
        sys.path.insert(0, sys.argv[1])
        from test_stereo_eval import _items, _stand_in
        from nafnet_jax.evaluation import evaluate as ev, stereo
        model, params = _stand_in()
        apply = lambda p, x: model.apply({"params": p}, x)
        items = _items([(6, 8)] * 5 + [(7, 6)] * 2)   # a short group, then a new shape
        runs = [ev.evaluate(None, None, items, ev.default_eval_config(), scorer=stereo.score_stereo,
                            restorer=stereo.StereoRestorer(apply, params, scale=2, devices=devices))
                for devices in (None, jax.local_devices())]
        assert jax.local_device_count() == 4
        print(json.dumps([r["per_image"] for r in runs]))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script, os.path.dirname(os.path.abspath(__file__))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, four = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in four] == [f"scene{i}" for i in range(7)]
    for a, b in zip(one, four):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-9)


def test_restore_model_name_may_be_a_published_nafssr_and_must_match(tmp_path, nafssr_checkpoint):
    ckpt, _, _ = nafssr_checkpoint
    for side in ("l", "r"):
        image_io.write_png(tmp_path / f"{side}.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = _run_restore(["--left", tmp_path / "l.png", "--right", tmp_path / "r.png", "-o", tmp_path / "o",
                                 "--checkpoint", ckpt, "--model", "NAFSSR-T-x4"])
    assert code == 2 and "--model NAFSSR-T-x4 does not match" in err and "up_scale" in err, err


class _ChannelSensitiveSR:
    """A stand-in restorer whose output depends on which channel is which (x2: upsample, brighten channel 0)."""
    scale = 2

    def __call__(self, pair):
        out = stereo.bilinear_upsample(pair, 2)
        out[..., 0] += 0.2
        return np.clip(out, 0, 1)


def test_bgr_channel_order_is_what_the_model_sees_and_files_stay_rgb(tmp_path):
    from nafnet_jax.tools import restore
    rng = np.random.default_rng(17)
    left, right = (rng.integers(0, 200, (5, 6, 3)).astype(np.uint8) for _ in range(2))
    for name, img in (("l", left), ("r", right)):
        image_io.write_png(tmp_path / f"{name}.png", img)
    dsts = (tmp_path / "x_L.png", tmp_path / "x_R.png")
    restore.restore_pair(_ChannelSensitiveSR(), tmp_path / "l.png", tmp_path / "r.png", dsts, None, False, "bgr")
    rgb = stereo.join_views(image_io.to_unit(left), image_io.to_unit(right))
    bgr_out = _ChannelSensitiveSR()(stereo.to_channel_order(rgb, "bgr"))  # channel 0 is blue there
    want = image_io.quantize(stereo.to_channel_order(bgr_out, "bgr"), 8)
    np.testing.assert_array_equal(image_io.read_pixels(dsts[0]), want[..., :3])
    np.testing.assert_array_equal(image_io.read_pixels(dsts[1]), want[..., 3:])
    assert image_io.read_pixels(dsts[0])[..., 2].astype(int).mean() > left[..., 2].mean() + 40, "blue not brightened"

    lr, hr = _write_stereo_folders(tmp_path / "sets", {"a": (8, 10)})
    rgb_item, bgr_item = (next(iter(stereo.StereoFolderDataset(str(lr), str(hr), channel_order=order)))
                          for order in ("rgb", "bgr"))
    np.testing.assert_array_equal(bgr_item["lq"], rgb_item["lq"][..., [2, 1, 0, 5, 4, 3]])
    stereo.save_views(str(tmp_path), "a", bgr_item["gt"], channel_order="bgr")
    np.testing.assert_array_equal(image_io.read_pixels(tmp_path / "a_L.png"), tensor2img(rgb_item["gt"][..., :3]))
