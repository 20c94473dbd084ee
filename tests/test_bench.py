"""`nafnet-bench` (nafnet_jax/bench.py): what its rows report, and that what it times is the right step.

Tiny models and a few steps only: these check fields, units and the recipe, never speed.
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nafnet_jax import bench
from nafnet_jax.models import ABLATION_LADDER, NAFNET_BLOCK, UNet, baseline_block, tlc_pool

# spandrel's copy of the original LayerNorm2d uses the deprecated ctx.saved_variables
pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")

TINY = {"width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1], "tlc_train_size": None}
TIMING = ["--crop", "16", "--batch", "2", "--steps", "2", "--warmup", "1", "--input_sets", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture(scope="module")
def jax_rows(tiny_config):
    """Forward and train rows of the tiny model, with one eager PyTorch row each."""
    args = bench.parse_args(["--config", tiny_config, "--mode", "forward,train", "--torch", "eager", *TIMING])
    return {(r["framework"], r["mode"]): r for r in bench.run(args)}


def tiny_model(block=NAFNET_BLOCK, **kwargs):
    return UNet(block=block, width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,), **kwargs)


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_rows_report_time_rate_flops_and_memory(jax_rows, mode):
    row = jax_rows[("nafnet_jax", mode)]
    assert row["steps"] == 2 and row["batch"] == 2 and (row["height"], row["width"]) == (16, 16)
    assert 0 < row["ms_min"] <= row["ms_median"] <= row["ms_max"], "median outside [min, max]"
    assert row["ms_p10"] <= row["ms_median"] <= row["ms_p90"]
    assert row["images_per_s"] == pytest.approx(2 * 1000.0 / row["ms_median"])
    assert row["flops_per_step"] > 0 and row["flops_source"] == "xla_cost_analysis"
    assert row["tflops"] == pytest.approx(row["flops_per_step"] / (row["ms_median"] / 1e3) / 1e12)
    assert row["compile_s"] > 0 and row["cpu_s_per_step"] > 0
    assert row["xla_temp_bytes"] >= 0 and row["xla_argument_bytes"] > 0, "XLA's memory analysis"
    assert row["peak_memory_bytes"] > 0 and row["memory_source"].startswith(("host_rss", "device."))
    assert row["depthwise_impl_resolved"] in ("xla", "shifted")
    assert len(row["load_avg_before"]) == 3 and row["host_cpu"]
    assert row["mfu"] is None, "no peak is known for a CPU and none was passed"


def test_train_step_costs_more_flops_than_the_forward(jax_rows):
    fwd, train = jax_rows[("nafnet_jax", "forward")], jax_rows[("nafnet_jax", "train")]
    ratio = train["flops_per_step"] / fwd["flops_per_step"]
    assert 2.0 < ratio < 6.0, f"train/forward FLOPs {ratio:.2f}: expected about 3 (forward + 2x backward)"


def test_train_rows_carry_a_negative_psnr_loss(jax_rows):
    for framework in ("nafnet_jax", "torch"):
        loss = jax_rows[(framework, "train")]["final_loss"]
        # -PSNR in dB of an untrained model against a noisy copy of its input: finite and negative
        assert math.isfinite(loss) and -60 < loss < 0, f"{framework}: loss {loss}"


def test_jax_row_ratio_is_torch_time_over_jax_time(jax_rows):
    for mode in ("forward", "train"):
        jrow, trow = jax_rows[("nafnet_jax", mode)], jax_rows[("torch", mode)]
        assert "error" not in trow, trow.get("error")
        assert trow["flops_per_step"] == jrow["flops_per_step"], "PyTorch rows reuse XLA's FLOP count"
        assert jrow["speedup_vs_torch_eager"] == pytest.approx(trow["ms_median"] / jrow["ms_median"])
        assert trow["torch_threads"] == jrow["threads"]


def test_summarize_times_matches_numpy_percentiles():
    seconds = [0.010, 0.012, 0.011, 0.030, 0.009]
    got = bench.summarize_times(seconds)
    ms = np.asarray(seconds) * 1e3
    assert got["ms_median"] == pytest.approx(np.median(ms))
    assert got["ms_p10"] == pytest.approx(np.percentile(ms, 10))
    assert got["ms_p90"] == pytest.approx(np.percentile(ms, 90))
    assert (got["ms_min"], got["ms_max"]) == (pytest.approx(9.0), pytest.approx(30.0))
    assert got["spread_pct"] == pytest.approx(100 * (np.percentile(ms, 90) - np.percentile(ms, 10)) / np.median(ms))


def test_known_peaks_are_matched_by_device_kind():
    assert bench.known_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4)
    assert bench.known_peak_tflops("NVIDIA H100 PCIe", "float32") == pytest.approx(378.0)
    assert bench.known_peak_tflops("TPU v5 lite", "bfloat16") == pytest.approx(197.0)
    assert bench.known_peak_tflops("cpu", "float32") is None


def _psnr_loss_np(pred, gt):
    mse = np.mean((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2, axis=(1, 2, 3))
    return 10.0 / math.log(10.0) * np.mean(np.log(mse + 1e-8))


def test_train_step_is_psnr_loss_clip_and_adamw_of_the_original():
    """Two steps equal the original recipe written out in NumPy: clip the global norm to
    0.01, AdamW (betas 0.9/0.9, eps 1e-8, decoupled decay) at the cosine schedule's lr."""
    model = tiny_model()
    rng = np.random.default_rng(0)
    lq = jnp.asarray(rng.uniform(0.05, 1, (2, 16, 16, 3)), jnp.float32)
    gt = jnp.asarray(np.clip(np.asarray(lq) + rng.normal(0, 0.05, lq.shape), 0, 1), jnp.float32)
    params = bench.random_params(model, 3, seed=0)
    lr0, wd, total = 1e-3, 1e-2, 4
    init_state, step = bench.make_bench_train_step(model, total_steps=total, learning_rate=lr0, eta_min=1e-7,
                                                   weight_decay=wd, donate=False)

    def loss(p):
        pred = model.apply({"params": p}, lq)
        return 10.0 / math.log(10.0) * jnp.mean(jnp.log(jnp.mean((pred - gt) ** 2, axis=(1, 2, 3)) + 1e-8))

    grad_fn = jax.jit(jax.grad(loss))
    apply_fn = jax.jit(lambda p: model.apply({"params": p}, lq))
    state = init_state(params)
    p_ref = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    m = jax.tree.map(np.zeros_like, p_ref)
    v = jax.tree.map(np.zeros_like, p_ref)
    for t in range(2):
        grads = jax.tree.map(lambda a: np.asarray(a, np.float64), grad_fn(state["params"]))
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in jax.tree.leaves(grads)))
        grads = jax.tree.map(lambda g: g * min(1.0, 0.01 / norm), grads)
        lr = 1e-7 + (lr0 - 1e-7) * (1 + math.cos(math.pi * t / total)) / 2
        m = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * g * g, v, grads)
        c = 1 - 0.9 ** (t + 1)
        p_ref = jax.tree.map(lambda p, a, b: p - lr * ((a / c) / (np.sqrt(b / c) + 1e-8) + wd * p), p_ref, m, v)
        want_loss = _psnr_loss_np(apply_fn(state["params"]), gt)
        state, got_loss = step(state, lq, gt)
        assert float(got_loss) == pytest.approx(want_loss, rel=1e-5), f"step {t}: loss"
    for path, got in jax.tree_util.tree_leaves_with_path(state["params"]):
        want = p_ref
        for key in path:
            want = want[key.key]
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-8,
                                   err_msg=f"{jax.tree_util.keystr(path)} after 2 steps")


