"""Failures lose nothing: damaged checkpoints fall back, kills at named points, one clear line per bad input.

Kill points are deterministic: either the library's test hook (`$NAFNET_FAULT_POINT`,
`checkpointing.fault_point`) or a patch of one Orbax function in a small child script;
no test waits for a moment in time. The bad-input table runs the real command lines.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nafnet_jax.training import checkpointing
from nafnet_jax import cli
from tiny_models import tiny_config
from trainer_helpers import REPO, tiny_overrides, train_command, train_env, write_pairs

# --------------------------------------------------------------------------------------------------
# Exit statuses and one-line errors (in-process).


def test_exit_statuses_are_distinct_and_in_the_readme():
    codes = {cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_PREEMPTED}
    assert len(codes) == 4 and cli.EXIT_PREEMPTED not in (0, 1, 2, 130, 137, 143)
    readme = (REPO / "README.md").read_text()
    assert f"| {cli.EXIT_PREEMPTED} " in readme, "README's exit status table lacks the preemption code"


@pytest.mark.parametrize("error, status", [
    (cli.UsageError("bad flag"), cli.EXIT_USAGE),
    (checkpointing.ModelMismatchError("model.width differs"), cli.EXIT_USAGE),
    (checkpointing.NoIntactCheckpointError("no intact checkpoint"), cli.EXIT_USAGE),
    (ValueError("invalid config value train.batch_size=3: expected a multiple of the 2 devices"), cli.EXIT_USAGE),
    (RuntimeError("the loss was not finite at step 3"), cli.EXIT_FAILURE),
    (ValueError("a tensorstore read failed mid-run"), cli.EXIT_FAILURE),
])
def test_exit_status_of_each_kind_of_error(error, status):
    assert cli.exit_status(error) == status


def test_errors_are_one_line_and_the_traceback_only_on_request(capsys, monkeypatch):
    def fail():
        raise KeyError("data.gt_dir is missing\n  (two lines)")

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.run_main(fail, "tool", ["tool"]) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == "tool: error: data.gt_dir is missing (two lines)\n"
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    cli.run_main(fail, "tool", ["tool"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("tool: error: data.gt_dir is missing (two lines)\n")


def test_preflight_turns_input_errors_into_usage_errors():
    with pytest.raises(cli.UsageError, match="data.lq_dir"):
        with cli.preflight():
            raise ValueError("data.lq_dir does not exist")


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints (in-process).

MODEL = tiny_config(levels=1, tlc_train_size=None)


def _params(step):
    return {"w": np.full((3, 2), float(step), np.float32), "b": {"x": np.arange(4, dtype=np.float32) * step}}


def _save_steps(directory, steps=(1, 2)):
    manager = checkpointing.create_manager(directory, async_save=False)
    for step in steps:
        manager.save(step, args=ocp.args.Composite(**{
            checkpointing.STATE: ocp.args.PyTreeSave({"params": _params(step)}),
            checkpointing.CONFIG: ocp.args.JsonSave({"model": MODEL})}))
    manager.wait_until_finished()
    manager.close()
    return pathlib.Path(directory)


def _damage(step_dir: pathlib.Path, kind: str) -> pathlib.Path:
    """Damages one step as a partial copy or a disk fault would; returns the file hit."""
    data_files = sorted(glob.glob(str(step_dir / "state" / "d" / "*")))
    assert data_files, f"no data files under {step_dir}/state/d"
    if kind == "metadata_missing":
        target = step_dir / "state" / "_METADATA"
        target.unlink()
    elif kind == "data_file_missing":
        target = pathlib.Path(data_files[0])
        target.unlink()
    elif kind == "truncated":
        target = pathlib.Path(data_files[0])
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        raise ValueError(kind)
    return target


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


DAMAGE_KINDS = ["metadata_missing", "data_file_missing", "truncated"]
# A failed tensorstore read leaves an Orbax callback for a closed event loop; it is Orbax's, and harmless.
_ORBAX_LOOP_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_ORBAX_LOOP_NOISE
@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_loading_falls_back_to_the_newest_intact_step_naming_step_and_file(tmp_path, kind):
    directory = _save_steps(tmp_path / "ckpt")
    hit = _damage(directory / "2", kind)
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    reports = []
    params, model = checkpointing.load_model_checkpoint(directory, report=reports.append)
    assert _tree_equal(params, _params(1)), "did not fall back to step 1"
    assert model["width"] == MODEL["width"]
    assert "step 2" in reports[0] and str(hit) in reports[0], reports
    assert any("step 1" in r for r in reports), reports
    after = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    assert after == before, "a loader changed the checkpoint directory"


def test_an_explicitly_requested_damaged_step_is_an_error_not_a_fallback(tmp_path):
    directory = _save_steps(tmp_path / "ckpt")
    hit = _damage(directory / "2", "metadata_missing")
    with pytest.raises(checkpointing.NoIntactCheckpointError, match="step 2") as info:
        checkpointing.load_model_checkpoint(directory / "2", report=lambda _: None)
    assert str(hit) in str(info.value)


@_ORBAX_LOOP_NOISE
def test_when_every_step_is_damaged_the_error_names_each(tmp_path):
    directory = _save_steps(tmp_path / "ckpt")
    _damage(directory / "1", "truncated")
    _damage(directory / "2", "metadata_missing")
    with pytest.raises(checkpointing.NoIntactCheckpointError) as info:
        checkpointing.load_model_checkpoint(directory, report=lambda _: None)
    assert "step 2" in str(info.value) and "step 1" in str(info.value)


def _abstract_state():
    return {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _params(0))}


@_ORBAX_LOOP_NOISE
@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_resume_falls_back_sets_the_damaged_step_aside_and_can_save_it_again(tmp_path, kind):
    directory = _save_steps(tmp_path / "run" / "checkpoints")
    _damage(directory / "2", kind)
    damaged_files = sorted(p.name for p in (directory / "2").rglob("*"))
    manager = checkpointing.create_manager(directory, async_save=False)
    reports = []
    step, state = checkpointing.restore_for_resume(manager, _abstract_state(), MODEL, report=reports.append)
    assert step == 1 and _tree_equal(state["params"], _params(1))
    assert any("step 2 is damaged" in r for r in reports), reports
    kept = list((tmp_path / "run" / checkpointing.DAMAGED_SUBDIR).iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("2-"), kept
    assert sorted(p.name for p in kept[0].rglob("*")) == damaged_files, "the damaged step was altered"
    manager.save(2, args=ocp.args.Composite(**{  # the step number is free again
        checkpointing.STATE: ocp.args.PyTreeSave({"params": _params(2)}),
        checkpointing.CONFIG: ocp.args.JsonSave({"model": MODEL})}))
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2]
    manager.close()


@pytest.mark.parametrize("change", [{"remat": True}, {"dtype": "bfloat16"}, {"depthwise_impl": "xla"},
                                    {"tlc_train_size": [16, 16]}])
def test_resume_accepts_changes_that_do_not_shape_the_parameters(tmp_path, change):
    directory = _save_steps(tmp_path / "checkpoints", steps=(1,))
    manager = checkpointing.create_manager(directory, async_save=False)
    step, _ = checkpointing.restore_for_resume(manager, _abstract_state(), {**MODEL, **change})
    assert step == 1


def test_resume_refuses_another_architecture_with_a_count_and_the_fields(tmp_path):
    directory = _save_steps(tmp_path / "checkpoints", steps=(1,))
    manager = checkpointing.create_manager(directory, async_save=False)
    changed = {**MODEL, "width": 16, "middle_blk_num": 2}
    with pytest.raises(checkpointing.ModelMismatchError) as info:
        checkpointing.restore_for_resume(manager, _abstract_state(), changed)
    message = str(info.value)
    assert "2 difference(s)" in message and "model.width: checkpoint has 8, config has 16" in message
    assert "\n" not in message


# --------------------------------------------------------------------------------------------------
# kill -9 at named points (child processes that import no TensorFlow).

_ORBAX_KILL = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.path import atomicity
    from nafnet_jax.training import checkpointing

    directory, point = sys.argv[1], sys.argv[2]
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    manager = checkpointing.create_manager(directory, async_save=False)
    params = lambda s: {"w": np.full((3, 2), float(s), np.float32)}
    save = lambda s: manager.save(s, args=ocp.args.Composite(**{
        checkpointing.STATE: ocp.args.PyTreeSave({"params": params(s)}),
        checkpointing.CONFIG: ocp.args.JsonSave({"model": {"width": 8}})}))
    save(1)
    manager.wait_until_finished()
    if point == "before_rename":      # every file of step 2 written, the directory not yet renamed
        atomicity.AtomicRenameTemporaryPath.finalize = die
    elif point == "after_rename":     # renamed into place, the manager's own bookkeeping not done
        ocp.CheckpointManager._finalize_checkpoint = die
    save(2)
    manager.wait_until_finished()
    print("not killed")
""")


