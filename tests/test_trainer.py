"""train.py end to end: learning, exact resume, compile cache, SIGTERM/SIGINT, devices, processes, bad
configs; and the loop's failure paths (exceptions, unreadable data) and stop agreement in-process."""

import json
import pathlib
import shutil
import socket
import subprocess

import numpy as np
import pytest

from trainer_helpers import (REPO, config_from_overrides, final_params, max_diff, run_train, tiny_overrides,
                             train_command, train_env, write_pairs)


N_STEPS = 8  # every comparison below is against the same 8-step, 1-device reference run


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def _overrides(dirs, extra=()):
    # One compile cache for the module's runs, taking every compilation (not only those slower than
    # 1 s), so that cache hits do not depend on how fast this machine compiles. (An explicit dir: the
    # cache key holds the cache's path, so a workdir copied elsewhere misses its own compile_cache.)
    cache = pathlib.Path(dirs["train_lq"]).parent / "compile_cache"
    return tiny_overrides(dirs, total_steps=N_STEPS, extra=[
        "--config.train.checkpoint_every=4", f"--config.train.compilation_cache_dir={cache}",
        "--config.train.compilation_cache_min_compile_secs=0", *extra])


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


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, dirs, reference):
    """The reference run resumed from step 4 in a copy of its workdir (compile cache included)."""
    wd = tmp_path_factory.mktemp("resumed") / "run"
    _resume_copy(reference[0], wd, N_STEPS)
    proc = run_train(wd, _overrides(dirs), env_extra={"JAX_LOG_COMPILES": "1"})
    return wd, proc


def test_resume_from_a_checkpoint_is_exact(reference, resumed):
    ref_wd, ref_params = reference
    assert _steps(ref_wd) == [4, 8]
    wd, _ = resumed
    assert _steps(wd) == [4, 8]
    diff = max_diff(ref_params, final_params(wd))
    assert diff == 0.0, f"resumed run ends {diff:.3g} away from the uninterrupted one"


def test_a_rerun_takes_the_train_step_from_the_compile_cache(dirs, reference, resumed):
    cache = pathlib.Path(dirs["train_lq"]).parent / "compile_cache"
    assert any(p.name.startswith("jit_train_step") for p in cache.iterdir()), f"no train step in {cache}"
    _, proc = resumed
    hits = [line for line in proc.stderr.splitlines() if "Persistent compilation cache hit" in line]
    assert any("train_step" in line for line in hits), "the train step was compiled again:\n" + "\n".join(hits)


def _run_stopped_by(wd, dirs, step, signame):
    """train.py that sends itself `signame` right after `step` (the real handler runs, no timing)."""
    proc = run_train(wd, _overrides(dirs, extra=["--config.train.checkpoint_every=1000"]), check=False,
                     env_extra={"NAFNET_TEST_SELF_SIGNAL": f"{step}:{signame}"})
    from nafnet_jax import cli
    # Not 0: a scheduler must tell a preempted run (run it again) from a finished one.
    assert proc.returncode == cli.EXIT_PREEMPTED, proc.stderr[-3000:]
    return proc


def test_sigterm_then_sigint_save_and_resume_matches_uninterrupted(tmp_path, dirs, reference):
    wd = tmp_path / "stopped"
    _run_stopped_by(wd, dirs, 3, "SIGTERM")
    assert _steps(wd) == [3], f"expected one checkpoint at the signal's step 3, got {_steps(wd)}"
    _run_stopped_by(wd, dirs, 5, "SIGINT")
    assert _steps(wd) == [3, 5], f"expected checkpoints 3 and 5, got {_steps(wd)}"
    run_train(wd, _overrides(dirs, extra=["--config.train.checkpoint_every=1000"]))
    assert _steps(wd)[-1] == N_STEPS  # (the demo config keeps the last 2 checkpoints)
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