@pytest.mark.parametrize("block", [NAFNET_BLOCK, baseline_block(1, 2), baseline_block(2, 2),
                                   ABLATION_LADDER["plainnet"], ABLATION_LADDER["baseline+simple_gate"]],
                         ids=["nafnet", "baseline-dw1", "baseline-dw2", "plainnet", "baseline+sg"])
def test_torch_twin_has_the_same_parameter_count(block):
    model = tiny_model(block)
    net = bench.build_torch_model(model)
    torch_count = sum(p.numel() for p in net.parameters())
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    flax_count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert torch_count == flax_count, f"PyTorch {torch_count} vs nafnet_jax {flax_count} parameters"


def test_torch_twin_tlc_pool_equals_nafnet_jax_tlc_pool():
    import torch

    model = tiny_model(tlc_train_size=(8, 8))  # level-0 kernel 12 < a 20x24 map: the local branch
    net = bench.build_torch_model(model)
    pool = net.encoders[0][0].sca[0]
    assert not isinstance(pool, torch.nn.AdaptiveAvgPool2d), "TLC should replace the global pool"
    x = np.random.default_rng(1).normal(size=(1, 20, 24, 4)).astype(np.float32)
    got = pool(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    want = np.asarray(tlc_pool(jnp.asarray(x), (12, 12)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cli_data_parallel_run_writes_jsonl_and_markdown(tiny_config, tmp_path):
    """`python -m nafnet_jax.bench` on two simulated CPU devices: one row per mode, a table row each."""
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "nafnet_jax.bench", "--config", tiny_config, "--mode", "forward,train",
           "--host_device_count", "2", "--num_devices", "2", "--jsonl", str(out), "--markdown", *TIMING]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mode"], r["num_devices"]) for r in rows] == [("forward", 2), ("train", 2)]
    assert all(r["flops_per_step"] > 0 and r["ms_median"] > 0 for r in rows)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| nafnet_jax")]
    assert len(table) == 2, proc.stdout


def test_a_failed_row_fills_every_table_column():
    """A PyTorch variant that fails (e.g. torch.compile without a compiler) is reported, not fatal."""
    row = {"framework": "torch", "variant": "compile", "mode": "train", "dtype": "float32", "batch": 1,
           "height": 16, "width": 16, "error": "BackendCompilerFailed: no C++ compiler"}
    header, rule, line = bench.format_markdown([row]).splitlines()
    assert line.count("|") == header.count("|") == rule.count("|")
    assert "failed: BackendCompilerFailed" in line
