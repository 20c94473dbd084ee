"""The Flax NAFNet/Baseline against the PyTorch original, and its layers against references.

Layer tests compare with PyTorch ops, NumPy or hand-worked values. Model tests run
the original code (spandrel's NAFNet, nafnet_jax/torch_reference's Baseline and TLC)
on the same random weights, with the parameters that start trivial (beta, gamma,
LayerNorm) made random, odd image sizes and batch 2; TLC models see images larger
than their (small) training size, so the local pooling runs at every level.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nafnet_jax.tools.convert import torch_to_flax
from nafnet_jax.models import (ABLATION_LADDER, Baseline, NAFNet, build_model, get_model,
                               pixel_shuffle, simple_gate, tlc_kernels, tlc_pool)
from nafnet_jax.models.layers import Conv2d, channel_layer_norm
from nafnet_jax import torch_reference as ref

F64_TOL = 1e-9
F32_TOL = 1e-5


def _fast_key(seed: int = 0):
    """A PRNG key whose init compiles quickly: jit(init) with the default threefry keys
    spent 34 s in XLA:CPU compilation for a 1-level width-4 UNet (jax 0.10.2, loaded
    2-core machine), ~5x more than with this key. The initialisers and their bounds are
    the same; only the random bits differ."""
    return jax.random.key(seed, impl="unsafe_rbg")


def _random_variables(model, x_shape, seed: int = 0):
    """Every parameter random, without compiling init (shapes from jax.eval_shape)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), abstract)


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


# -------------------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_torch(r):
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 2 * r * r)).astype(np.float32)
    want = _nhwc(torch.nn.PixelShuffle(r)(_nchw(x)))
    got = np.asarray(pixel_shuffle(jnp.asarray(x), r))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want, err_msg=f"pixel_shuffle(r={r}) != torch PixelShuffle")


def test_pixel_shuffle_is_not_depth_to_space():
    """TF's depth_to_space (DCR order: out[h*r+i, w*r+j, c] = in[h, w, (i*r+j)*C + c]) differs."""
    r, c = 2, 3
    x = np.random.default_rng(1).normal(size=(1, 4, 4, c * r * r)).astype(np.float32)
    n, h, w, _ = x.shape
    dcr = x.reshape(n, h, w, r, r, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c)
    err = _max_err(pixel_shuffle(jnp.asarray(x), r), dcr)
    assert err > 0.1, f"pixel_shuffle equals DCR depth_to_space (max diff {err}); it must be CRD"


def _torch_avg_pool(x_nhwc: np.ndarray, kernel) -> np.ndarray:
    with torch.no_grad():
        return _nhwc(ref.AvgPool2d(kernel_size=kernel)(_nchw(x_nhwc)))


@pytest.mark.parametrize("kernel", [(3, 4), (5, 5), (1, 1), (9, 2), (6, 20)])
def test_tlc_pool_local_branch_matches_torch(kernel):
    """Maps 7x9: every kernel here is smaller than the map in at least one dim."""
    x = np.random.default_rng(2).normal(size=(2, 7, 9, 3))
    with jax.enable_x64(True):
        got = np.asarray(tlc_pool(jnp.asarray(x), kernel))
    want = _torch_avg_pool(x, kernel)
    assert got.shape == want.shape == x.shape
    assert _max_err(got, want) <= F64_TOL, f"tlc_pool{kernel} differs from local_arch.AvgPool2d"


@pytest.mark.parametrize("kernel", [(7, 9), (10, 12)])
def test_tlc_pool_falls_back_to_global_mean(kernel):
    x = np.random.default_rng(3).normal(size=(2, 7, 9, 3))
    with jax.enable_x64(True):
        got = np.asarray(tlc_pool(jnp.asarray(x), kernel))
    want = _torch_avg_pool(x, kernel)
    assert got.shape == want.shape == (2, 1, 1, 3)
    assert _max_err(got, want) <= F64_TOL
    assert _max_err(got, x.mean(axis=(1, 2), keepdims=True)) <= F64_TOL


# A level-0 map of a 720x1280 GoPro/REDS frame with the (384, 384) box of tlc_train_size=(256, 256).
LEVEL0 = (1, 720, 1280, 2)


