"""Every JAX transformation works on the default (portable) model, checked against another way.

The portable model (platform=None, what `get_model` and `build_model` give) has no
`custom_vjp` anywhere, so forward mode works: jvp against central differences, jacfwd
against jacrev, a forward-over-reverse Hessian-vector product against differences of
`jax.grad`. The CPU-specialised model (platform='cpu') computes the same values and
gradients and is reverse mode only; a model for TPU carries no CPU workaround at all.
All in float64 on a width-4 model with TLC's local pooling taken, so a 1e-9 agreement
is meaningful.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from nafnet_jax.models import build_model, for_platform, get_model
from nafnet_jax.models.layers import resolve_depthwise_impl

# One level; TLC trained at 4x4 gives level-0 box (6, 6) < the 8x10 input: the local pool runs.
TINY = {"name": None, "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1],
        "tlc_train_size": [4, 4], "param_dtype": "float64"}
# No level, one block (cheaper to compile twice differentiated); TLC's box (6, 6) still local.
ONE_BLOCK = dict(TINY, enc_blk_nums=[], dec_blk_nums=[])


def _params(model, x_shape, seed=0):
    """Every parameter random (beta, gamma and LayerNorms too), without compiling init."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, jnp.float64))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), abstract)


def _tree_dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def setup(x64):
    model = build_model(TINY)
    assert model.platform is None, "build_model without platform must give the portable model"
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(1, 8, 10, 3)))
    variables = _params(model, x.shape)
    return model, variables, x


@pytest.fixture(scope="module")
def jvp_wrt_input(setup):
    """v -> J v for the setup's model at its input, compiled once for the tests below."""
    model, variables, x = setup
    return jax.jit(lambda x, v: jax.jvp(lambda x: model.apply(variables, x), (x,), (v,))[1])


def test_jvp_matches_central_differences(setup, jvp_wrt_input):
    model, variables, x = setup
    f = jax.jit(lambda x: model.apply(variables, x))
    v = jnp.asarray(np.random.default_rng(2).normal(size=x.shape))
    tangent = jvp_wrt_input(x, v)
    eps = 1e-5
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    err = float(jnp.max(jnp.abs(tangent - fd)) / jnp.max(jnp.abs(fd)))
    assert float(jnp.max(jnp.abs(tangent))) > 1e-3, "the tangent is ~0: the test would prove nothing"
    assert err < 1e-7, f"jvp differs from central differences by {err:.3g} (relative)"


def test_jvp_and_vjp_are_transposes(setup, jvp_wrt_input):
    """<u, J v> == <J^T u, v>: forward and reverse mode agree on the same linear map."""
    model, variables, x = setup
    f = lambda x: model.apply(variables, x)
    r = np.random.default_rng(3)
    u, v = (jnp.asarray(r.normal(size=x.shape)) for _ in range(2))
    jv = jvp_wrt_input(x, v)
    jtu = jax.jit(lambda x, u: jax.vjp(f, x)[1](u)[0])(x, u)
    lhs, rhs = float(jnp.vdot(u, jv)), float(jnp.vdot(jtu, v))
    assert lhs == pytest.approx(rhs, rel=1e-10), f"<u, Jv> = {lhs} but <J^T u, v> = {rhs}"


def test_jacfwd_equals_jacrev_on_a_small_input(x64):
    model = build_model(TINY)
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(1, 4, 6, 3)))  # 72 inputs and outputs
    variables = _params(model, x.shape, seed=5)
    f = lambda x: model.apply(variables, x)
    fwd = jax.jit(jax.jacfwd(f))(x)
    rev = jax.jit(jax.jacrev(f))(x)
    assert fwd.shape == x.shape * 2
    np.testing.assert_allclose(fwd, rev, rtol=0, atol=1e-12, err_msg="jacfwd != jacrev")


def test_hessian_vector_product_of_the_loss_wrt_params(setup):
    """Forward-over-reverse HVP against central differences of jax.grad, and H symmetric."""
    _, _, x = setup
    model = build_model(ONE_BLOCK)
    variables = _params(model, x.shape, seed=7)
    gt = jnp.clip(x + 0.1, 0, 1)
    params = variables["params"]
    # The PSNR loss in float64 (nafnet_jax's computes in float32, too coarse for differences).
    loss = lambda p: jnp.log(jnp.mean(jnp.square(model.apply({"params": p}, x) - gt)) + 1e-8)
    grad = jax.jit(jax.grad(loss))
    hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])
    r = np.random.default_rng(6)
    u, v = (jax.tree.map(lambda a: jnp.asarray(r.normal(size=a.shape)), params) for _ in range(2))

    hv = hvp(params, v)
    eps = 1e-5
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * d, params, v)
    fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), grad(shifted(eps)), grad(shifted(-eps)))
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(fd))
    err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(hv), jax.tree.leaves(fd)))
    assert scale > 1e-3, "the HVP is ~0: the test would prove nothing"
    assert err < 1e-6 * scale, f"HVP differs from differences of grad by {err:.3g} (scale {scale:.3g})"
    uhv, vhu = float(_tree_dot(u, hv)), float(_tree_dot(v, hvp(params, u)))
    assert uhv == pytest.approx(vhu, rel=1e-8), f"u.Hv = {uhv} but v.Hu = {vhu}"


def test_cpu_model_gives_the_portable_models_values_and_gradients(setup):
    _, _, x = setup
    model = build_model(ONE_BLOCK)  # both workarounds are per block; one is enough
    variables = _params(model, x.shape, seed=8)
    cpu = for_platform(model, "cpu")

    def value_and_grads(m):
        loss = lambda v, x: jnp.sum(jnp.sin(3 * m.apply(v, x)))  # a cotangent that is not all ones
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables, x)

    (want, (want_dp, want_dx)), (got, (got_dp, got_dx)) = value_and_grads(model), value_and_grads(cpu)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    np.testing.assert_allclose(got_dx, want_dx, rtol=0, atol=1e-11, err_msg="d/dx differs")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got_dp), jax.tree.leaves(want_dp)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-11, err_msg=f"d/d{jax.tree_util.keystr(path)}")


def test_cpu_model_is_reverse_mode_only(setup):
    """The documented cost of platform='cpu' (UNet docstring): forward mode raises."""
    model, variables, x = setup
    cpu = for_platform(model, "cpu")
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: cpu.apply(variables, x), (x,), (x,))


def _primitives(jaxpr) -> set:
    """Names of every primitive in a (closed) jaxpr, sub-jaxprs included."""
    names = set()
    for eqn in jaxpr.jaxpr.eqns if hasattr(jaxpr, "jaxpr") else jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize("platform,has_workarounds", [("tpu", False), ("gpu", False), (None, False),
                                                      ("cpu", True)])
def test_cpu_workarounds_only_in_a_model_built_for_cpu(platform, has_workarounds):
    """The train-step gradient of a model for TPU (compiled from this CPU host) has neither the
    shifted conv's / the barrier's custom_vjp nor the barrier's while loop; one for CPU has both."""
    model = for_platform(get_model("NAFNet-GoPro-width32", width=4, enc_blk_nums=(1,), middle_blk_num=1,
                                   dec_blk_nums=(1,)), platform)
    assert resolve_depthwise_impl(model.depthwise_impl, platform) == ("shifted" if has_workarounds else "xla")
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    grad = jax.grad(lambda v, x: jnp.sum(model.apply(v, x)))
    names = _primitives(jax.make_jaxpr(grad)(variables, x))
    workarounds = {n for n in names if "custom_vjp" in n or n == "while"}
    assert bool(workarounds) == has_workarounds, f"platform={platform}: found {sorted(workarounds)}"
