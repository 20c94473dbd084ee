"""Validation on the training mesh: the same scores as one-device evaluation, every image once."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from nafnet_jax.evaluation import validation
from trainer_helpers import RecordingWriter


def _items(shapes, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i, (h, w) in enumerate(shapes):
        gt = rng.random((h, w, 3)).astype(np.float32)
        items.append({"lq": np.clip(gt + 0.05 * rng.normal(size=gt.shape), 0, 1).astype(np.float32),
                      "gt": gt, "name": f"n{i}"})
    return items


def _align4(shape):
    return (-(-shape[0] // 4) * 4, -(-shape[1] // 4) * 4)


def test_choose_shape_is_the_first_process_with_images():
    assert validation.choose_shape(np.array([[0, 0, 0], [1, 8, 12], [1, 4, 4]])) == (8, 12)
    assert validation.choose_shape(np.array([[1, 4, 4], [1, 8, 12]])) == (4, 4)
    assert validation.choose_shape(np.zeros((3, 3), int)) is None


def test_one_process_batches_consecutive_images_of_one_padded_shape():
    items = _items([(12, 14), (10, 16), (12, 16), (12, 16), (9, 9), (12, 16)])
    rounds = list(validation.schedule(items, 3, _align4, validation.local_agree))
    assert [(shape, [it["name"] for it in group]) for shape, group in rounds] == [
        ((12, 16), ["n0", "n1", "n2"]), ((12, 16), ["n3"]), ((12, 12), ["n4"]), ((12, 16), ["n5"])]


def test_processes_run_the_same_batches_and_use_every_image_once():
    """Two simulated processes with different shares and shapes, agreeing through a fake all-gather."""
    shares = [_items([(8, 8), (8, 8), (16, 8), (8, 8), (16, 16)], seed=1),
              _items([(16, 8), (16, 8), (16, 8), (8, 8)], seed=2)]
    for p, share in enumerate(shares):
        for item in share:
            item["name"] = f"p{p}/{item['name']}"
    proposals = [None, None]
    barrier = threading.Barrier(2)
    results = [None, None]

    def run(p):
        def agree(candidate):
            proposals[p] = candidate
            barrier.wait()
            shape = validation.choose_shape(np.array(proposals))
            barrier.wait()  # nobody overwrites a proposal before both have read them
            return shape
        results[p] = list(validation.schedule(shares[p], 2, _align4, agree))

    threads = [threading.Thread(target=run, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a simulated process did not finish"
    assert [s for s, _ in results[0]] == [s for s, _ in results[1]], "processes ran different batch shapes"
    for p in range(2):
        names = [it["name"] for _, group in results[p] for it in group]
        assert names == [it["name"] for it in shares[p]], f"process {p} used {names}"
        for shape, group in results[p]:
            assert len(group) <= 2 and all(_align4(it["lq"].shape[:2]) == shape for it in group)


def test_tiled_eval_settings_are_refused_by_name():
    from nafnet_jax.evaluation.evaluate import default_eval_config
    config = default_eval_config()
    config.tile = 64
    with pytest.raises(ValueError, match="eval.tile=64"):
        validation.check_validation_config(config)


_MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from tiny_models import random_params
    from test_validation import _items
    from nafnet_jax.evaluation import evaluate as ev, validation
    from nafnet_jax.config import base_config, model_config
    from nafnet_jax.evaluation.inference import model_apply_fn
    from nafnet_jax.models import build_model
    from nafnet_jax.training.setup import build_train_setup

    assert jax.device_count() == 4
    # 7 images (not a multiple of 4), three padded shapes, two of them from several exact shapes.
    items = _items([(20, 24), (18, 24), (20, 21), (12, 12), (20, 24), (11, 10), (20, 24)])

    def config_for(devices, fsdp=1, **eval_settings):
        config = base_config()
        config.model = model_config(width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1),
                                    tlc_train_size=(8, 8))
        config.data.crop_size = 16
        config.train.batch_size = 4
        config.mesh.num_devices = devices
        config.mesh.fsdp = fsdp
        config.mesh.min_fsdp_size = 64   # shard the tiny model's larger kernels for real
        config.eval.protocol = {protocol!r}
        config.eval.update(eval_settings)
        return config

    base = config_for(1)
    host_params = random_params(build_model(base.model.to_dict()))
    out = {{}}
    references = {{}}
    for label, devices, fsdp, settings in [("one", 1, 1, {{}}), ("fsdp", 4, 2, {{}}),
                                           ("ensemble", 4, 1, {{"ensemble": True, "bucket": 8}})]:
        config = config_for(devices, fsdp, **settings)
        setup = build_train_setup(config)
        params = jax.device_put(host_params, setup.state_shardings.params)
        restorer = validation.MeshRestorer(setup.model, setup.mesh, bucket=config.eval.bucket,
                                           ensemble=config.eval.ensemble)
        result = validation.validate(restorer, params, items, config.eval, with_input=True)
        traces_first = restorer.trace_count
        again = validation.validate(restorer, params, items, config.eval)
        sharded = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)
                      if "fsdp" in str(x.sharding.spec))
        key = json.dumps(settings)
        if key not in references:  # today's path: one device, portable model, evaluate.py's scoring
            references[key] = ev.evaluate(model_apply_fn(build_model(config.model.to_dict())), host_params,
                                          items, config.eval, align=4)["per_image"]
        identity = ev.evaluate(lambda p, x: x, None, items, config.eval, align=4)
        out[label] = {{"mesh": result["per_image"], "count": result["count"],
                      "psnr_input_sum": result["psnr_input_sum"],
                      "again": again["per_image"], "reference": references[key],
                      "identity_psnr_sum": identity["psnr"] * identity["count"],
                      "traces_first": traces_first, "traces": restorer.trace_count,
                      "sharded_elements": sharded}}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def mesh_runs():
    """One subprocess with 4 simulated CPU devices: mesh validation vs one-device `evaluate`.

    The uint8 protocol (GoPro's): its rounding would show any difference in the restored pixels.
    """
    tests = os.path.dirname(os.path.abspath(__file__))
    script = _MESH_SCRIPT.format(tests=tests, protocol="uint8")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tests)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("label", ["one", "fsdp", "ensemble"])
def test_mesh_validation_scores_equal_one_device_evaluation(mesh_runs, label):
    run = mesh_runs[label]
    assert run["count"] == 7, f"{run['count']} images scored, expected exactly the 7 of the set"
    assert [r["name"] for r in run["mesh"]] == [f"n{i}" for i in range(7)]
    for got, want in zip(run["mesh"], run["reference"]):
        assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4), f"{label} {got['name']}: {got} vs {want}"
        assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-6), f"{label} {got['name']}: {got} vs {want}"
    assert run["again"] == run["mesh"], "a second validation gave different scores"
    assert run["traces"] == run["traces_first"], "the second validation compiled again"
    assert run["psnr_input_sum"] == pytest.approx(run["identity_psnr_sum"], abs=1e-9)


def test_mesh_validation_compiles_once_per_padded_shape_and_keeps_params_sharded(mesh_runs):
    # Exact mode pads to multiples of 4 here: (20, 24) and (12, 12). Bucket 8: (24, 24) and (16, 16),
    # squares, so the ensemble's transposed images need no other shape.
    assert mesh_runs["fsdp"]["traces"] == 2, "expected one compilation per padded shape"
    assert mesh_runs["ensemble"]["traces"] == 2, "expected one compilation per padded shape"
    assert mesh_runs["fsdp"]["sharded_elements"] > 0, "nothing was FSDP-sharded: the test would prove nothing"


# --- EMA and the best-checkpoint metric ---------------------------------------------------------


def test_validator_scores_ema_parameters_beside_the_raw_ones():
    from tiny_models import random_params
    from nafnet_jax.config import base_config, model_config
    from nafnet_jax.evaluation import evaluate as ev
    from nafnet_jax.evaluation.inference import model_apply_fn
    from nafnet_jax.models import build_model
    from nafnet_jax.training.setup import build_train_setup

    config = base_config()
    config.model = model_config(width=8, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
    config.train.batch_size = 1
    config.train.num_val_images = 1
    config.mesh.num_devices = 1
    config.eval.protocol = "float"
    items = _items([(8, 12), (8, 12)], seed=3)  # one shape: one compilation per path
    model = build_model(config.model.to_dict())
    params, ema_params = random_params(model, seed=0), random_params(model, seed=1)
    validator = validation.Validator(config, build_train_setup(config), dataset=items)
    writer = RecordingWriter()
    got = validator(params, 7, writer, ema_params=ema_params)
    assert writer.scalars[7] == got and sorted(writer.images[7]) == ["val/sample_0"]
    for suffix, reference in (("", params), ("_ema", ema_params)):
        want = ev.evaluate(model_apply_fn(model), reference, items, config.eval, align=2)
        assert got[f"val/psnr{suffix}"] == pytest.approx(want["psnr"], abs=1e-4), suffix
        assert got[f"val/ssim{suffix}"] == pytest.approx(want["ssim"], abs=1e-6), suffix
    assert abs(got["val/psnr_ema"] - got["val/psnr"]) > 1e-3, "EMA and raw parameters scored the same"
    assert "val/psnr_ema" not in validator(params, 8, writer), "no EMA parameters, yet an EMA score"


def _save_scored_steps(directory, best_metric, scores):
    """Saves tiny steps whose validation scalars are `scores` [(psnr, psnr_ema), ...]; returns the manager."""
    import orbax.checkpoint as ocp
    from nafnet_jax.training import checkpointing

    manager = checkpointing.create_manager(directory, keep=1, async_save=False)
    for step, (psnr, psnr_ema) in enumerate(scores, start=1):
        scalars = {"val/psnr": psnr, "val/ssim": 0.5, "val/psnr_ema": psnr_ema, "val/ssim_ema": 0.5}
        manager.save(step, args=ocp.args.Composite(**{
            checkpointing.STATE: ocp.args.PyTreeSave({"params": {"w": np.full(2, step, np.float32)}}),
            checkpointing.CONFIG: ocp.args.JsonSave({"model": {}})}),
            metrics=checkpointing.checkpoint_metrics(scalars, best_metric), force=True)
    manager.wait_until_finished()
    return manager


@pytest.mark.parametrize("best_metric, best", [("val/psnr", 1), ("val/psnr_ema", 2)])
def test_the_best_checkpoint_follows_train_best_metric(tmp_path, best_metric, best):
    from nafnet_jax.training import checkpointing

    # Raw PSNR peaks at step 1, EMA PSNR at step 2; step 3 is the latest (kept with keep=1).
    manager = _save_scored_steps(tmp_path / "ckpt", best_metric, [(30.0, 29.0), (29.5, 31.0), (29.0, 30.0)])
    try:
        assert checkpointing.best_step(manager) == best
        assert sorted(manager.all_steps()) == sorted({best, 3}), "the preservation policy kept other steps"
        assert manager.metrics(best)["val_psnr_ema"] == [29.0, 31.0][best - 1]
    finally:
        manager.close()


def test_checkpoints_from_before_best_metric_rank_by_validation_psnr():
    from nafnet_jax.training import checkpointing
    assert checkpointing.ranking_value({"val_psnr": 31.5}) == 31.5
    assert checkpointing.ranking_value({"best": 0.9, "val_psnr": 31.5}) == 0.9
    assert checkpointing.ranking_value(None) is None


@pytest.mark.parametrize("metric, ema_decay, message", [
    ("val/lpips", 0.0, "train.best_metric='val/lpips': expected one of"),
    ("val/psnr_ema", 0.0, "train.best_metric='val/psnr_ema': the run keeps no EMA parameters"),
])
def test_an_unavailable_best_metric_is_a_config_error_before_the_workdir_exists(tmp_path, metric, ema_decay,
                                                                               message):
    from nafnet_jax.config import base_config, validate_config
    from nafnet_jax.training.trainer import train_and_evaluate

    config = base_config()
    config.train.best_metric, config.train.ema_decay = metric, ema_decay
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, str(tmp_path / "workdir"))
    assert not (tmp_path / "workdir").exists()
    config.train.ema_decay = 0.999
    if metric.endswith("_ema"):
        validate_config(config)  # available once the run keeps an EMA