@pytest.mark.parametrize("pattern", ["constant", "random"])
def test_tlc_pool_in_bfloat16_accumulates_in_float32(pattern):
    """A bfloat16 integral image of this map reaches ~3e5 (one bfloat16 step: 2048) and returned
    0.264..0.340 for a constant 0.3; accumulated in float32, the only error left is the final
    rounding to bfloat16 (at most 2**-8 of each value, bfloat16's unit roundoff)."""
    x = (np.full(LEVEL0, 0.3) if pattern == "constant"
         else np.random.default_rng(7).uniform(size=LEVEL0)).astype(np.float32)
    x16 = jnp.asarray(x, jnp.bfloat16)
    pool = jax.jit(lambda x: tlc_pool(x, (384, 384)))
    got = pool(x16)
    want = pool(x16.astype(jnp.float32))  # the same (bfloat16-rounded) input, float32 throughout
    assert got.dtype == jnp.bfloat16 and got.shape == LEVEL0
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want) / jnp.abs(want)))
    assert err <= 2.0 ** -8, f"{pattern} map: bfloat16 tlc_pool off by {err:.3g} (relative)"


def test_tlc_model_in_bfloat16_stays_close_to_float32_at_720x1280(capsys):
    """A whole TLC model (tlc_train_size=(256, 256)) at a full GoPro frame, where every pool is
    local: bfloat16 compute against float32, as PSNR between the two outputs (printed)."""
    from tiny_models import random_params

    kwargs = dict(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,), tlc_train_size=(256, 256))
    model = NAFNet(**kwargs)
    assert tlc_kernels((256, 256), 1) == ((384, 384), (192, 192))  # < (720, 1280) and (360, 640)
    variables = {"params": random_params(model, seed=3, beta_gamma_std=0.5)}
    h, w = 720, 1280
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.5 + 0.3 * np.stack([np.sin(6 * xx + 4 * yy + c) for c in range(3)], -1)
    x = np.clip(img + np.random.default_rng(0).normal(0, 0.05, img.shape), 0, 1)[None].astype(np.float32)
    want = np.asarray(jax.jit(model.apply)(variables, x))
    got = np.asarray(jax.jit(NAFNet(dtype=jnp.bfloat16, **kwargs).apply)(variables, x), np.float32)
    psnr = 10 * np.log10(1.0 / np.mean((got - want) ** 2))
    with capsys.disabled():
        print(f"\n[tlc bf16] PSNR(bfloat16 output, float32 output) at 720x1280: {psnr:.2f} dB")
    assert np.isfinite(psnr) and psnr < 90, "bfloat16 gave float32's output: nothing ran in bfloat16"
    assert psnr >= 45, f"bfloat16 TLC model only {psnr:.2f} dB from float32"


def test_tlc_kernels_for_train_256():
    """Section 1.5.5: 1.5x the training feature size at levels 0..3 and the middle."""
    assert tlc_kernels((256, 256), 4) == ((384, 384), (192, 192), (96, 96), (48, 48), (24, 24))


def test_tlc_kernels_match_torch_warmup_for_odd_train_size():
    """(30, 34) is padded to (32, 36) before the warm-up; kernels differ per dim."""
    torch.manual_seed(0)
    model = ref.make_local(ref.spandrel_nafnet(width=4, enc_blk_nums=[1, 1], middle_blk_num=1,
                                               dec_blk_nums=[1, 1]), (1, 3, 30, 34))
    k = tlc_kernels((30, 34), 2)
    # Decoder level i works at encoder level L-1-i.
    want = {"encoders.0.0.sca.0": k[0], "encoders.1.0.sca.0": k[1], "middle_blks.0.sca.0": k[2],
            "decoders.0.0.sca.0": k[1], "decoders.1.0.sca.0": k[0]}
    assert ref.tlc_pool_kernels(model) == want, f"tlc_kernels gave {k}"


def test_simple_gate_multiplies_first_half_by_second():
    x = jnp.asarray([[[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]]])
    np.testing.assert_array_equal(simple_gate(x), [[[[1 * 4, 2 * 5, 3 * 6]]]])


def test_layer_norm_biased_variance_eps_inside_sqrt():
    """Channel variance ~1e-6, comparable to eps, so where eps goes matters."""
    x = 1e-3 * np.random.default_rng(4).normal(size=(2, 3, 4, 8))
    scale = np.random.default_rng(5).normal(size=8)
    bias = np.random.default_rng(6).normal(size=8)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased
    want = (x - mu) / np.sqrt(var + 1e-6) * scale + bias
    unbiased = (x - mu) / np.sqrt(var * 8 / 7 + 1e-6) * scale + bias
    eps_outside = (x - mu) / (np.sqrt(var) + 1e-6) * scale + bias
    with jax.enable_x64(True):
        norm = channel_layer_norm("norm", param_dtype=jnp.float64)
        got = norm.apply({"params": {"scale": scale, "bias": bias}}, jnp.asarray(x))
    assert _max_err(got, want) <= 1e-9, "channel_layer_norm != (x-mu)/sqrt(var_biased + 1e-6)"
    assert _max_err(want, unbiased) > 1e-3 and _max_err(want, eps_outside) > 1e-3  # test can fail


