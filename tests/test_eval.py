"""evaluate(): the original's protocols per image, averaged over images; eval.py end to end."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from nafnet_jax.evaluation import evaluate as ev
from nafnet_jax.data import image_io
from nafnet_jax.evaluation import metrics
from nafnet_jax.training.checkpointing import save_model_checkpoint
from tiny_models import tiny_model_and_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def _identity(params, x):
    return x


def _darken(params, x):
    return x * 0.9


def _pairs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i, (h, w) in enumerate(shapes):
        gt = rng.random((h, w, 3)).astype(np.float32)
        lq = np.clip(gt + rng.normal(0, 0.03 * (i + 1), gt.shape), 0, 1).astype(np.float32)
        items.append({"lq": lq, "gt": gt, "name": f"img{i}".encode()})
    return items


def _config(**overrides):
    config = ev.default_eval_config()
    config.update(overrides)
    return config


# --- settings ---------------------------------------------------------------------------------

def test_default_eval_config_is_the_originals_gopro_protocol():
    c = ev.default_eval_config()
    assert (c.protocol, c.ssim, c.crop_border, c.test_y_channel) == ("uint8", "3d", 0, False)
    assert c.tile is None and c.bucket is None and not c.ensemble, "full image, exact shapes, no ensemble"


def test_bad_protocol_is_rejected_by_name():
    with pytest.raises(ValueError, match="eval.protocol='png'"):
        ev.evaluate(_identity, {}, [], _config(protocol="png"))


def test_make_restorer_follows_the_eval_config():
    r = ev.make_restorer(_identity, {}, _config(tile=64, tile_overlap=16, bucket=32, ensemble=True), align=8)
    assert (r.tile, r.overlap, r.bucket, r.ensemble, r.align) == (64, 16, 32, True, 8)


# --- evaluate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_each_image_is_scored_as_metrics_measure_does(protocol):
    items = _pairs([(14, 17), (14, 17), (12, 20)])
    result = ev.evaluate(_darken, {}, items, _config(protocol=protocol))
    assert [r["name"] for r in result["per_image"]] == ["img0", "img1", "img2"]
    for item, record in zip(items, result["per_image"]):
        want = metrics.measure(item["lq"] * 0.9, item["gt"], protocol=protocol, ssim_kind="3d")
        assert record["psnr"] == pytest.approx(want["psnr"], abs=1e-9), record["name"]
        assert record["ssim"] == pytest.approx(want["ssim"], abs=2e-6), record["name"]


def test_scores_are_averaged_over_images_not_pooled():
    items = _pairs([(16, 16), (16, 16)])
    result = ev.evaluate(_identity, {}, items, _config())
    per_image = [metrics.measure(it["lq"], it["gt"])["psnr"] for it in items]
    assert result["count"] == 2
    assert result["psnr"] == pytest.approx(np.mean(per_image), abs=1e-9)
    q = [metrics.prepare(it[k], "uint8")[0].astype(float) for it in items for k in ("lq", "gt")]
    pooled = 20 * np.log10(255 / np.sqrt(np.mean([(q[0] - q[1]) ** 2, (q[2] - q[3]) ** 2])))
    assert abs(result["psnr"] - pooled) > 1e-3, "the mean of per-image PSNRs should differ from pooled MSE"


@pytest.mark.parametrize("kind", metrics.SSIM_KINDS)
def test_the_configured_ssim_kind_is_used(kind):
    items = _pairs([(16, 18)], seed=2)
    result = ev.evaluate(_identity, {}, items, _config(ssim=kind))
    a, b = (metrics.prepare(items[0][k], "uint8")[0] for k in ("lq", "gt"))
    assert result["ssim"] == pytest.approx(metrics.ssim(a, b, kind=kind, peak=255), abs=2e-6)


def test_on_result_sees_every_restored_image():
    items = _pairs([(8, 9), (10, 9)])
    seen = []
    ev.evaluate(_darken, {}, items, _config(), on_result=lambda r: seen.append((r["name"], r["restored"])))
    assert [name for name, _ in seen] == ["img0", "img1"]
    np.testing.assert_allclose(seen[1][1], items[1]["lq"] * 0.9, atol=1e-6)


def test_summarize_of_nothing_is_nan_with_zero_count():
    result = ev.evaluate(_identity, {}, [], _config())
    assert result["count"] == 0 and np.isnan(result["psnr"]) and result["per_image"] == []


def test_several_devices_give_the_same_scores_as_one():
    script = textwrap.dedent("""
        import json, numpy as np, jax
        from nafnet_jax.evaluation import evaluate as ev
        rng = np.random.default_rng(0)
        items = []
        for i, (h, w) in enumerate([(12, 14)] * 5 + [(10, 16)] * 2):   # a short group, then a new shape
            gt = rng.random((h, w, 3)).astype(np.float32)
            items.append({"lq": np.clip(gt + 0.05 * rng.normal(size=gt.shape), 0, 1).astype(np.float32),
                          "gt": gt, "name": f"n{i}"})
        fn = lambda p, x: x * p
        one = ev.evaluate(fn, 0.9, items, ev.default_eval_config())
        four = ev.evaluate(fn, 0.9, items, ev.default_eval_config(), devices=jax.local_devices())
        assert jax.local_device_count() == 4
        print(json.dumps([one["per_image"], four["per_image"]]))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, four = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in four] == [f"n{i}" for i in range(7)]
    for a, b in zip(one, four):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-7)


