"""NAFSSR (stereo super-resolution) against the PyTorch original, and its parts against references.

The reference is `nafnet_jax.torch_reference.stereo` (the original's NAFSSR_arch.py on
original.py's NAFBlock): float64 parity on odd sizes with the parameters that start
trivial (beta, gamma, LayerNorm) made random; TLC through the original's own warm-up
constructor. Parameter counts are the official code's (NAFNET.md section 3).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nafnet_jax import torch_reference as ref
from nafnet_jax.models import NAFSSR, UNet, build_model, get_model, model_class, tlc_kernels, upsample_bilinear
from nafnet_jax.models.nafssr import NAFBlockSR, batch_to_views, views_to_batch
from nafnet_jax.models.registry import PUBLISHED_NAFSSR, architecture
from nafnet_jax.tools import convert
from nafnet_jax.tools.convert import StateDictMismatchError, flax_to_torch, torch_to_flax
from test_convert import assert_key_table_maps

F64_TOL = 1e-8
F32_TOL = 1e-5


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _state_dict(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _stereo_input(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """A ramp plus noise, so local (TLC) means differ from the global one; right view shifted."""
    ramp = (np.arange(h)[:, None] / h + np.arange(w)[None, :] / w)[None, :, :, None] / 2
    left = 0.6 * ramp + 0.4 * np.random.default_rng(seed).uniform(size=(n, h, w, 3))
    return np.concatenate([left, np.roll(left, 2, axis=2)], axis=-1)


def _random_params(model, seed: int = 0):
    """Every parameter random (beta/gamma too), from the abstract shapes: no init compile."""
    abstract = convert.abstract_params(model)
    rng = np.random.default_rng(seed)
    flat = {p: (0.3 * rng.normal(size=s.shape)).astype(s.dtype) for p, s in abstract.items()}
    return {"params": convert.unflatten_params(flat)}


# -------------------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("scale", [2, 4])
def test_bilinear_upsampling_matches_torch_interpolate(scale):
    """F.interpolate(scale_factor=s, mode='bilinear'), align_corners=False: half-pixel, edge clamp."""
    rng = np.random.default_rng(scale)
    for h, w in [(1, 1), (1, 5), (4, 1), (3, 7)]:
        x = rng.normal(size=(2, h, w, 3))
        want = _nhwc(F.interpolate(_nchw(x), scale_factor=scale, mode="bilinear"))
        with jax.enable_x64(True):
            got = np.asarray(jax.jit(upsample_bilinear, static_argnums=1)(jnp.asarray(x), scale))
        assert got.shape == want.shape == (2, h * scale, w * scale, 3)
        err = _max_err(got, want)
        assert err <= 1e-12, f"x{scale} at {h}x{w}: max abs error {err:.3g}"


def test_align_corners_true_would_fail_the_upsampling_check():
    """The check above can tell the two corner conventions apart."""
    x = np.random.default_rng(0).normal(size=(1, 3, 7, 3))
    half_pixel = _nhwc(F.interpolate(_nchw(x), scale_factor=2, mode="bilinear"))
    corners = _nhwc(F.interpolate(_nchw(x), scale_factor=2, mode="bilinear", align_corners=True))
    assert _max_err(half_pixel, corners) > 0.01


def test_views_stack_on_the_batch_axis_interleaved_and_back():
    x = jnp.arange(2 * 3 * 4 * 6, dtype=jnp.float32).reshape(2, 3, 4, 6)
    stacked = views_to_batch(x)
    assert stacked.shape == (4, 3, 4, 3)
    for i in range(2):  # sample i: left view at 2i, right view at 2i + 1
        np.testing.assert_array_equal(stacked[2 * i], x[i, ..., :3])
        np.testing.assert_array_equal(stacked[2 * i + 1], x[i, ..., 3:])
    np.testing.assert_array_equal(batch_to_views(stacked), x)


# -------------------------------------------------------------------------------------------------
# The whole model against the PyTorch original (float64)

BODY = dict(width=8, num_blks=2)
TLC_TRAIN = (4, 6)  # kernel (6, 9): smaller than the 7x11 test input, so every pool is local


def _torch_nafssr(scale: int, tlc, fusion=(-1, 1000), seed: int = 0):
    """The original's model: NAFSSR's own constructor (warm-up forward) with TLC, else NAFNetSR."""
    torch.manual_seed(seed)
    if tlc is not None:
        net = ref.NAFSSR(up_scale=scale, train_size=(1, 6, *tlc), fusion_from=fusion[0], fusion_to=fusion[1],
                         **BODY)
    else:
        net = ref.NAFNetSR(up_scale=scale, img_channel=3, dual=True, fusion_from=fusion[0], fusion_to=fusion[1],
                           **BODY)
    return ref.perturb_identity_params_(net.eval(), seed)


# x2 and x4, TLC off and on; the x2 case has no SCAM in block 0 (fusion_from=1).
@pytest.mark.parametrize("scale,tlc,fusion", [(2, None, (1, 5)), (4, TLC_TRAIN, (-1, 1000))])
def test_matches_pytorch_float64(scale, tlc, fusion):
    torch_model = _torch_nafssr(scale, tlc, fusion, seed=scale).double()
    x = _stereo_input(2, 7, 11, seed=scale)
    with torch.no_grad():
        want = _nhwc(torch_model(_nchw(x)))
    with jax.enable_x64(True):
        model = NAFSSR(up_scale=scale, tlc_train_size=tlc, fusion_from=fusion[0], fusion_to=fusion[1],
                       param_dtype=jnp.float64, **BODY)
        variables = torch_to_flax(_state_dict(torch_model), model)
        got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    assert got.dtype == np.float64 and got.shape == want.shape == (2, 7 * scale, 11 * scale, 6)
    err = _max_err(got, want)
    assert err <= F64_TOL, f"x{scale} tlc={tlc} fusion={fusion}: max abs error {err:.3g} > {F64_TOL}"


def test_gradients_match_pytorch_float64():
    """The training signal: d(sum(out * w))/d(params) equals the original's autograd (its LayerNorm
    backward included), through SCAM and TLC, for every parameter."""
    torch_model = _torch_nafssr(2, TLC_TRAIN, seed=5).double()
    x = _stereo_input(1, 5, 7, seed=5)
    weights = np.random.default_rng(6).normal(size=(1, 10, 14, 6))
    out = torch_model(_nchw(x))
    (out * _nchw(weights)).sum().backward()
    want = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}
    with jax.enable_x64(True):
        model = NAFSSR(up_scale=2, tlc_train_size=TLC_TRAIN, param_dtype=jnp.float64, **BODY)
        variables = torch_to_flax(_state_dict(torch_model), model)
        grads = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, jnp.asarray(x)) * weights)))(variables)
        got = flax_to_torch(jax.tree.map(np.asarray, grads), model)
    assert sorted(got) == sorted(want)
    errors = {k: _max_err(got[k], want[k]) / max(1.0, float(np.abs(want[k]).max())) for k in want}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= F64_TOL, f"gradient of {worst}: relative error {errors[worst]:.3g}"


def test_tlc_parity_input_takes_the_local_branch():
    """On the parity input the original's local pooling changes the output far beyond the
    tolerance, and its warm-up fixed every block's kernel to tlc_kernels(size, 0)."""
    local = _torch_nafssr(4, TLC_TRAIN)
    kernel = tlc_kernels(TLC_TRAIN, 0)[0]
    assert kernel == (6, 9)
    assert set(ref.tlc_pool_kernels(local).values()) == {kernel}
    assert len(ref.tlc_pool_kernels(local)) == BODY["num_blks"]
    plain = ref.NAFNetSR(up_scale=4, img_channel=3, dual=True, fusion_to=1000, **BODY)
    plain.load_state_dict(local.state_dict(), strict=True)
    x = _nchw(_stereo_input(2, 7, 11, seed=4)).float()
    with torch.no_grad():
        diff = _max_err(local(x), plain.eval()(x))
    assert diff > 100 * F32_TOL, f"TLC output ~ global pooling's (diff {diff})"


