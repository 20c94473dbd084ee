"""Drop-path (stochastic depth): timm's semantics in the blocks, the per-block schedule, exact evaluation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import InvalidRngError

from nafnet_jax.config import base_config, validate_config
from nafnet_jax.models import NAFNET_BLOCK, DropPath, RestorationBlock, UNet, drop_path, drop_path_rates

TINY = dict(width=4, enc_blk_nums=(1, 1), middle_blk_num=2, dec_blk_nums=(1, 1))  # 6 blocks


def _binomial_tolerance(rate: float, n: int) -> float:
    return 5.0 * np.sqrt(rate * (1.0 - rate) / n)  # 5 sigma; the keys are fixed, so never flaky


def test_drop_path_drops_whole_samples_at_the_rate_and_rescales_survivors():
    rate, n = 0.25, 20_000
    x = jax.random.uniform(jax.random.key(0), (n, 2, 2, 3), minval=0.5, maxval=1.5)
    out = np.asarray(drop_path(x, rate, jax.random.key(1)))
    dropped = np.all(out == 0.0, axis=(1, 2, 3))
    kept = np.all(np.isclose(out, np.asarray(x) / (1.0 - rate), rtol=1e-6, atol=0.0), axis=(1, 2, 3))
    assert np.all(dropped ^ kept), "each sample must be dropped whole or kept whole, scaled by 1/(1-rate)"
    assert abs(dropped.mean() - rate) < _binomial_tolerance(rate, n), f"dropped fraction {dropped.mean()}"


def test_drop_path_is_unbiased_over_draws():
    rate, draws = 0.3, 4000
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
    keys = jax.random.split(jax.random.key(1), draws)
    outs = np.asarray(jax.vmap(lambda k: drop_path(x, rate, k))(keys), np.float64)  # float64 mean
    sigma = np.abs(np.asarray(x)) * np.sqrt(rate / (1.0 - rate)) / np.sqrt(draws)
    np.testing.assert_array_less(np.abs(outs.mean(0) - np.asarray(x)), 5 * sigma + 1e-7)


def test_per_batch_drop_path_keeps_or_drops_the_whole_batch():
    """NAFSSR's variant: one draw for the batch."""
    rate, draws = 0.2, 4000
    x = jnp.ones((5, 2, 2, 3))
    outs = np.asarray(jax.vmap(lambda k: drop_path(x, rate, k, per_sample=False))(
        jax.random.split(jax.random.key(0), draws)))
    per_draw = outs.reshape(draws, -1)
    assert np.all(per_draw.min(1) == per_draw.max(1)), "a per-batch draw must treat every sample alike"
    assert set(np.unique(per_draw)) <= {0.0, np.float32(1.0 / (1.0 - rate))}
    assert abs((per_draw[:, 0] == 0).mean() - rate) < _binomial_tolerance(rate, draws)


def test_drop_path_rate_zero_is_the_identity_and_bad_rates_are_refused():
    x = jnp.arange(6.0).reshape(1, 1, 2, 3)
    assert drop_path(x, 0.0, jax.random.key(0)) is x
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rate"):
            drop_path(x, rate, jax.random.key(0))


def test_drop_path_layer_needs_no_rng_in_evaluation():
    x = jnp.ones((2, 1, 1, 3))
    assert DropPath(0.5).apply({}, x, True) is x     # no 'drop_path' rng given: none is asked for
    with pytest.raises(InvalidRngError):             # training without the stream is an error, not a no-op
        DropPath(0.5).apply({}, x, False)


