"""train.py end to end: learning, exact resume, SIGTERM, devices, processes, bad configs."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from trainer_helpers import (REPO, final_params, max_diff, run_train, tiny_overrides, train_command, train_env,
                             write_pairs)


N_STEPS = 8  # every comparison below is against the same 8-step, 1-device reference run


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def _overrides(dirs, extra=()):
    return tiny_overrides(dirs, total_steps=N_STEPS, extra=["--config.train.checkpoint_every=4", *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dirs):
    """An uninterrupted 1-device run: (workdir, its final params)."""
    wd = tmp_path_factory.mktemp("reference") / "run"
    run_train(wd, _overrides(dirs))
    return wd, final_params(wd)


def _steps(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def _resume_copy(src, dst, drop_step):
    """A copy of a finished run as if it had died before saving `drop_step`."""
    shutil.copytree(src, dst)
    shutil.rmtree(pathlib.Path(dst) / "checkpoints" / str(drop_step))


def test_training_learns_and_writes_checkpoints_config_and_events(tmp_path, dirs):
    wd = tmp_path / "run"
    run_train(wd, tiny_overrides(dirs, total_steps=30, extra=[
        "--config.train.eval_every=30", "--config.train.checkpoint_every=10",
        "--config.optimizer.lr=2e-3"]))
    assert _steps(wd)[-1] == 30
    saved = json.loads((wd / "config.json").read_text())
    assert saved["model"]["width"] == 4 and saved["train"]["total_steps"] == 30
    assert list(wd.glob("events.out.tfevents.*")), "no TensorBoard event file in the workdir"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(wd), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/steps_per_s", "train/examples_per_s",
                "val/psnr", "val/psnr_input", "val/ssim"):
        assert tag in tags, f"{tag} not written; have {tags}"
    loss = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("train/loss")]
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.5, f"loss did not fall: {loss[:5]} ... {loss[-5:]}"


def test_resume_from_a_checkpoint_is_exact(tmp_path, dirs, reference):
    ref_wd, ref_params = reference
    assert _steps(ref_wd) == [4, 8]
    _resume_copy(ref_wd, tmp_path / "resumed", N_STEPS)
    run_train(tmp_path / "resumed", _overrides(dirs))
    assert _steps(tmp_path / "resumed") == [4, 8]
    diff = max_diff(ref_params, final_params(tmp_path / "resumed"))
    assert diff == 0.0, f"resumed run ends {diff:.3g} away from the uninterrupted one"


def test_sigterm_saves_then_resume_matches_uninterrupted(tmp_path, dirs, reference):
    wd = tmp_path / "stopped"
    log = tmp_path / "log.txt"
    overrides = _overrides(dirs, extra=["--config.train.checkpoint_every=1000"])
    with open(log, "w") as out:
        proc = subprocess.Popen(train_command(wd, overrides), env=train_env(1), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 600
        while "step 2:" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)  # wait until training really runs, then preempt it
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    steps = _steps(wd)
    assert len(steps) == 1 and 2 <= steps[0] < N_STEPS, f"expected one checkpoint mid-run, got {steps}"
    run_train(wd, overrides)
    assert _steps(wd)[-1] == N_STEPS
    assert max_diff(reference[1], final_params(wd)) == 0.0


def test_eight_devices_equal_one_and_their_checkpoint_resumes_on_one(tmp_path, dirs, reference):
    eight = tmp_path / "eight"
    run_train(eight, _overrides(dirs), devices=8)
    diff = max_diff(reference[1], final_params(eight))
    assert diff < 1e-5, f"1 vs 8 devices differ by {diff:.3g} after {N_STEPS} steps"
    _resume_copy(eight, tmp_path / "moved", N_STEPS)
    run_train(tmp_path / "moved", _overrides(dirs), devices=1)
    diff = max_diff(reference[1], final_params(tmp_path / "moved"))
    assert diff < 1e-5, f"8-device checkpoint resumed on 1 device ends {diff:.3g} away"


def test_fsdp_and_grad_accumulation_match_plain_data_parallel(tmp_path, dirs, reference):
    wd = tmp_path / "sharded"
    run_train(wd, _overrides(dirs, extra=["--config.mesh.fsdp=2", "--config.train.grad_accum_steps=2"]),
              devices=4)
    diff = max_diff(reference[1], final_params(wd))
    assert diff < 1e-5, f"fsdp=2 + 2 micro-batches on 4 devices differ from 1 device by {diff:.3g}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_train_validate_and_checkpoint(tmp_path, dirs):
    wd = tmp_path / "multi"
    port = _free_port()
    procs, logs = [], []
    for pid in range(2):
        logs.append(tmp_path / f"log{pid}.txt")
        with open(logs[-1], "w") as out:  # files, not pipes: a full pipe would stall a process mid-collective
            procs.append(subprocess.Popen(
                train_command(wd, _overrides(dirs, extra=["--config.train.eval_every=8"]), extra_args=[
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]),
                env=train_env(2), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    for p in procs:
        p.wait(timeout=600)
    texts = [log.read_text() for log in logs]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-3000:]
    assert "2 local / 4 global devices" in texts[0], texts[0][-2000:]
    assert _steps(wd)[-1] == N_STEPS
    # Each process reads its own shard of the data, so the global batches (and the result) differ
    # from the 1-process run's; what must hold is that training ran and the state is sane.
    assert all(np.all(np.isfinite(v)) for v in final_params(wd).values())
    assert "val/count=2" in texts[0], "validation did not cover both processes' eval images"


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


def test_restart_with_a_different_model_fails_naming_the_difference(tmp_path, dirs, reference):
    wd = tmp_path / "run"
    _resume_copy(reference[0], wd, N_STEPS)
    proc = run_train(wd, _overrides(dirs) + ["--config.model.width=8"], check=False)
    assert proc.returncode != 0 and "model.width" in proc.stderr, proc.stderr[-2000:]