def test_published_tlc_kernel_is_45_by_135():
    assert tlc_kernels(get_model("NAFSSR-L-x4").tlc_train_size, 0) == ((45, 135),)


def test_a_converted_flax_model_runs_the_same_in_pytorch():
    """Flax -> PyTorch direction: random Flax parameters, converted, give the Flax outputs."""
    model = NAFSSR(up_scale=2, tlc_train_size=TLC_TRAIN, **BODY)
    variables = _random_params(model, seed=3)
    torch_model = ref.build_torch_nafssr(model).eval()
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in flax_to_torch(variables, model).items()},
                                strict=True)
    x = _stereo_input(1, 9, 8, seed=5).astype(np.float32)
    with torch.no_grad():
        want = _nhwc(torch_model(_nchw(x)))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    err = _max_err(got, want)
    assert err <= F32_TOL * max(1.0, float(np.abs(want).max())), f"max abs error {err:.3g}"


def test_bfloat16_compute_stays_close_to_float32():
    model = NAFSSR(up_scale=2, width=8, num_blks=1)
    variables = _random_params(model, seed=4)
    x = jnp.asarray(_stereo_input(1, 6, 10, seed=6), jnp.float32)
    want = jax.jit(model.apply)(variables, x)
    got = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, x)
    err = _max_err(got, want)
    # Nonzero: the body really ran in bfloat16 (8-bit mantissa).
    assert 0 < err <= 0.05 * float(jnp.abs(want).max()), f"bfloat16 output off by {err}"


