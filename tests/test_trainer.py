"""train.py end to end: learning, exact resume, SIGTERM, devices, processes, bad configs."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from trainer_helpers import REPO, final_params, max_diff, run_train, tiny_overrides, write_pairs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def _steps(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def test_training_learns_and_writes_checkpoints_config_and_events(tmp_path, dirs):
    wd = tmp_path / "run"
    run_train(wd, tiny_overrides(dirs, total_steps=30, extra=[
        "--config.train.eval_every=30", "--config.train.checkpoint_every=10",
        "--config.optimizer.lr=2e-3"]))
    assert _steps(wd)[-1] == 30
    saved = json.loads((wd / "config.json").read_text())
    assert saved["model"]["width"] == 4 and saved["train"]["total_steps"] == 30
    events = list(wd.glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the workdir"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(wd), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/steps_per_s", "val/psnr",
                "val/psnr_input", "val/ssim"):
        assert tag in tags, f"{tag} not written; have {tags}"
    from tensorboard.util import tensor_util
    loss = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("train/loss")]
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.5, f"loss did not fall: {loss[:5]} ... {loss[-5:]}"


def test_resume_from_a_checkpoint_is_exact(tmp_path, dirs):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_train(full, tiny_overrides(dirs, total_steps=6))
    assert _steps(full) == [3, 6]
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")  # as if the run had died after step 3
    run_train(resumed, tiny_overrides(dirs, total_steps=6))
    assert _steps(resumed) == [3, 6]
    diff = max_diff(final_params(full), final_params(resumed))
    assert diff == 0.0, f"resumed run ends {diff:.3g} away from the uninterrupted one"


def test_sigterm_saves_then_resume_matches_uninterrupted(tmp_path, dirs):
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    n = 40
    run_train(full, tiny_overrides(dirs, total_steps=n, extra=["--config.train.checkpoint_every=1000"]))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo.py"),
           f"--workdir={stopped}", *tiny_overrides(dirs, total_steps=n,
                                                   extra=["--config.train.checkpoint_every=1000"])]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until training really runs, then preempt it
        lines.append(line)
        if "step 5:" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=120)
    lines.append(out)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    steps = _steps(stopped)
    assert len(steps) == 1 and 5 <= steps[0] < n, f"expected one checkpoint mid-run, got {steps}"
    run_train(stopped, tiny_overrides(dirs, total_steps=n, extra=["--config.train.checkpoint_every=1000"]))
    assert _steps(stopped)[-1] == n
    assert max_diff(final_params(full), final_params(stopped)) == 0.0


def test_one_device_equals_eight_and_checkpoints_move_between_them(tmp_path, dirs):
    one, eight, moved = tmp_path / "one", tmp_path / "eight", tmp_path / "moved"
    run_train(one, tiny_overrides(dirs, total_steps=3), devices=1)
    run_train(eight, tiny_overrides(dirs, total_steps=3), devices=8)
    diff = max_diff(final_params(one), final_params(eight))
    assert diff < 1e-5, f"1 vs 8 devices differ by {diff:.3g} after 3 steps"
    # A checkpoint written by 8 devices resumes on 1 (and goes on to the same result).
    shutil.copytree(eight, moved)
    shutil.rmtree(moved / "checkpoints" / "3")
    run_train(moved, tiny_overrides(dirs, total_steps=6, extra=["--config.train.checkpoint_every=3"]),
              devices=1)
    assert _steps(moved) == [6] or _steps(moved)[-1] == 6


def test_fsdp_and_grad_accumulation_match_plain_data_parallel(tmp_path, dirs):
    base, sharded = tmp_path / "base", tmp_path / "sharded"
    run_train(base, tiny_overrides(dirs, total_steps=3), devices=4)
    run_train(sharded, tiny_overrides(dirs, total_steps=3, extra=[
        "--config.mesh.fsdp=2", "--config.train.grad_accum_steps=2"]), devices=4)
    diff = max_diff(final_params(base), final_params(sharded))
    assert diff < 1e-5, f"fsdp=2 + 2 micro-batches differ from plain data parallel by {diff:.3g}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_train_and_checkpoint(tmp_path, dirs):
    wd = tmp_path / "multi"
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = []
    for pid in range(2):
        cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo.py"),
               f"--workdir={wd}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={pid}", *tiny_overrides(dirs, total_steps=4, extra=[
                   "--config.train.eval_every=4", "--config.train.checkpoint_every=2"])]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert _steps(wd)[-1] == 4
    assert "4 global devices" in outs[0] or "4 global" in outs[0], outs[0][-2000:]


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, dirs):
    wd = tmp_path / "nan"
    proc = run_train(wd, tiny_overrides(dirs, total_steps=6, extra=[
        "--config.optimizer.lr=1e30", "--config.optimizer.grad_clip=0.0", "--config.train.checkpoint_every=1"]),
        check=False)
    assert proc.returncode != 0
    assert "not finite at step" in proc.stderr, proc.stderr[-2000:]
    first_bad = int(proc.stderr.split("not finite at step ")[1].split(";")[0])
    steps = _steps(wd)
    assert steps and max(steps) < first_bad, f"checkpoints {steps} include the bad step {first_bad}"
    params = final_params(wd)
    assert all(np.all(np.isfinite(v)) for v in params.values())


def test_unknown_config_key_fails_before_work_naming_it(tmp_path, dirs):
    proc = run_train(tmp_path / "bad", tiny_overrides(dirs) + ["--config.train.bogus_key=1"], check=False)
    assert proc.returncode != 0 and "bogus_key" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_invalid_config_value_fails_before_work_naming_it(tmp_path, dirs):
    proc = run_train(tmp_path / "bad", tiny_overrides(dirs) + ["--config.train.loss=l3"], check=False)
    assert proc.returncode != 0 and "train.loss" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_restart_with_a_different_model_fails_naming_the_difference(tmp_path, dirs):
    wd = tmp_path / "run"
    run_train(wd, tiny_overrides(dirs, total_steps=3))
    proc = run_train(wd, tiny_overrides(dirs, total_steps=6) + ["--config.model.width=8"], check=False)
    assert proc.returncode != 0 and "model.width" in proc.stderr, proc.stderr[-2000:]
