"""The train step's RNG streams: derived from (state.rng, state.step) only, distinct per step, per
micro-batch and per stream, the same after a save/restore of the state; evaluation draws nothing.

A toy model stands in for stochastic layers: its output is its input plus uniform noise from the
'drop_path' and 'dropout' streams, so with gt = input (and a learning rate of 0) the MSE loss is a
function of the keys alone, and is recomputed here by running the model on the documented keys."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nafnet_jax.training.losses import get_loss
from nafnet_jax.training.state import init_train_state
from nafnet_jax.training.step import (RNG_STREAMS, make_train_step, micro_batch_rngs, step_key,
                                      stream_keys)


class NoisyIdentity(nn.Module):
    """x * scale + noise(drop_path) + noise(dropout) in training; x * scale when deterministic."""

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        scale = self.param("scale", nn.initializers.ones, (1,))
        y = x * scale
        if not deterministic:
            y = y + 0.1 * jax.random.uniform(self.make_rng("drop_path"), x.shape)
            y = y + 0.01 * jax.random.uniform(self.make_rng("dropout"), x.shape)
        return y


SHAPE = (4, 2, 2, 1)


def _setup(accum=1):
    model = NoisyIdentity()
    tx = optax.sgd(0.0)  # params stay put: the loss then depends on the drawn noise only
    state = init_train_state(model, tx, jax.random.key(7), (1, 2, 2, 1), use_ema=False)
    step = jax.jit(make_train_step(model, tx, get_loss("mse"), grad_accum_steps=accum))
    x = jnp.asarray(np.random.default_rng(0).random(SHAPE), jnp.float32)
    return model, state, step, {"lq": x, "gt": x}


def _expected_loss(model, state, batch, step_number, accum):
    """The MSE of the model run with the documented keys: `step_key` -> micro-batch -> stream keys.

    (Flax derives a layer's key from the stream key and the layer's path, so the reference runs the
    model on the keys rather than drawing the noise here.)"""
    key = step_key(state.rng, step_number)
    n = SHAPE[0] // accum
    losses = []
    for i in range(accum):
        x = batch["lq"][i::accum]  # the step's micro-batch i: rows i, i + accum, ...
        out = model.apply({"params": state.params}, x, False, rngs=micro_batch_rngs(key, i))
        assert out.shape[0] == n
        losses.append(float(jnp.mean(jnp.square(out - x))))
    return float(np.mean(losses))


def test_stream_keys_differ_per_step_and_per_stream_and_repeat_for_the_same_step():
    root = jax.random.key_data(jax.random.key(3))
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    k0, k1 = step_key(root, 0), step_key(root, 1)
    assert not np.array_equal(data(k0), data(k1)), "steps 0 and 1 got the same key"
    np.testing.assert_array_equal(data(step_key(root, 1)), data(k1), "the same (rng, step) gave another key")
    streams = stream_keys(k0)
    assert tuple(streams) == RNG_STREAMS == ("dropout", "drop_path")
    assert not np.array_equal(data(streams["dropout"]), data(streams["drop_path"])), "two streams share a key"
    m0, m1 = micro_batch_rngs(k0, 0), micro_batch_rngs(k0, 1)
    assert not np.array_equal(data(m0["drop_path"]), data(m1["drop_path"])), "micro-batches share a key"


@pytest.mark.parametrize("accum", [1, 2])
def test_each_step_draws_from_its_own_keys_as_documented(accum):
    model, state, step, batch = _setup(accum)
    root = np.asarray(state.rng)
    losses = []
    for i in range(3):
        expected = _expected_loss(model, state, batch, i, accum)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5), f"step {i + 1}: keys not as documented"
    assert len(set(losses)) == 3, f"steps drew the same noise: {losses}"
    np.testing.assert_array_equal(np.asarray(state.rng), root, "the root key changed; resume would not be exact")


def test_the_same_state_and_step_draw_the_same_numbers_after_a_save_and_restore(tmp_path):
    import orbax.checkpoint as ocp

    _, state, step, batch = _setup(accum=2)
    state, _ = step(state, batch)  # step 1 done: the next draws are step 1's
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    a_state, a_metrics = step(state, batch)
    b_state, b_metrics = step(restored, batch)
    assert float(a_metrics["loss"]) == float(b_metrics["loss"]), "the restored state drew other numbers"
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), a_state.params, b_state.params)
    assert all(jax.tree.leaves(same))


def test_evaluation_is_deterministic_and_needs_no_rngs():
    model, state, _, batch = _setup()
    # No rngs are passed: a stochastic layer asking for a key here would raise.
    out1 = model.apply({"params": state.params}, batch["lq"])
    out2 = model.apply({"params": state.params}, batch["lq"], True)
    np.testing.assert_array_equal(np.asarray(out1), np.asarray(batch["lq"]))
    np.testing.assert_array_equal(np.asarray(out1), np.asarray(out2))