# -------------------------------------------------------------------------------------------------
# Parameter counts and MACs (NAFNET.md section 3, the official code's, at the 30x90 LR training size)

# name -> (params, conv MACs in G, SCAM matmul MACs in G)
SECTION_3 = {"NAFSSR-T-x2": (445_068, 1.70, 0.56), "NAFSSR-T-x4": (460_656, 1.79, 0.56),
             "NAFSSR-S-x2": (1_538_572, 5.91, 1.49), "NAFSSR-S-x4": (1_559_344, 6.02, 1.49),
             "NAFSSR-B-x2": (6_765_324, 26.15, 4.48), "NAFSSR-B-x4": (6_796_464, 26.32, 4.48),
             "NAFSSR-L-x2": (23_790_604, 92.29, 11.94), "NAFSSR-L-x4": (23_832_112, 92.51, 11.94)}


def _param_count(model) -> int:
    x = jax.ShapeDtypeStruct((1, 2, 2, model.img_channel), jnp.float32)
    return sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), x)))


def test_the_eight_published_models_are_registered():
    assert set(PUBLISHED_NAFSSR) == set(SECTION_3)


@pytest.mark.parametrize("name", [
    *[n for n in sorted(SECTION_3) if n[7] in "TS"],
    # B and L: ~5 and ~10 s of tracing each on a 2-core CPU.
    *[pytest.param(n, marks=pytest.mark.slow) for n in sorted(SECTION_3) if n[7] in "BL"]])
def test_published_parameter_count_and_macs(name):
    """One abstract trace (jax.eval_shape of init) at the 30x90 training size gives all three."""
    from nafnet_jax.models import summary

    s = summary.summarize(name, (30, 90), xla=False)
    params, conv, scam = SECTION_3[name]
    assert s["params"] == params
    assert round(s["conv_macs"] / 1e9, 2) == conv, f"{name}: conv {s['conv_macs'] / 1e9:.4f} G vs {conv}"
    assert round(s["attention_macs"] / 1e9, 2) == scam, f"{name}: SCAM {s['attention_macs'] / 1e9:.4f} G"


# -------------------------------------------------------------------------------------------------
# Drop-path


def _block_and_input(rate: float):
    block = NAFBlockSR(drop_path_rate=rate)
    x = jnp.asarray(views_to_batch(jnp.asarray(_stereo_input(3, 5, 7, seed=7), jnp.float32)))
    x = jnp.tile(x[..., :1], (1, 1, 1, 4))  # 6 views of 4 channels
    variables = jax.eval_shape(block.init, jax.random.key(0), x)
    rng = np.random.default_rng(8)
    variables = jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), variables)
    return block, variables, x


def test_drop_path_skips_whole_blocks_at_the_rate_and_rescales_the_kept_residual():
    """One draw per call for the whole batch and both views; kept: x + (new - x) / (1 - p)."""
    rate, draws = 0.3, 2000
    block, variables, x = _block_and_input(rate)
    new = jax.jit(block.apply)(variables, x)  # evaluation: the block's plain output
    assert _max_err(new, x) > 0.1
    kept_value = np.asarray(x + (new - x) / (1.0 - rate))
    keys = jax.random.split(jax.random.key(9), draws)
    outs = np.asarray(jax.jit(jax.vmap(lambda k: block.apply(variables, x, False, rngs={"drop_path": k})))(keys))
    per_view_dropped = np.all(outs == np.asarray(x), axis=(2, 3, 4))           # (draws, 2N) exact
    per_view_kept = np.all(np.isclose(outs, kept_value, rtol=1e-6, atol=1e-6), axis=(2, 3, 4))
    assert np.all(per_view_dropped ^ per_view_kept), "a view is neither skipped nor the rescaled residual"
    together = np.all(per_view_dropped == per_view_dropped[:, :1], axis=1)
    assert together.all(), "samples or views of one call were dropped separately (one draw per call expected)"
    frac = per_view_dropped[:, 0].mean()
    assert abs(frac - rate) < 5 * np.sqrt(rate * (1 - rate) / draws), f"skip rate {frac}, expected {rate}"