def _run_two_processes(tmp_path, wd, overrides, env_extra=({}, {}), config_file="demo.py"):
    """train.py as 2 processes of 2 CPU devices each on localhost; returns (return codes, logs)."""
    port = _free_port()
    procs, logs = [], []
    for pid in range(2):
        logs.append(tmp_path / f"log{pid}.txt")
        with open(logs[-1], "w") as out:  # files, not pipes: a full pipe would stall a process mid-collective
            procs.append(subprocess.Popen(
                train_command(wd, overrides, extra_args=[
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"],
                    config_file=config_file),
                env={**train_env(2), **env_extra[pid]}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
    for p in procs:
        p.wait(timeout=600)
    return [p.returncode for p in procs], [log.read_text() for log in logs]


def test_two_processes_on_localhost_train_validate_and_checkpoint(tmp_path, dirs):
    wd = tmp_path / "multi"
    codes, texts = _run_two_processes(tmp_path, wd, _overrides(dirs, extra=["--config.train.eval_every=8"]))
    for code, text in zip(codes, texts):
        assert code == 0, text[-3000:]
    assert "2 local / 4 global devices" in texts[0], texts[0][-2000:]
    assert _steps(wd)[-1] == N_STEPS
    # Each process reads its own shard of the data, so the global batches (and the result) differ
    # from the 1-process run's; what must hold is that training ran and the state is sane.
    assert all(np.all(np.isfinite(v)) for v in final_params(wd).values())
    assert "val/count=2" in texts[0], "validation did not cover both processes' eval images"


# A run that cannot finish by itself: only the stop under test ends it (or the test's timeout).
_ENDLESS = ["--config.train.total_steps=1000000", "--config.train.log_every=1000",
            "--config.train.checkpoint_every=1000000"]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_next_agreed_step(tmp_path, dirs):
    from nafnet_jax import cli
    wd = tmp_path / "multi"
    codes, texts = _run_two_processes(
        tmp_path, wd, _overrides(dirs, extra=[*_ENDLESS, "--config.train.stop_sync_every=4"]),
        env_extra=({}, {"NAFNET_TEST_SELF_SIGNAL": "2:SIGTERM:1"}))
    for code, text in zip(codes, texts):
        assert code == cli.EXIT_PREEMPTED, text[-3000:]
    assert _steps(wd) == [4], f"expected both processes to stop at the sync step 4, got {_steps(wd)}"


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


# --- the loop's failure paths, in-process (one compile each; no subprocess) ---------------------

@pytest.fixture
def in_process(tmp_path_factory, dirs):
    """Runs `train_and_evaluate` here; restores JAX's compile-cache settings afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    cache = tmp_path_factory.getbasetemp() / "in_process_compile_cache"  # shared: later runs hit it

    def run(workdir, total_steps, extra=()):
        from nafnet_jax.training.trainer import train_and_evaluate
        config = config_from_overrides(tiny_overrides(dirs, total_steps=total_steps, extra=[
            f"--config.train.compilation_cache_dir={cache}", "--config.train.compilation_cache_min_compile_secs=0",
            *extra]))
        return train_and_evaluate(config, str(workdir))

    yield run
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    compilation_cache.reset_cache()


def test_an_exception_mid_run_still_finishes_the_async_checkpoint_and_closes(tmp_path, monkeypatch, in_process):
    from nafnet_jax.training import checkpointing, trainer
    calls = []
    real_create = checkpointing.create_manager

    def spying_manager(*args, **kwargs):
        manager = real_create(*args, **kwargs)
        wait, close = manager.wait_until_finished, manager.close
        manager.wait_until_finished = lambda: (calls.append("wait"), wait())[1]
        manager.close = lambda: (calls.append("close"), close())[1]
        return manager

    real_update = trainer.Progress.update

    def failing_update(self, step, scalars):  # runs at every log step (log_every=1), before the save
        if step == 3:
            raise RuntimeError("injected failure after the step-2 save")
        return real_update(self, step, scalars)

    monkeypatch.setattr(checkpointing, "create_manager", spying_manager)
    monkeypatch.setattr(trainer.Progress, "update", failing_update)
    with pytest.raises(RuntimeError, match="injected failure"):
        in_process(tmp_path / "run", 6, ["--config.train.checkpoint_every=2",
                                         "--config.train.async_checkpoints=True"])
    # (Orbax's own save and close wait too; what matters is that ours ran and the manager was closed.)
    assert "close" in calls and calls[calls.index("close") - 1] == "wait", f"manager calls: {calls}"
    assert _steps(tmp_path / "run") == [2], "the step-2 checkpoint was not completed"


_TF_ERROR_TEXT = (
    "Traceback (most recent call last):\n\n  File \"/x/nafnet_jax/data/images.py\", line 173, in decode_rgb8\n"
    "    raise BadDataError(f'{path}: cannot decode image')\n\n"
    "nafnet_jax.data.images.BadDataError: {path}: cannot decode image (OSError: image file is truncated)\n\n\n"
    "\t [[{{node PyFuncStateless}}]] [Op:IteratorGetNext] name: ")


def test_data_error_message_is_the_readers_line_naming_the_file():
    from nafnet_jax.training.trainer import data_error_message
    assert data_error_message(RuntimeError(_TF_ERROR_TEXT.replace("{path}", "/data/lq/img03.png"))) == \
        "/data/lq/img03.png: cannot decode image (OSError: image file is truncated)"
    assert data_error_message(OSError("disk gone")) == "disk gone"


def test_an_unreadable_training_image_mid_run_saves_the_last_step_and_names_the_file(tmp_path, monkeypatch,
                                                                                      in_process):
    """The data stream fails on its 4th batch (after 3 steps) with the error tf.data raises for a bad file."""
    import tensorflow as tf

    import nafnet_jax.data
    from nafnet_jax.training.trainer import DataError
    bad = pathlib.Path(tmp_path / "lq" / "img03.png")
    real_create = nafnet_jax.data.create_train_iterator

    def failing_iterator(*args, **kwargs):
        batches = real_create(*args, **kwargs)
        for _ in range(3):
            yield next(batches)
        raise tf.errors.InvalidArgumentError(None, None, _TF_ERROR_TEXT.replace("{path}", str(bad)))

    monkeypatch.setattr(nafnet_jax.data, "create_train_iterator", failing_iterator)
    with pytest.raises(DataError) as raised:
        in_process(tmp_path / "run", 6, ["--config.train.checkpoint_every=100"])
    message = str(raised.value)
    assert str(bad) in message and "checkpoint of step 3 was saved" in message, message
    assert "\n" not in message, message
    assert _steps(tmp_path / "run") == [3]


def test_the_compile_cache_defaults_to_the_workdir_and_none_sets_none(tmp_path, in_process):
    import jax
    from etils import epath

    from nafnet_jax.config import base_config
    from nafnet_jax.training.trainer import configure_compilation_cache
    train = base_config().train
    assert configure_compilation_cache(train, epath.Path(tmp_path)) == str(tmp_path / "compile_cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "compile_cache")
    train.compilation_cache_dir = "none"
    assert configure_compilation_cache(train, epath.Path(tmp_path / "other")) is None
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "compile_cache"), "'none' changed the cache"


def _scalar_events(workdir, tag):
    """{step: value} of a scalar the trainer wrote to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def test_skipped_steps_keep_step_schedule_and_logged_lr_together_and_each_loss_term_is_logged(
        tmp_path, in_process):
    # lr 1e30 without a clip: step 1 blows the parameters up, every later step is non-finite and skipped.
    from nafnet_jax.training.optim import cosine_schedule, schedule_count
    total, lr = 5, 1e30
    result = in_process(tmp_path / "run", total, [
        "--config.train.nonfinite=skip", f"--config.optimizer.lr={lr}", "--config.optimizer.grad_clip=0.0",
        "--config.train.checkpoint_every=100", '--config.train.loss={"psnr": 1.0, "fft_l1": {"weight": 0.05}}'])
    state = result["state"]
    assert int(state.nonfinite_count) >= 1, "no step was skipped; the test would prove nothing"
    assert int(state.step) == total and int(schedule_count(state.opt_state)) == total, \
        f"state.step {int(state.step)} != schedule count {int(schedule_count(state.opt_state))}"
    schedule = cosine_schedule(lr, total, 1e-7)
    logged = _scalar_events(tmp_path / "run", "train/lr")
    assert sorted(logged) == list(range(1, total + 1)), sorted(logged)
    for step, value in logged.items():  # the rate of update `step` (1-based) is schedule(step - 1)
        assert value == pytest.approx(float(schedule(step - 1)), rel=1e-6), f"lr logged at step {step}"
    for tag in ("train/loss/psnr", "train/loss/fft_l1"):
        assert sorted(_scalar_events(tmp_path / "run", tag)) == list(range(1, total + 1)), f"{tag} not logged"


@pytest.mark.slow  # the step-level proof (tests/test_rng_streams.py: save/restore) runs by default
def test_resume_is_exact_with_drop_path_training(tmp_path, in_process):
    # Drop-path draws from the 'drop_path' stream keyed by (state.rng, step) (test_rng_streams.py
    # shows the step passes those keys); here a run of 6 steps and 3 + resume + 3 must agree bit for bit.
    extra = ["--config.model.drop_path_rate=0.3"]
    in_process(tmp_path / "full", 6, extra)
    _resume_copy(tmp_path / "full", tmp_path / "resumed", 6)
    in_process(tmp_path / "resumed", 6, extra)
    assert _steps(tmp_path / "resumed")[-1] == 6
    diff = max_diff(final_params(tmp_path / "full"), final_params(tmp_path / "resumed"))
    assert diff == 0.0, f"with drop-path, the resumed run ends {diff:.3g} away from the uninterrupted one"


# --- the stop decision (pure: no processes) ------------------------------------------------------

def test_stop_flags_are_compared_every_n_steps_and_at_host_sync_steps():
    from nafnet_jax.training.trainer import stop_check_due
    assert [s for s in range(1, 121) if stop_check_due(s, 50)] == [50, 100]
    assert stop_check_due(7, 50, host_sync=True)


def test_one_process_stops_on_its_own_flag_at_once_without_a_collective():
    from nafnet_jax.training.trainer import StopAgreement

    def no_collective(flag):
        raise AssertionError("a single process must not all-gather")

    agree = StopAgreement(1, 50, allgather=no_collective)
    assert not agree(7, False) and agree(7, True)


def test_several_processes_agree_only_at_sync_steps_and_stop_together():
    from nafnet_jax.training.trainer import StopAgreement
    gathered = []
    other_flag = {"value": False}

    def allgather(flag):  # what process_allgather returns: every process's flag
        gathered.append(flag)
        return np.array([flag, other_flag["value"]])

    agree = StopAgreement(2, 10, allgather=allgather)
    decisions = [agree(step, local_flag=step >= 3) for step in range(1, 11)]
    assert decisions == [False] * 9 + [True], decisions
    assert gathered == [True], "flags were compared at other steps than the sync step 10"
    other_flag["value"] = True  # only the other process got the signal
    assert agree(12, False, host_sync=True)
