"""docs/extending.md, followed literally: its files are the repository's, and its block trains, resumes
and evaluates through the real trainer and eval code (tiny width and crops, in this process)."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from trainer_helpers import config_from_overrides, final_params, tiny_overrides, write_pairs

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"
BLOCK_FILE, CONFIG_FILE = "examples/large_kernel_block.py", "examples/large_kernel_config.py"


@pytest.mark.parametrize("path", [BLOCK_FILE, CONFIG_FILE])
def test_the_doc_shows_each_example_file_verbatim(path):
    match = re.search(rf"`{re.escape(path)}`[^\n]*\n\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/extending.md shows no ```python block right after naming `{path}`"
    assert match.group(1) == (REPO / path).read_text(), f"docs/extending.md's copy of {path} differs from it"


@pytest.fixture
def compile_cache(tmp_path):
    """A persistent compile cache for the runs of one test (the resumed run, same config, loads its train
    step from it); JAX's process-wide cache settings are restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield tmp_path / "compile_cache"
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    compilation_cache.reset_cache()


def test_the_walkthrough_block_trains_resumes_and_evaluates(tmp_path, monkeypatch, compile_cache):
    from nafnet_jax.config import validate_config
    from nafnet_jax.evaluation.evaluate import run_eval
    from nafnet_jax.training import checkpointing, trainer

    monkeypatch.syspath_prepend(str(REPO))  # as for train.py, whose folder (the repo) is on sys.path
    dirs = write_pairs(tmp_path / "data", n_train=4, n_eval=2, size=24)
    # The doc's command: its config file plus command-line overrides (tiny model, data and run).
    config = config_from_overrides(tiny_overrides(dirs, total_steps=4, extra=[
        "--config.train.batch_size=4", "--config.train.checkpoint_every=100",
        f"--config.train.compilation_cache_dir={compile_cache}",
        "--config.train.compilation_cache_min_compile_secs=0", "--config.model.drop_path_rate=0.1"]),
        config_file=REPO / CONFIG_FILE)
    validate_config(config)
    workdir = tmp_path / "run"
    restored_from = []
    real_restore = checkpointing.restore_for_resume
    monkeypatch.setattr(checkpointing, "restore_for_resume",
                        lambda *a, **k: restored_from.append(real_restore(*a, **k)) or restored_from[-1])

    monkeypatch.setenv(trainer.SELF_SIGNAL_ENV, "2:SIGINT")  # Ctrl-C after step 2: checkpoint, clean stop
    first = trainer.train_and_evaluate(config, str(workdir))
    assert first["interrupted"] and first["step"] == 2
    saved = json.loads((workdir / "config.json").read_text())["model"]
    assert saved["block"] == {"name": "nafblock_large_kernel", "kernel_size": 7}
    assert final_params(workdir)["encoders_0_0/conv2/kernel"].shape == (7, 7, 1, 8)

    monkeypatch.delenv(trainer.SELF_SIGNAL_ENV)
    result = trainer.train_and_evaluate(config, str(workdir))  # the same command again
    assert restored_from[0] is None and restored_from[1][0] == 2, "the second run must resume from step 2"
    assert result["step"] == 4 and not result["interrupted"] and np.isfinite(result["train"]["loss"])

    scores = run_eval(config, str(workdir), str(tmp_path / "eval"), lq_dir=dirs["eval_lq"],
                      gt_dir=dirs["eval_gt"], progress=False)
    assert scores["count"] == 2 and np.isfinite(scores["psnr"]) and scores["psnr"] > 10.0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["count"] == 2