def test_drop_path_is_the_identity_in_evaluation_and_needs_no_rng():
    block, variables, x = _block_and_input(0.3)
    zero = NAFBlockSR(drop_path_rate=0.0)
    np.testing.assert_array_equal(block.apply(variables, x), zero.apply(variables, x))
    # rate 0: training is evaluation, without an RNG
    np.testing.assert_array_equal(zero.apply(variables, x, False), zero.apply(variables, x))


def test_every_block_gets_the_same_drop_path_rate():
    """The original wraps every block in DropPath(drop_path_rate): no linear ramp over depth."""
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, NAFBlockSR) and context.method_name == "__call__":
            rates.append(context.module.drop_path_rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _param_count(get_model("NAFSSR-S-x2", num_blks=5))
    assert rates == [0.1] * 5


def test_whole_model_trains_with_drop_path_and_evaluates_without_rngs():
    model = NAFSSR(up_scale=2, drop_path_rate=0.5, width=4, num_blks=1)
    variables = _random_params(model, seed=10)
    x = jnp.asarray(_stereo_input(1, 5, 6, seed=11), jnp.float32)
    evaluation = jax.jit(model.apply)(variables, x)
    keys = jax.random.split(jax.random.key(0), 12)
    train = jax.jit(jax.vmap(lambda k: model.apply(variables, x, False, rngs={"drop_path": k})))(keys)
    bare = NAFSSR(up_scale=2, width=4, num_blks=0)  # the model with its one block skipped
    skip_out = jax.jit(bare.apply)({"params": {k: variables["params"][k] for k in ("intro", "up")}}, x)
    skipped = [np.allclose(out, skip_out, rtol=0, atol=1e-6) for out in np.asarray(train)]
    assert 0 < sum(skipped) < len(keys), f"with rate 0.5, 12 draws should skip and keep: skipped {skipped}"
    assert evaluation.shape == (1, 10, 12, 6) and _max_err(evaluation, skip_out) > 1e-3


# -------------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("fusion", [(-1, 1000), (1, 1)])
def test_key_table_names_exactly_the_original_state_dict(fusion):
    torch_keys = set(ref.NAFNetSR(up_scale=2, img_channel=3, dual=True, fusion_from=fusion[0],
                                  fusion_to=fusion[1], **BODY).state_dict())
    assert_key_table_maps(NAFSSR(up_scale=2, fusion_from=fusion[0], fusion_to=fusion[1], **BODY), torch_keys)
    assert ("body.1.module.fusion.beta" in torch_keys) and (("body.0.module.fusion.beta" in torch_keys)
                                                            == (fusion[0] <= 0))


def test_torch_flax_torch_round_trip_is_exact():
    model = NAFSSR(up_scale=4, **BODY)
    torch_model = _torch_nafssr(4, None)
    sd = _state_dict(torch_model)
    back = flax_to_torch(torch_to_flax(sd, model), model)
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_mismatched_state_dict_names_every_key():
    sd = _state_dict(_torch_nafssr(2, None))
    del sd["body.1.module.fusion.gamma"]
    sd["body.0.module.fusion.l_proj3.weight"] = sd["body.0.module.fusion.l_proj1.weight"]
    with pytest.raises(StateDictMismatchError) as err:
        torch_to_flax(sd, NAFSSR(up_scale=4, **BODY))  # x4 model: the up conv has 48 outputs, not 12
    text = str(err.value)
    for needle in ("'body.1.module.fusion.gamma'", "'body.0.module.fusion.l_proj3.weight'", "'up.0.weight'",
                   "'up.0.bias'"):
        assert needle in text, f"{needle} missing from: {text}"


def test_cli_converts_a_published_name(tmp_path, capsys):
    from nafnet_jax.training.checkpointing import load_model_checkpoint

    overrides = ["--set", "width=8", "--set", "num_blks=2"]
    model = get_model("NAFSSR-T-x4", width=8, num_blks=2)
    variables = _random_params(model, seed=12)
    src, out, back = str(tmp_path / "in.pth"), str(tmp_path / "orbax"), str(tmp_path / "back.pth")
    convert.save_torch_checkpoint(flax_to_torch(variables, model), src)
    assert convert.main([src, out, "--model", "NAFSSR-T-x4", *overrides]) == 0
    params, model_config = load_model_checkpoint(out)
    assert model_config["name"] == "NAFSSR-T-x4" and model_config["num_blks"] == 2
    flat_want, flat_got = convert.flatten_params(variables["params"]), convert.flatten_params(params)
    assert sorted(flat_got) == sorted(flat_want)
    for path in flat_want:
        np.testing.assert_array_equal(np.asarray(flat_got[path]), flat_want[path], err_msg=path)
    assert convert.main(["--to-torch", out, back]) == 0
    assert sorted(convert.load_torch_checkpoint(back)) == sorted(convert.load_torch_checkpoint(src))


# -------------------------------------------------------------------------------------------------
# Registry


def test_registry_builds_nafssr_by_name_and_by_config():
    model = get_model("NAFSSR-B-x2")
    assert isinstance(model, NAFSSR) and model_class("NAFSSR-B-x2") is NAFSSR
    assert (model.up_scale, model.width, model.num_blks, model.drop_path_rate, model.tlc_train_size) == (
        2, 96, 64, 0.2, (30, 90))
    assert model.scale == 2 and model.img_channel == 6
    assert model_class("NAFNet-SIDD-width32") is UNet and get_model("NAFNet-SIDD-width32").scale == 1
    assert build_model({"name": "NAFSSR-T-x4", "arch": "nafssr", "dtype": "bfloat16"}) == get_model(
        "NAFSSR-T-x4", dtype=jnp.bfloat16)
    custom = build_model({"arch": "nafssr", "up_scale": 3, "width": 8, "num_blks": 2,
                          "tlc_train_size": [30, 90]})
    assert custom == NAFSSR(up_scale=3, width=8, num_blks=2, tlc_train_size=(30, 90))
    assert build_model(architecture("NAFSSR-demo-x2") | {"arch": "nafssr"}) == get_model("NAFSSR-demo-x2")


def test_registry_errors_name_the_offending_key():
    with pytest.raises(ValueError, match="enc_blk_nums"):
        build_model({"arch": "nafssr", "enc_blk_nums": [1]})
    with pytest.raises(ValueError, match="num_blks"):
        build_model({"arch": "unet", "num_blks": 3})
    with pytest.raises(ValueError, match="num_blk"):
        get_model("NAFSSR-T-x2", num_blk=3)
    with pytest.raises(ValueError, match="'nafsr'"):
        build_model({"arch": "nafsr"})
    with pytest.raises(ValueError, match="contradicts"):
        build_model({"name": "NAFSSR-T-x2", "arch": "unet"})


def test_input_must_be_a_six_channel_pair():
    model = NAFSSR(up_scale=2, **BODY)
    with pytest.raises(ValueError, match="6 channels"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 4, 3), jnp.float32))