@pytest.mark.parametrize("in_ch,groups,kernel_size",
                         [(8, 1, (3, 3)), (16, 16, (3, 3)), (8, 1, (1, 1))])
def test_conv_init_is_torch_uniform_fan_in(in_ch, groups, kernel_size):
    """U(-b, b), b = 1/sqrt((in/groups)*kh*kw); a depthwise 3x3 has fan_in 9, b = 1/3."""
    conv = Conv2d(in_ch, kernel_size, padding=kernel_size[0] // 2, groups=groups)
    params = jax.jit(conv.init)(_fast_key(), jnp.zeros((1, 5, 5, in_ch)))["params"]
    bound = 1.0 / np.sqrt((in_ch // groups) * kernel_size[0] * kernel_size[1])
    kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
    assert kernel.shape == (*kernel_size, in_ch // groups, in_ch)
    for name, value in (("kernel", kernel), ("bias", bias)):
        assert np.abs(value).max() <= bound, f"{name} exceeds the torch bound {bound}"
    # ...and actually fills the range (not, e.g., a bound that is too small).
    assert np.abs(kernel).max() > 0.8 * bound, f"kernel max {np.abs(kernel).max()} << bound {bound}"


def test_model_at_init_equals_model_without_blocks():
    """Skip-init: beta = gamma = 0, so every block is the identity and the U-Net at init
    is its intro/downs/ups/ending path alone. (beta/gamma are shared by every block variant.)"""
    model = NAFNet(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
    bare = NAFNet(width=4, enc_blk_nums=(0,), middle_blk_num=0, dec_blk_nums=(0,))
    x = jax.random.uniform(jax.random.key(1), (2, 9, 13, 3))
    variables = jax.jit(model.init)(_fast_key(), x)
    for name in ("encoders_0_0", "middle_blks_0", "decoders_0_0"):
        for leaf in ("beta", "gamma"):
            np.testing.assert_array_equal(variables["params"][name][leaf], 0,
                                          err_msg=f"{name}/{leaf}")
    bare_params = {k: v for k, v in variables["params"].items()
                   if k.split("_")[0] in ("intro", "downs", "ups", "ending")}
    assert set(bare_params) == set(jax.eval_shape(bare.init, jax.random.key(0), x)["params"])
    np.testing.assert_allclose(jax.jit(model.apply)(variables, x),
                               jax.jit(bare.apply)({"params": bare_params}, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("rung", sorted(ABLATION_LADDER))
def test_ablation_ladder_rung_builds_and_runs(rung):
    model = build_model({"block": dataclasses.asdict(ABLATION_LADDER[rung]), "width": 4,
                         "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]})
    x = jax.random.uniform(jax.random.key(1), (1, 7, 5, 3))
    y = jax.jit(model.apply)(_random_variables(model, x.shape), x)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y))), f"{rung}: {y.shape}"


def test_unknown_model_override_is_rejected_by_name():
    with pytest.raises(ValueError, match="widht"):
        get_model("NAFNet-GoPro-width32", widht=16)
    with pytest.raises(ValueError, match="blk_num"):
        build_model({"name": "NAFNet-SIDD-width32", "blk_num": 3})
    with pytest.raises(ValueError, match="activaton"):
        build_model({"width": 4, "block": {"activaton": "gelu"}})


def test_bfloat16_compute_with_float32_params_stays_close():
    kwargs = dict(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
    x = jax.random.uniform(jax.random.key(1), (2, 11, 13, 3))
    bf16 = NAFNet(dtype=jnp.bfloat16, **kwargs)
    variables = _random_variables(bf16, x.shape, seed=2)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    want = jax.jit(NAFNet(**kwargs).apply)(variables, x)
    got = jax.jit(bf16.apply)(variables, x)
    err = _max_err(got, want)
    # Nonzero: the blocks really computed in bfloat16 (8-bit mantissa, ~0.4% per op).
    assert 0 < err <= 0.05 * float(jnp.abs(want).max()), f"bfloat16 output off by {err}"


# -------------------------------------------------------------------------------------------------
# Whole models against PyTorch


TLC_TRAIN = (1, 3, 32, 32)     # NCHW, as the original's train_size
TLC_TRAIN_ODD = (1, 3, 14, 18)  # padded to (16, 20) before the warm-up
LEVELS = dict(width=4, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])


# name -> (torch model factory, Flax model factory, input (N, H, W))
CASES = {
    "nafnet": (lambda: ref.spandrel_nafnet(**LEVELS), functools.partial(NAFNet, **LEVELS),
               (2, 13, 19)),
    "baseline_dw1": (lambda: ref.Baseline(dw_expand=1, **LEVELS),
                     functools.partial(Baseline, dw_expand=1, **LEVELS), (2, 13, 19)),
    "baseline_dw2": (lambda: ref.Baseline(dw_expand=2, **LEVELS),
                     functools.partial(Baseline, dw_expand=2, **LEVELS), (2, 13, 19)),
    "nafnet_tlc": (lambda: ref.make_local(ref.spandrel_nafnet(**LEVELS), TLC_TRAIN),
                   functools.partial(NAFNet, tlc_train_size=TLC_TRAIN[2:], **LEVELS), (2, 61, 75)),
    "baseline_tlc": (lambda: ref.make_local(ref.Baseline(dw_expand=2, **LEVELS), TLC_TRAIN_ODD),
                     functools.partial(Baseline, dw_expand=2, tlc_train_size=TLC_TRAIN_ODD[2:],
                                       **LEVELS), (2, 61, 75)),
}


def _torch_and_input(case: str, seed: int):
    make_torch, _, (n, h, w) = CASES[case]
    torch.manual_seed(seed)
    torch_model = ref.perturb_identity_params_(make_torch().eval(), seed)
    # Noise on a diagonal ramp: local means vary over the image, so TLC's local pooling
    # differs clearly from the global mean.
    ramp = (np.arange(h)[:, None] / h + np.arange(w)[None, :] / w)[None, :, :, None] / 2
    x = 0.6 * ramp + 0.4 * np.random.default_rng(seed).uniform(size=(n, h, w, 3))
    return torch_model, x


def _state_dict(torch_model):
    return {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}


# Each case runs once per depthwise formulation: one in float64, the other in float32
# (a compile costs seconds on CPU, TLC's cumsums most).
FLOAT64_IMPL = {"nafnet": "xla", "baseline_dw1": "shifted", "baseline_dw2": "xla",
                "nafnet_tlc": "shifted", "baseline_tlc": "xla"}
FLOAT32_IMPL = {case: {"xla": "shifted", "shifted": "xla"}[impl]
                for case, impl in FLOAT64_IMPL.items()}


@pytest.mark.parametrize("case,impl", sorted(FLOAT64_IMPL.items()))
def test_matches_pytorch_float64(case, impl):
    torch_model, x = _torch_and_input(case, seed=10)
    torch_model = torch_model.double()
    with torch.no_grad():
        want = _nhwc(torch_model(_nchw(x)))
    with jax.enable_x64(True):
        model = CASES[case][1](param_dtype=jnp.float64, depthwise_impl=impl)
        variables = torch_to_flax(_state_dict(torch_model), model)
        got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    assert got.dtype == np.float64 and got.shape == want.shape
    err = _max_err(got, want)
    assert err <= F64_TOL, f"{case} ({impl}) float64: max abs error {err:.3g} > {F64_TOL}"


@pytest.mark.parametrize("case,impl", sorted(FLOAT32_IMPL.items()))
def test_matches_pytorch_float32(case, impl):
    torch_model, x = _torch_and_input(case, seed=20)
    x = x.astype(np.float32)
    with torch.no_grad():
        want = _nhwc(torch_model(_nchw(x)))
    model = CASES[case][1](depthwise_impl=impl)
    variables = torch_to_flax(_state_dict(torch_model), model)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    assert got.dtype == np.float32
    err = _max_err(got, want)
    assert err <= F32_TOL, f"{case} ({impl}) float32: max abs error {err:.3g} > {F32_TOL}"


@pytest.mark.parametrize("case", ["nafnet_tlc", "baseline_tlc"])
def test_tlc_parity_inputs_take_the_local_branch(case):
    """At the TLC parity input size every pool of the original is local, and that changes the
    output by far more than the parity tolerances: a port with global pooling fails them."""
    local_model, x = _torch_and_input(case, seed=10)
    plain = CASES[{"nafnet_tlc": "nafnet", "baseline_tlc": "baseline_dw2"}[case]][0]()
    plain.load_state_dict(local_model.state_dict(), strict=True)
    with torch.no_grad():
        diff = _max_err(local_model(_nchw(x).float()), plain.eval()(_nchw(x).float()))
    assert diff > 10 * F32_TOL, f"{case}: TLC output ~ global pooling's (diff {diff})"