def random_params(module: nn.Module, x, scale: float, seed: int = 0):
    """N(0, scale^2) parameters of the module's shapes (nonzero beta/gamma: the blocks are not identities).

    From `eval_shape` and NumPy: compiling a real init (all its RNG) costs a minute on a loaded CPU.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), jnp.float32), shapes)


def _randomised_block_params(x, zero: str):
    params = random_params(RestorationBlock(NAFNET_BLOCK), x, 0.3)
    return {**params, zero: jnp.zeros_like(params[zero])}


@pytest.mark.parametrize("branch, silenced", [("beta", "gamma"), ("gamma", "beta")])
def test_block_drop_path_matches_the_deterministic_block_in_expectation(branch, silenced):
    """With the other branch's scale at zero the block is linear in the keep mask: the mean over draws is
    the evaluation output, and a dropped sample is returned unchanged."""
    rate, draws = 0.3, 3000
    x = jax.random.normal(jax.random.key(2), (4, 6, 6, 4))
    params = _randomised_block_params(x, silenced)
    block = RestorationBlock(NAFNET_BLOCK, drop_path_rate=rate)
    want = np.asarray(jax.jit(block.apply)({"params": params}, x))        # deterministic=True: no rng
    keys = jax.random.split(jax.random.key(3), draws)
    outs = np.asarray(jax.jit(jax.vmap(
        lambda k: block.apply({"params": params}, x, False, rngs={"drop_path": k})))(keys), np.float64)
    spread = np.abs(want - np.asarray(x)) * np.sqrt(rate / (1 - rate)) / np.sqrt(draws)
    np.testing.assert_array_less(np.abs(outs.mean(0) - want), 5 * spread + 1e-5)
    unchanged = np.all(np.isclose(outs, np.asarray(x)[None], atol=1e-6), axis=(2, 3, 4))  # (draws, N)
    assert abs(unchanged.mean() - rate) < _binomial_tolerance(rate, unchanged.size), unchanged.mean()


def test_the_linear_schedule_rises_from_zero_to_the_rate_over_the_blocks():
    np.testing.assert_allclose(drop_path_rates(5, 0.2), [0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(3, 0.1, "constant") == (0.1, 0.1, 0.1)
    assert drop_path_rates(1, 0.1) == (0.0,)  # torch.linspace(0, rate, 1)
    assert drop_path_rates(4, 0.0) == (0.0,) * 4


def test_the_unet_gives_each_block_its_rate_in_block_order():
    model = UNet(drop_path_rate=0.5, **TINY)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, RestorationBlock) and context.method_name == "__call__":
            seen.append((context.module.name, context.module.drop_path_rate))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    order = ["encoders_0_0", "encoders_1_0", "middle_blks_0", "middle_blks_1", "decoders_0_0", "decoders_1_0"]
    assert [name for name, _ in seen] == order
    np.testing.assert_allclose([rate for _, rate in seen], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])


@pytest.fixture(scope="module")
def tiny_unet_params():
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    return x, random_params(UNet(**TINY), x, 0.1)


def _evaluate(model, params, x):
    return np.asarray(jax.jit(model.apply, static_argnums=2)({"params": params}, x, True))


def test_evaluation_is_exact_and_rng_free_whatever_the_rate(tiny_unet_params):
    x, params = tiny_unet_params
    got = _evaluate(UNet(drop_path_rate=0.5, **TINY), params, x)  # no rngs
    np.testing.assert_array_equal(got, _evaluate(UNet(**TINY), params, x))


def test_rate_zero_adds_no_parameters_and_training_mode_changes_nothing(tiny_unet_params):
    x, params = tiny_unet_params
    shapes = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(m.init, jax.random.key(0), x))
    assert shapes(UNet(drop_path_rate=0.3, **TINY)) == shapes(UNet(**TINY))
    model = UNet(**TINY)
    train_mode = jax.jit(model.apply, static_argnums=2)({"params": params}, x, False)  # rate 0: no rng either
    np.testing.assert_array_equal(np.asarray(train_mode), _evaluate(model, params, x))


def test_training_mode_drops_with_the_key_and_remat_draws_the_same_masks(tiny_unet_params):
    x, params = tiny_unet_params
    model = UNet(drop_path_rate=0.5, **TINY)

    def trainer_of(m):
        apply = jax.jit(lambda key: m.apply({"params": params}, x, False, rngs={"drop_path": key}))
        return lambda seed: np.asarray(apply(jax.random.key(seed)))

    run, run_remat = trainer_of(model), trainer_of(model.clone(remat=True))
    assert not np.allclose(run(0), run(1)), "different keys must give different masks"
    np.testing.assert_array_equal(run(0), run(0))
    np.testing.assert_allclose(run_remat(0), run(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key, value", [("drop_path_rate", 1.0), ("drop_path_rate", -0.1),
                                        ("drop_path_schedule", "cosine")])
def test_config_validation_names_a_bad_drop_path_setting(key, value):
    config = base_config()
    config.model[key] = value
    with pytest.raises(ValueError, match=f"model.drop_path_(rate|schedule).*{value}"):
        validate_config(config)
