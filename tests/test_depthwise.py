"""The shifted depthwise 3x3 (with its hand-written VJP) computes what XLA's grouped conv computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nafnet_jax.models.layers import (depthwise_conv3x3_shifted, depthwise_conv3x3_shifted_tpu,
                                      resolve_depthwise_impl)

# The CPU formulation and the TPU one (same forward, kernel gradient as per-tap sums).
SHIFTED = pytest.mark.parametrize("shifted", [depthwise_conv3x3_shifted, depthwise_conv3x3_shifted_tpu],
                                  ids=["cpu_rows", "tpu_taps"])


def grouped_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])


def _inputs(dtype, shape=(2, 7, 9, 5)):
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=shape), dtype)
    k = jnp.asarray(r.normal(size=(3, 3, 1, shape[-1])), dtype)
    g = jnp.asarray(r.normal(size=shape), dtype)  # a cotangent that is not all ones
    return x, k, g


def _value_and_vjp(fn, x, k, g):
    out, vjp = jax.vjp(fn, x, k)
    return (out, *vjp(g))


@SHIFTED
@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_forward_and_both_gradients_match_the_grouped_conv(dtype, tol, shifted):
    with jax.enable_x64(dtype == jnp.float64):
        x, k, g = _inputs(dtype)
        got = _value_and_vjp(shifted, x, k, g)
        want = _value_and_vjp(grouped_conv, x, k, g)
        for name, a, b in zip(("output", "dx", "dkernel"), got, want):
            err = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
            assert err < tol, f"{name}: relative error {err:.3g} vs the grouped conv"


@SHIFTED
def test_gradient_under_jit_and_remat_matches(shifted):
    x, k, g = _inputs(jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(jax.checkpoint(fn)(x, k) * g)

    got = jax.jit(jax.grad(loss(shifted), argnums=(0, 1)))(x, k)
    want = jax.grad(loss(grouped_conv), argnums=(0, 1))(x, k)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_accumulates_in_float32():
    x, k, _ = _inputs(jnp.float32, shape=(1, 16, 16, 8))
    ref = grouped_conv(x, k)
    out = depthwise_conv3x3_shifted(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
    assert err < 2e-2, f"bfloat16 result {err:.3g} away from float32"


@pytest.mark.parametrize("platform,want", [("cpu", "shifted"), ("gpu", "xla"), ("tpu", "xla"), (None, "xla")])
def test_auto_resolves_from_the_platform_compiled_for_not_the_host(platform, want):
    """This test process runs on CPU; only a model built for CPU gets the shifted formulation."""
    assert resolve_depthwise_impl("auto", platform) == want
    for explicit in ("xla", "shifted"):  # an explicit choice is kept on every platform
        assert resolve_depthwise_impl(explicit, platform) == explicit


def test_unknown_impl_or_platform_is_named():
    with pytest.raises(ValueError, match="'fast'"):
        resolve_depthwise_impl("fast", None)
    with pytest.raises(ValueError, match="'cuda'"):
        resolve_depthwise_impl("auto", "cuda")


def test_conv2d_built_for_tpu_with_shifted_matches_the_grouped_conv():
    """The TPU dispatch of `depthwise_impl='shifted'` (run on CPU): same output and gradients as 'xla'."""
    from nafnet_jax.models.layers import Conv2d

    x, _, g = _inputs(jnp.float32, shape=(2, 8, 8, 4))

    def value_and_grads(impl):
        conv = Conv2d(4, (3, 3), padding=1, groups=4, depthwise_impl=impl, platform="tpu")
        params = conv.init(jax.random.key(0), x)
        out, vjp = jax.vjp(lambda p, x: conv.apply(p, x), params, x)
        return out, vjp(g)

    got, want = value_and_grads("shifted"), value_and_grads("xla")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