def _child_env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("point, expected_step", [("before_rename", 1), ("after_rename", 2)])
def test_kill_during_a_checkpoint_write_leaves_an_intact_newest_step(tmp_path, point, expected_step):
    directory = tmp_path / "checkpoints"
    proc = subprocess.run([sys.executable, "-c", _ORBAX_KILL, str(directory), point], env=_child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    params, _ = checkpointing.load_model_checkpoint(directory, report=lambda _: None)
    np.testing.assert_array_equal(params["w"], np.full((3, 2), float(expected_step), np.float32))


@pytest.mark.parametrize("atomic", [True, False])
def test_swap_directories_exchanges_contents_with_or_without_renameat2(tmp_path, monkeypatch, atomic):
    if not atomic:
        monkeypatch.setattr(checkpointing, "_exchange", lambda a, b: False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("new")
    (b / "f").write_text("old")
    checkpointing.swap_directories(a, b)
    assert (b / "f").read_text() == "new" and (a / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def _sidd_tiny(width=4):
    from nafnet_jax.models import get_model
    return get_model("NAFNet-SIDD-width32", width=width, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))


TINY_SET = ["--set", "width=4", "--set", "enc_blk_nums=[1]", "--set", "middle_blk_num=1", "--set",
            "dec_blk_nums=[1]"]


def _random_params(model, seed):
    from nafnet_jax.tools.convert import abstract_params, unflatten_params
    rng = np.random.default_rng(seed)
    return unflatten_params({p: rng.normal(size=s.shape).astype(s.dtype)
                             for p, s in abstract_params(model).items()})


@pytest.mark.parametrize("point", ["save_model_checkpoint.written", "save_model_checkpoint.swapped"])
def test_kill_during_convert_overwrite_keeps_a_complete_checkpoint(tmp_path, point):
    from nafnet_jax.tools import convert
    model = _sidd_tiny()
    old, new = _random_params(model, 1), _random_params(model, 2)
    out = tmp_path / "converted"
    checkpointing.save_model_checkpoint(out, old, {"name": "NAFNet-SIDD-width32", "width": 4,
                                                   "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]})
    src = tmp_path / "new.safetensors"
    convert.save_torch_checkpoint(convert.flax_to_torch(new, model), str(src))
    command = [sys.executable, "-m", "nafnet_jax.tools.convert", str(src), str(out), "--model", "NAFNet-SIDD-width32",
               *TINY_SET, "--overwrite"]
    proc = subprocess.run(command, env=dict(_child_env(), NAFNET_FAULT_POINT=point), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    params, _ = checkpointing.load_model_checkpoint(out, report=lambda _: None)
    want = old if point.endswith("written") else new
    assert _tree_equal(params, want), f"killed at {point}: {out} holds neither complete checkpoint"
    if point.endswith("written"):  # a rerun finishes the job and leaves no partial copy behind
        proc = subprocess.run(command, env=_child_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _tree_equal(checkpointing.load_model_checkpoint(out)[0], new)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "new.safetensors"]


# --------------------------------------------------------------------------------------------------
# The real command lines with bad inputs: exit status 2, one line naming the culprit, nothing written.

@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"), n_train=3, n_eval=1, size=24)


def _snapshot(root: pathlib.Path) -> dict:
    """Every file under `root` and its bytes (so an added, removed or changed file shows)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _existing_run(root: pathlib.Path) -> pathlib.Path:
    """A workdir as an earlier run leaves it (its files' bytes are what must survive)."""
    run = root / "run"
    (run / "checkpoints" / "3" / "state").mkdir(parents=True)
    (run / "config.json").write_text('{"model": {"width": 4}}\n')
    (run / "checkpoints" / "3" / "state" / "_METADATA").write_text("{}")
    (run / "events.out.tfevents.1.host").write_bytes(b"\x00events")
    return run


def _copy_pairs(pairs, root, edit):
    """A copy of the paired folders with one defect made by `edit(train_lq, train_gt)`."""
    lq, gt = root / "lq", root / "gt"
    shutil.copytree(pairs["train_lq"], lq)
    shutil.copytree(pairs["train_gt"], gt)
    culprit = edit(lq, gt)
    return [f"--config.data.lq_dir={lq}", f"--config.data.gt_dir={gt}"], culprit


def _no_gt(pairs, root):
    return [f"--config.data.lq_dir={pairs['train_lq']}", "--config.data.gt_dir="], "data.gt_dir"


def _empty_gt(pairs, root):
    def edit(lq, gt):
        for f in gt.iterdir():
            f.unlink()
        return str(gt)
    return _copy_pairs(pairs, root, edit)


def _unpaired_name(pairs, root):
    def edit(lq, gt):
        (gt / "img01.png").rename(gt / "other.png")
        return "img01"
    return _copy_pairs(pairs, root, edit)


def _size_mismatch(pairs, root):
    def edit(lq, gt):
        from PIL import Image
        Image.new("RGB", (20, 24)).save(gt / "img02.png")
        return "img02"
    return _copy_pairs(pairs, root, edit)


def _corrupt_image(pairs, root):
    def edit(lq, gt):
        path = lq / "img02.png"  # the last pair: in every sample
        path.write_bytes(path.read_bytes()[:120])
        return str(path)
    return _copy_pairs(pairs, root, edit)


TRAIN_CASES = {
    # case id: (make(pairs, root) -> (extra flags, culprit), devices)
    "unknown_key": (lambda p, r: (["--config.train.nosuchkey=1"], "train.nosuchkey"), 1),
    "no_gt_dir_over_an_existing_run": (_no_gt, 1),
    "batch_not_divisible_by_devices": (lambda p, r: (["--config.train.batch_size=3"], "train.batch_size=3"), 2),
    "negative_batch": (lambda p, r: (["--config.train.batch_size=-4"], "train.batch_size=-4"), 1),
    "empty_gt_dir": (_empty_gt, 1),
    "unpaired_names": (_unpaired_name, 1),
    "sizes_differ": (_size_mismatch, 1),
    "corrupt_image": (_corrupt_image, 1),
    "workdir_is_a_file": (lambda p, r: ([], "is a file"), 1),
}
# Each case costs a train.py start (~15 s here): the default suite runs these, the rest are `slow`.
DEFAULT_CASES = ("unknown_key", "no_gt_dir_over_an_existing_run")


def _one_error_line(stderr: str, prog: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("case", [c if c in DEFAULT_CASES else pytest.param(c, marks=pytest.mark.slow)
                                  for c in TRAIN_CASES])
def test_train_py_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path, pairs, case):
    make, devices = TRAIN_CASES[case]
    extra, culprit = make(pairs, tmp_path)
    run = _existing_run(tmp_path)
    if case == "workdir_is_a_file":
        run = tmp_path / "a_file"
        run.write_text("not a directory")
    before = _snapshot(tmp_path)
    keys = {e.split("=", 1)[0] for e in extra}  # the case's own value of a key replaces the default one
    overrides = [o for o in tiny_overrides(pairs, total_steps=2) if o.split("=", 1)[0] not in keys]
    extra = [e for e in extra if not e.endswith("=")]  # 'KEY=' only removes the default
    proc = subprocess.run(train_command(run, [*overrides, *extra]), env=train_env(devices), cwd=REPO,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr, "train.py")
    assert culprit in line, line
    assert _snapshot(tmp_path) == before, "a failed run changed or added files"


def test_data_preflight_samples_by_default_and_checks_every_image_on_request(tmp_path):
    from PIL import Image

    from nafnet_jax.data import default_data_config
    from nafnet_jax.data.images import BadDataError
    from nafnet_jax.data.preflight import check_data, sample_indices
    assert sample_indices(3) == [0, 1, 2]
    assert sample_indices(100, 5) == [0, 25, 50, 74, 99]
    lq, gt = tmp_path / "lq", tmp_path / "gt"
    lq.mkdir(), gt.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # noise: the data is most of the file
        for folder in (lq, gt):
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    unsampled = [i for i in range(20) if i not in sample_indices(20)][0]
    bad = lq / f"{unsampled:02d}.png"
    bad.write_bytes(bad.read_bytes()[:400])  # header intact, pixels cut off
    data = default_data_config()
    data.dataset, data.lq_dir, data.gt_dir = "paired_folder", str(lq), str(gt)
    checks = check_data(data, images="sample", need_eval=False)
    assert [(c.split, c.pairs, c.decoded) for c in checks] == [("train", 20, 8)]
    with pytest.raises(BadDataError, match=str(bad)):
        check_data(data, images="all", need_eval=False)
    with pytest.raises(BadDataError, match="data.eval_gt_dir"):
        check_data(data, images="none", need_eval=True)


def test_eval_py_pair_without_gt_exits_2_naming_it(tmp_path, pairs):
    lq = tmp_path / "lq"
    shutil.copytree(pairs["eval_lq"], lq)
    (lq / "orphan.png").write_bytes((lq / "img00.png").read_bytes())
    checkpoint = _save_steps(tmp_path / "ckpt", steps=(1,))
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--config", str(REPO / "configs" / "demo.py"),
                           f"--checkpoint={checkpoint}", f"--lq_dir={lq}", f"--gt_dir={pairs['eval_gt']}",
                           f"--output_dir={tmp_path / 'out'}"], env=train_env(1), cwd=REPO, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-3000:]
    assert "orphan.png" in _one_error_line(proc.stderr, "eval.py")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Resume end to end (the trainer in this process): damage falls back; a refused rerun changes nothing.

def _tiny_train_config(pairs, **train):
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.width, config.model.enc_blk_nums = 4, (1,)
    config.model.middle_blk_num, config.model.dec_blk_nums = 1, (1,)
    d = config.data
    d.dataset, d.lq_dir, d.gt_dir = "paired_folder", pairs["train_lq"], pairs["train_gt"]
    d.eval_lq_dir, d.eval_gt_dir = pairs["eval_lq"], pairs["eval_gt"]
    d.crop_size, d.crops_per_image = 16, 1
    t = config.train
    t.total_steps, t.batch_size, t.log_every, t.eval_every, t.checkpoint_every = 4, 4, 1, 0, 2
    t.async_checkpoints, t.progress_bar = False, False
    t.update(train)
    return config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, pairs):
    """A finished 4-step run with checkpoints at steps 2 and 4, and its final parameters."""
    from nafnet_jax.training.trainer import train_and_evaluate
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train_and_evaluate(_tiny_train_config(pairs), str(workdir))
    params, _ = checkpointing.load_model_checkpoint(workdir / "checkpoints" / "4")
    return workdir, params


@pytest.mark.slow  # trains 4 steps twice in this process (about a minute on a loaded 2-core machine)
def test_training_resumes_past_a_damaged_newest_checkpoint_and_ends_identical(tmp_path, pairs, trained_run):
    from nafnet_jax.training.trainer import train_and_evaluate
    source, final = trained_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    _damage(workdir / "checkpoints" / "4", "data_file_missing")
    result = train_and_evaluate(_tiny_train_config(pairs), str(workdir))
    assert result["step"] == 4 and not result["interrupted"]
    params, _ = checkpointing.load_model_checkpoint(workdir / "checkpoints" / "4")
    assert _tree_equal(params, final), "resuming from step 2 did not reproduce step 4 exactly"
    kept = list((workdir / checkpointing.DAMAGED_SUBDIR).iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("4-")


def test_a_rerun_refused_for_another_model_leaves_every_file_byte_identical(tmp_path, pairs):
    from nafnet_jax.training.trainer import config_to_dict, train_and_evaluate
    config = _tiny_train_config(pairs)
    workdir = _existing_run(tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    manager = checkpointing.create_manager(workdir / "checkpoints", async_save=False)
    manager.save(2, args=ocp.args.Composite(**{  # only the saved config is read before the refusal
        checkpointing.STATE: ocp.args.PyTreeSave({"params": _params(2)}),
        checkpointing.CONFIG: ocp.args.JsonSave(config_to_dict(config))}))
    manager.wait_until_finished()
    manager.close()
    before = _snapshot(workdir)
    config.model.width = 8
    with pytest.raises(checkpointing.ModelMismatchError, match="model.width: checkpoint has 4, config has 8"):
        train_and_evaluate(config, str(workdir))
    assert _snapshot(workdir) == before, "the refused run changed files of the existing run"


@_ORBAX_LOOP_NOISE
def test_nafnet_restore_uses_the_newest_intact_step_and_says_so(tmp_path, capsys):
    from nafnet_jax.data import image_io
    from nafnet_jax.tools import restore
    from tiny_models import random_params, tiny_model_and_params
    model, params1, config = tiny_model_and_params(levels=1, tlc_train_size=None, seed=1)
    manager = checkpointing.create_manager(tmp_path / "ckpt", async_save=False)
    for step, params in ((1, params1), (2, random_params(model, seed=2))):
        manager.save(step, args=ocp.args.Composite(**{
            checkpointing.STATE: ocp.args.PyTreeSave({"params": params}),
            checkpointing.CONFIG: ocp.args.JsonSave({"model": config})}))
    manager.wait_until_finished()
    manager.close()
    hit = _damage(tmp_path / "ckpt" / "2", "truncated")
    image_io.write_png(tmp_path / "a.png", np.full((16, 16, 3), 128, np.uint8))
    code = restore.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--checkpoint",
                         str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"warning: checkpoint step 2 is damaged: {hit}" in err and "using checkpoint step 1" in err, err
    want = model.apply({"params": params1}, image_io.read_image(tmp_path / "a.png").rgb[None])[0]
    got = image_io.read_image(tmp_path / "out" / "a.png").rgb
    assert np.abs(got - np.clip(np.asarray(want), 0, 1)).max() <= 1 / 255 + 1e-6
