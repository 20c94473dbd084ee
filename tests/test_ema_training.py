"""EMA end to end in the trainer: validated beside the raw parameters, ranks checkpoints, loads back.

Slow (one real training compile plus two validation compiles, about 2 minutes on 2 CPU cores); the
default suite covers the same pieces one at a time in test_validation.py (Validator with EMA params,
the best-checkpoint ranking) and test_eval.py / test_restore.py / test_convert.py (--use_ema).
"""

import numpy as np
import pytest

pytestmark = pytest.mark.slow

from trainer_helpers import config_from_overrides, tiny_overrides, write_pairs


def _scalar_events(workdir, tag):
    """{step: value} of a scalar the trainer wrote to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    acc = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """4 steps with an EMA (decay 0.5: it trails the parameters visibly), validated at steps 2 and 4,
    checkpoints ranked by the EMA's PSNR, keeping only the latest besides the best."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache
    from nafnet_jax.training.trainer import train_and_evaluate

    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    dirs = write_pairs(tmp_path_factory.mktemp("pairs"), n_train=4, n_eval=2, size=24)
    workdir = tmp_path_factory.mktemp("ema") / "run"
    config = config_from_overrides(tiny_overrides(dirs, total_steps=4, extra=[
        "--config.train.ema_decay=0.5", "--config.train.best_metric=val/psnr_ema",
        "--config.train.eval_every=2", "--config.train.eval_at_steps=()", "--config.train.checkpoint_every=2",
        "--config.train.keep_checkpoints=1", "--config.train.compilation_cache_dir=none",
        "--config.optimizer.lr=0.01"]))
    try:
        result = train_and_evaluate(config, str(workdir))
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
        compilation_cache.reset_cache()
    return workdir, result


def test_validation_logs_ema_scores_beside_the_raw_ones(ema_run):
    workdir, result = ema_run
    for tag in ("val/psnr", "val/ssim", "val/psnr_ema", "val/ssim_ema"):
        assert sorted(_scalar_events(workdir, tag)) == [2, 4], f"{tag} not logged at the validation steps"
    raw, ema = _scalar_events(workdir, "val/psnr"), _scalar_events(workdir, "val/psnr_ema")
    assert raw[4] != ema[4], "the EMA parameters scored exactly as the raw ones: the test would prove nothing"
    assert result["val"]["val/psnr_ema"] == pytest.approx(ema[4])


def test_the_kept_best_checkpoint_is_the_best_by_ema_psnr(ema_run):
    from nafnet_jax.training import checkpointing
    workdir, _ = ema_run
    ema = _scalar_events(workdir, "val/psnr_ema")
    manager = checkpointing.create_manager(workdir / "checkpoints", read_only=True)
    try:
        best = checkpointing.best_step(manager)
        assert best == max(ema, key=ema.get), f"best step {best}; EMA PSNR per step {ema}"
        metrics = manager.metrics(best)
        assert metrics[checkpointing.BEST_METRIC] == pytest.approx(ema[best], abs=1e-4)
        assert metrics["val_psnr"] == pytest.approx(_scalar_events(workdir, "val/psnr")[best], abs=1e-4)
    finally:
        manager.close()


def test_a_trained_checkpoint_loads_its_ema_parameters(ema_run):
    from nafnet_jax.training.checkpointing import load_model_checkpoint
    workdir, result = ema_run
    raw, _ = load_model_checkpoint(workdir, step=4)
    ema, _ = load_model_checkpoint(workdir, step=4, use_ema=True)
    state = result["state"]
    for got, want in ((raw, state.params), (ema, state.ema_params)):
        for a, b in zip(jax_leaves(got), jax_leaves(want)):
            np.testing.assert_array_equal(a, np.asarray(b))
    assert any(np.any(a != b) for a, b in zip(jax_leaves(raw), jax_leaves(ema)))


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]