@pytest.mark.slow  # two gradient compiles: ~10 s of CPU
def test_remat_gives_the_same_values_and_gradients():
    model = NAFSSR(up_scale=2, width=4, num_blks=2)
    variables = _random_params(model, seed=13)
    x = jnp.asarray(_stereo_input(1, 4, 5, seed=14), jnp.float32)

    def loss(m):
        return jax.jit(jax.value_and_grad(lambda v: jnp.mean(m.apply(v, x) ** 2)))(variables)

    (value, grads), (value_r, grads_r) = loss(model), loss(model.clone(remat=True))
    assert abs(float(value) - float(value_r)) <= 1e-6 * abs(float(value))
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------------------------------
# Benchmark plumbing (nafnet-bench): no timing is checked, only that both frameworks run NAFSSR


@pytest.mark.slow  # compiles a train step and runs PyTorch's: ~50 s of CPU
def test_bench_runs_nafssr_in_both_frameworks(tmp_path):
    """A published NAFSSR shrunk by a JSON config: LR input crop, x2 targets, the MSE recipe loss."""
    import json

    from nafnet_jax.tools import bench

    path = tmp_path / "nafssr.json"
    path.write_text(json.dumps({"model": {"name": "NAFSSR-T-x2", "width": 4, "num_blks": 1},
                                "train": {"loss": "mse"}}))
    args = bench.parse_args(["--config", str(path), "--mode", "forward,train", "--torch", "eager",
                             "--crop", "4x6", "--batch", "2", "--steps", "1", "--warmup", "0",
                             "--input_sets", "1", "--quiet"])
    rows = {(r["framework"], r["mode"]): r for r in bench.run(args)}
    assert set(rows) == {(f, m) for f in ("nafnet_jax", "torch") for m in ("forward", "train")}
    for key, row in rows.items():
        assert "error" not in row, f"{key}: {row.get('error')}"
        assert (row["height"], row["width"], row["batch"]) == (4, 6, 2), key
    assert rows[("nafnet_jax", "train")]["tlc_train_size"] == [30, 90]
    for framework in ("nafnet_jax", "torch"):
        loss = rows[(framework, "train")]["final_loss"]
        assert 0 < loss < 1, f"{framework}: MSE loss {loss} of [0, 1] images"