# --- the model a checkpoint is evaluated with --------------------------------------------------

def test_config_model_may_change_tlc_but_not_the_architecture():
    _, _, saved = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    no_tlc = ml_collections.ConfigDict({"model": dict(saved, tlc_train_size=None)})
    assert ev.resolve_model(no_tlc, saved).tlc_train_size is None
    wider = ml_collections.ConfigDict({"model": dict(saved, width=16)})
    with pytest.raises(ValueError, match="model.width: checkpoint has 8, config has 16"):
        ev.resolve_model(wider, saved)


def test_without_a_config_model_the_checkpoints_is_used():
    _, _, saved = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    assert ev.resolve_model(ml_collections.ConfigDict(), saved).tlc_train_size == (16, 16)


# --- eval.py and run_eval end to end ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model_checkpoint(path, params, config)
    return path, model, params


def _write_folders(root, shapes):
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(shapes):
        gt = rng.integers(40, 216, (h, w, 3)).astype(np.uint8)
        lq = np.clip(gt + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
        for sub, img in (("lq", lq), ("gt", gt)):
            os.makedirs(root / sub, exist_ok=True)
            image_io.write_png(root / sub / f"im{i}.png", img)
    return root / "lq", root / "gt"


def test_eval_script_on_folders_writes_metrics_csv_and_images(tmp_path, tiny_checkpoint):
    ckpt, model, params = tiny_checkpoint
    lq_dir, gt_dir = _write_folders(tmp_path, [(20, 27), (20, 27)])
    (tmp_path / "cfg.py").write_text(textwrap.dedent("""
        import ml_collections
        from nafnet_jax.evaluation.evaluate import default_eval_config
        def get_config():
            return ml_collections.ConfigDict({"eval": default_eval_config()})
    """))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "eval.py"), f"--config={tmp_path / 'cfg.py'}",
         f"--checkpoint={ckpt}", f"--lq_dir={lq_dir}", f"--gt_dir={gt_dir}", f"--output_dir={out}",
         "--save_images", "--noprogress"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert summary["count"] == 2 and [r["name"] for r in rows] == ["im0", "im1"]  # pairs are known by stem
    assert summary["tlc_train_size"] == [16, 16] and summary["eval"]["protocol"] == "uint8"
    assert summary["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-9)
    apply = jax.jit(model.apply)
    for row in rows:  # an independent reference: the model by hand, NumPy float64 metrics
        lq = image_io.read_image(lq_dir / f"{row['name']}.png").rgb
        gt = image_io.read_image(gt_dir / f"{row['name']}.png").rgb
        out_img = np.asarray(apply({"params": params}, lq[None]))[0]
        want = metrics.measure(out_img, gt, protocol="uint8", ssim_kind="3d")
        assert float(row["psnr"]) == pytest.approx(want["psnr"], abs=1e-3), row
        assert float(row["ssim"]) == pytest.approx(want["ssim"], abs=1e-5), row
        saved = image_io.read_image(out / "images" / f"{row['name']}.png")
        np.testing.assert_array_equal(np.round(saved.rgb * 255), metrics.prepare(out_img, "uint8")[0])


def test_run_eval_reads_the_configs_eval_split_through_the_data_pipeline(tmp_path, tiny_checkpoint):
    from nafnet_jax.data import default_data_config
    from nafnet_jax.data.testing import write_paired_folder

    ckpt, _, _ = tiny_checkpoint
    train_lq, train_gt = write_paired_folder(tmp_path / "train", num=2)
    eval_lq, eval_gt = write_paired_folder(tmp_path / "val", num=3, height=12, width=20)
    data = default_data_config()
    data.dataset = "paired_folder"
    data.lq_dir, data.gt_dir, data.eval_lq_dir, data.eval_gt_dir = train_lq, train_gt, eval_lq, eval_gt
    config = ml_collections.ConfigDict({"data": data, "eval": ev.default_eval_config()})
    config.eval.protocol = "float"
    result = ev.run_eval(config, str(ckpt), str(tmp_path / "out"), max_images=2, progress=False)
    assert result["count"] == 2 and len(result["per_image"]) == 2
    assert result["dataset"] == "paired_folder" and result["eval"]["protocol"] == "float"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["count"] == 2
    before = (tmp_path / "out" / "metrics.json").read_bytes()
    with pytest.raises(FileExistsError, match="metrics.json exists .*--overwrite"):  # refused before any work
        ev.run_eval(config, str(ckpt), str(tmp_path / "out"), max_images=1, progress=False)
    assert (tmp_path / "out" / "metrics.json").read_bytes() == before
    assert ev.run_eval(config, str(ckpt), str(tmp_path / "out"), max_images=1, progress=False,
                       overwrite=True)["count"] == 1
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["count"] == 1


def test_two_processes_gather_every_images_record(tmp_path):
    """Each process scores its share; gather_results gives both the whole split, in process order."""
    script = textwrap.dedent("""
        import json, sys, jax, numpy as np
        jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
        from nafnet_jax.evaluation import evaluate as ev
        rng = np.random.default_rng(0)
        items = []
        for i in range(5):
            gt = rng.random((10, 12, 3)).astype(np.float32)
            items.append({"lq": np.clip(gt + 0.05, 0, 1), "gt": gt, "name": f"n{i}"})
        mine = items[jax.process_index()::2]
        local = ev.evaluate(lambda p, x: x, None, mine, ev.default_eval_config())
        merged = ev.gather_results(local)
        print("RESULT" + json.dumps({"local": local["count"], "names": [r["name"] for r in merged["per_image"]],
                                     "psnr": merged["psnr"]}))
    """)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"127.0.0.1:{port}", str(pid)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    results = []
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        results.append(json.loads(out.split("RESULT", 1)[1].splitlines()[0]))
    assert [r["local"] for r in results] == [3, 2]
    for r in results:
        assert r["names"] == ["n0", "n2", "n4", "n1", "n3"], r["names"]
    assert results[0]["psnr"] == results[1]["psnr"]


# --- EMA parameters -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """A checkpoint whose EMA parameters differ from its raw ones (another random draw)."""
    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=None, seed=0)
    _, ema_params, _ = tiny_model_and_params(levels=1, tlc_train_size=None, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "ema"
    save_model_checkpoint(path, params, config, ema_params=ema_params)
    return path, model, params, ema_params


def test_run_eval_use_ema_scores_the_ema_parameters(tmp_path, ema_checkpoint):
    ckpt, model, params, ema_params = ema_checkpoint
    lq_dir, gt_dir = _write_folders(tmp_path, [(16, 20)])
    config = ml_collections.ConfigDict({"eval": ev.default_eval_config()})
    items = list(ev.FolderDataset(str(lq_dir), str(gt_dir)))
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    results = {}
    for use_ema, reference in ((False, params), (True, ema_params)):
        got = ev.run_eval(config, str(ckpt), str(tmp_path / f"out_{use_ema}"), lq_dir=str(lq_dir),
                          gt_dir=str(gt_dir), progress=False, use_ema=use_ema)
        want = ev.evaluate(apply, reference, items, config.eval, align=2)
        assert got["use_ema"] is use_ema
        assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-9), f"use_ema={use_ema}"
        results[use_ema] = got["psnr"]
    assert abs(results[True] - results[False]) > 1e-3, "EMA and raw parameters scored the same"


def test_run_eval_use_ema_without_ema_names_the_checkpoint(tmp_path, tiny_checkpoint):
    from nafnet_jax.training.checkpointing import MissingEntryError

    ckpt, _, _ = tiny_checkpoint
    lq_dir, gt_dir = _write_folders(tmp_path, [(16, 16)])
    config = ml_collections.ConfigDict({"eval": ev.default_eval_config()})
    with pytest.raises(MissingEntryError, match=f"{ckpt}.* no EMA parameters"):
        ev.run_eval(config, str(ckpt), str(tmp_path / "out"), lq_dir=str(lq_dir), gt_dir=str(gt_dir),
                    progress=False, use_ema=True)
    assert not (tmp_path / "out").exists()
