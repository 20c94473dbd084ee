"""NAFSSR through the same trainer as NAFNet: train.py on the stereo demo data, validation with the stereo
metrics, checkpoints, and an exact resume (drop-path and the stereo pipeline's O(1) restart included)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from trainer_helpers import final_params, max_diff, run_train

STEPS = 4


def _overrides(data_dir) -> list:
    """A tiny NAFSSR x2 (width 8, 2 blocks, drop-path 0.2) on the bundled stereo demo data, 2 devices."""
    return [
        "--config.model.width=8", "--config.model.num_blks=2", "--config.model.drop_path_rate=0.2",
        f"--config.data.data_dir={data_dir}", "--config.data.lr_crop_size=(8,24)",
        "--config.data.eval_max_images=2",
        f"--config.train.total_steps={STEPS}", "--config.train.batch_size=4", "--config.train.log_every=1",
        f"--config.train.eval_every={STEPS}", "--config.train.checkpoint_every=2",
        "--config.train.async_checkpoints=False", "--config.train.progress_bar=False",
    ]


def _steps(workdir) -> list:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def test_nafssr_trains_validates_checkpoints_and_resumes_exactly(tmp_path):
    data_dir = tmp_path / "tfds"
    first = tmp_path / "run"
    run_train(first, _overrides(data_dir), devices=2, config_file="demo_stereo.py")
    assert _steps(first) == [2, 4]
    saved = json.loads((first / "config.json").read_text())
    assert saved["model"]["arch"] == "nafssr" and saved["data"]["dataset"] == "stereo_bundled"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(first), size_guidance={"tensors": 0})
    acc.Reload()
    last = {tag: tensor_util.make_ndarray(acc.Tensors(tag)[-1].tensor_proto) for tag in acc.Tags()["tensors"]}
    scalars = {tag: float(v) for tag, v in last.items() if v.ndim == 0}
    for tag in ("train/loss", "val/psnr", "val/ssim", "val/psnr_input"):
        assert tag in scalars, f"{tag} not written; have {sorted(scalars)}"
    assert 5.0 < scalars["val/psnr"] < 60.0 and 0.0 < scalars["val/ssim"] <= 1.0
    assert scalars["val/psnr_input"] > 20.0, scalars  # the bilinear x2 of smooth photographs

    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))  # as if the run had died before saving step 4
    run_train(resumed, _overrides(data_dir) + ["--config.train.eval_every=0"], devices=2,
              config_file="demo_stereo.py")
    assert _steps(resumed) == [2, 4]
    diff = max_diff(final_params(first), final_params(resumed))
    assert diff == 0.0, f"the resumed NAFSSR run ends {diff:.3g} away from the uninterrupted one"
    assert all(np.isfinite(v).all() for v in final_params(resumed).values())


@pytest.mark.slow
def test_two_processes_validate_a_stereo_model_as_one_process_evaluates_it(tmp_path):
    """Validation on 2 processes x 2 devices (each scoring its share of the pairs) equals eval.py
    on one process with the same checkpoint."""
    import re
    import subprocess
    import sys

    from test_trainer import _run_two_processes
    from trainer_helpers import REPO, train_env

    data_dir = tmp_path / "tfds"
    run_train(tmp_path / "prepare", _overrides(data_dir) + ["--config.train.total_steps=1",
              "--config.train.eval_every=0"], config_file="demo_stereo.py")  # builds the dataset once
    wd = tmp_path / "multi"
    codes, texts = _run_two_processes(tmp_path, wd, _overrides(data_dir), config_file="demo_stereo.py")
    for code, text in zip(codes, texts):
        assert code == 0, text[-3000:]
    assert "2 local / 4 global devices" in texts[0], texts[0][-2000:]
    val = {k: float(v) for k, v in re.findall(r"val/(psnr|ssim|count)=([0-9.]+)", texts[0])}
    assert val["count"] == 2, texts[0][-2000:]

    out = tmp_path / "eval"
    model_flags = [a for a in _overrides(data_dir) if a.startswith(("--config.model", "--config.data"))]
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--config", str(REPO / "configs" / "demo_stereo.py"),
                           f"--checkpoint={wd}", f"--output_dir={out}", "--progress=false", *model_flags],
                          env=train_env(1), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 2
    assert metrics["psnr"] == pytest.approx(val["psnr"], abs=1e-3), (metrics, val)
    assert metrics["ssim"] == pytest.approx(val["ssim"], abs=1e-4), (metrics, val)
