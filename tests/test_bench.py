"""`nafnet-bench` (nafnet_jax/tools/bench/): that it times the trainer's own step, and what its rows report.

Tiny models and a few steps only: these check fields, units and what is run, never speed.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nafnet_jax.tools import bench
from nafnet_jax import torch_reference
from nafnet_jax.tools.bench import cases as bench_cases
from nafnet_jax.tools.bench import cli, jax_bench, report, timing
from nafnet_jax.models import ABLATION_LADDER, NAFNET_BLOCK, UNet, baseline_block, tlc_pool
from nafnet_jax.training.setup import build_train_setup

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
def rows(tiny_config):
    """Forward and train rows of the tiny model (each step waited for), with one eager PyTorch row each."""
    args = bench.parse_args(["--config", tiny_config, "--mode", "forward,train", "--torch", "eager",
                             "--per_step", *TIMING])
    return {(r["framework"], r["mode"]): r for r in bench.run(args)}


def tiny_model(block=NAFNET_BLOCK, **kwargs):
    return UNet(block=block, width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,), **kwargs)


# ------------------------------------------------------------------------------------------------
# What is timed


def test_train_mode_runs_the_trainers_step(tiny_config):
    """The bench's final state equals the same inputs fed to `build_train_setup(config).train_step`."""
    args = cli.parse_args(["--config", tiny_config, "--mode", "train", "--grad_accum", "2", *TIMING])
    [(_, _, (case,))] = bench_cases.make_cases(args)
    row, bench_state = jax_bench.run_case(case, args)
    assert row["grad_accum_steps"] == 2 and row["nonfinite"] == case.config.train.nonfinite

    setup = build_train_setup(case.config)
    state = setup.init_state(seed=args.seed)
    sets = jax_bench.device_input_sets(setup, case, args.input_sets, args.seed + 1)
    for k in range(row["steps_run"]):
        state, metrics = setup.train_step(state, sets[k % len(sets)])
    assert int(bench_state.step) == int(state.step) == 1 + args.warmup + args.steps
    assert row["final_loss"] == float(metrics["loss"])
    for path, got in jax.tree_util.tree_leaves_with_path(bench_state.params):
        want = state.params
        for key in path:
            want = want[key.key]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                      err_msg=f"{jax.tree_util.keystr(path)} after {row['steps_run']} steps")


def test_timed_loop_waits_once_unless_per_step():
    """Steps are dispatched back to back and waited for once at the end, as a training loop runs."""
    for per_step, want_waits in ((False, 2 + 1), (True, 2 + 3)):
        calls, waits = [], []
        times = timing.time_steps(lambda i: calls.append(i) or i, waits.append, warmup=2, steps=3,
                                  per_step=per_step, start=1)
        assert calls == [1, 2, 3, 4, 5], "warm-up then timed steps, numbered from start"
        assert len(waits) == want_waits and waits[-1] == 5, f"per_step={per_step}: waits {waits}"
        assert times.steps == 3 and len(times.per_step_s) == (3 if per_step else 0)
        assert times.ms_per_step == pytest.approx(1e3 * times.total_s / 3)


def test_config_file_recipe_reaches_the_case(tmp_path):
    """A JSON of config sections overrides base_config(); the bench flags override the file."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": dict(TINY, name="NAFNet-SIDD-width32"),
                                "train": {"batch_size": 8, "nonfinite": "skip"},
                                "optimizer": {"weight_decay": 0.02}}))
    args = cli.parse_args(["--config", str(path), "--mode", "train", "--dtype", "bfloat16", "--remat"])
    [(_, _, (case,))] = bench_cases.make_cases(args)
    cfg = case.config
    assert case.label == "NAFNet-SIDD-width32" and case.batch == 8, "--batch defaults to the file's"
    assert (cfg.model.width, cfg.model.middle_blk_num, cfg.train.nonfinite) == (4, 1, "skip")
    assert cfg.optimizer.weight_decay == 0.02 and cfg.model.dtype == "bfloat16" and cfg.model.remat


def test_unknown_config_key_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": {"widht": 4}}))
    with pytest.raises(ValueError, match=r"bad\.json.*'widht'"):
        bench_cases.load_config(str(path), "NAFNet-GoPro-width32")


# ------------------------------------------------------------------------------------------------
# What a row reports


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_rows_report_time_rate_flops_and_memory(rows, mode):
    row = rows[("nafnet_jax", mode)]
    assert row["steps"] == 2 and row["batch"] == 2 and (row["height"], row["width"]) == (16, 16)
    assert row["ms_per_step"] > 0 and row["per_step_timing"]
    assert 0 < row["ms_min"] <= row["ms_median"] <= row["ms_max"], "median outside [min, max]"
    assert row["ms_p10"] <= row["ms_median"] <= row["ms_p90"]
    assert row["images_per_s"] == pytest.approx(2 * 1000.0 / row["ms_per_step"])
    assert row["flops_per_step"] > 0 and row["flops_source"] == "xla_cost_analysis"
    assert row["tflops"] == pytest.approx(row["flops_per_step"] / (row["ms_per_step"] / 1e3) / 1e12)
    assert row["compile_s"] > 0 and row["init_s"] > 0 and row["cpu_s_per_step"] > 0
    assert row["xla_temp_bytes"] >= 0 and row["xla_argument_bytes"] > 0, "XLA's memory analysis"
    assert row["peak_memory_bytes"] > 0 and row["memory_source"].startswith(("host_rss", "device."))
    assert row["platform"] == "cpu" and row["depthwise_impl_resolved"] == "shifted", "auto on a CPU mesh"
    assert len(row["load_avg_before"]) == 3 and row["host_cpu"]
    assert row["mfu"] is None, "no peak is known for a CPU and none was passed"


def test_train_step_costs_more_flops_than_the_forward(rows):
    fwd, train = rows[("nafnet_jax", "forward")], rows[("nafnet_jax", "train")]
    ratio = train["flops_per_step"] / fwd["flops_per_step"]
    assert 2.0 < ratio < 6.0, f"train/forward FLOPs {ratio:.2f}: expected about 3 (forward + 2x backward)"


def test_train_rows_carry_a_negative_psnr_loss(rows):
    for framework in ("nafnet_jax", "torch"):
        loss = rows[(framework, "train")]["final_loss"]
        # -PSNR in dB of an untrained model against a noisy copy of its input: finite and negative
        assert math.isfinite(loss) and -60 < loss < 0, f"{framework}: loss {loss}"
    assert rows[("nafnet_jax", "train")]["nonfinite_count"] == 0


def test_jax_row_ratio_is_torch_time_over_jax_time(rows):
    for mode in ("forward", "train"):
        jrow, trow = rows[("nafnet_jax", mode)], rows[("torch", mode)]
        assert "error" not in trow, trow.get("error")
        assert trow["flops_per_step"] == jrow["flops_per_step"], "PyTorch rows reuse XLA's FLOP count"
        assert jrow["speedup_vs_torch_eager"] == pytest.approx(trow["ms_per_step"] / jrow["ms_per_step"])
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


def test_a_failed_row_fills_every_table_column():
    """A PyTorch variant that fails (e.g. torch.compile without a compiler) is reported, not fatal."""
    row = {"framework": "torch", "variant": "compile", "mode": "train", "dtype": "float32", "batch": 1,
           "height": 16, "width": 16, "error": "BackendCompilerFailed: no C++ compiler"}
    header, rule, line = report.format_markdown([row]).splitlines()
    assert line.count("|") == header.count("|") == rule.count("|")
    assert "failed: BackendCompilerFailed" in line


@pytest.mark.slow  # ~40 s; the trainer-step path is covered by test_train_mode_runs_the_trainers_step
def test_cli_data_parallel_run_writes_jsonl_markdown_and_a_trace(tiny_config, tmp_path):
    """`python -m nafnet_jax.tools.bench` on two simulated CPU devices: one row per mode, a table row each,
    and a jax.profiler trace of the profiled steps."""
    out, trace = tmp_path / "rows.jsonl", tmp_path / "trace"
    cmd = [sys.executable, "-m", "nafnet_jax.tools.bench", "--config", tiny_config, "--mode", "forward,train",
           "--host_device_count", "2", "--num_devices", "2", "--jsonl", str(out), "--markdown",
           "--profile_dir", str(trace), "--profile_steps", "2", *TIMING]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mode"], r["num_devices"]) for r in got] == [("forward", 2), ("train", 2)]
    assert all(r["flops_per_step"] > 0 and r["ms_per_step"] > 0 for r in got)
    assert got[1]["step"] == got[1]["steps_run"] == 1 + 1 + 2 + 2, "first call, warm-up, timed, profiled"
    table = [line for line in proc.stdout.splitlines() if line.startswith("| nafnet_jax")]
    assert len(table) == 2, proc.stdout
    traces = [os.path.join(d, f) for d, _, files in os.walk(trace) for f in files if f.endswith(".xplane.pb")]
    assert len(traces) == 2 and all(os.path.getsize(t) > 0 for t in traces), f"one trace per case: {traces}"


def test_bench_and_torch_reference_import_without_torch():
    """The package and the PyTorch reference load torch only when a PyTorch row or model is asked for."""
    code = ("import sys; import nafnet_jax.tools.bench, nafnet_jax.tools.bench.cli, nafnet_jax.torch_reference; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# The PyTorch twin (nafnet_jax.torch_reference)


@pytest.mark.parametrize("block", [NAFNET_BLOCK, baseline_block(1, 2), baseline_block(2, 2),
                                   ABLATION_LADDER["plainnet"], ABLATION_LADDER["baseline+simple_gate"]],
                         ids=["nafnet", "baseline-dw1", "baseline-dw2", "plainnet", "baseline+sg"])
def test_torch_twin_has_the_same_parameter_count(block):
    model = tiny_model(block)
    net = torch_reference.build_torch_model(model)
    torch_count = sum(p.numel() for p in net.parameters())
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    flax_count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert torch_count == flax_count, f"PyTorch {torch_count} vs nafnet_jax {flax_count} parameters"


def test_torch_twin_of_nafnet_is_the_original_file():
    """spandrel's copy of NAFNet_arch.py loads into the twin (same keys, strict) and computes the same."""
    import torch

    torch.manual_seed(0)
    original = torch_reference.perturb_identity_params_(
        torch_reference.spandrel_nafnet(width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1]), 0)
    twin = torch_reference.build_torch_model(tiny_model())
    twin.load_state_dict(original.state_dict(), strict=True)
    x = torch.rand(2, 3, 13, 19, dtype=torch.float64)
    original, twin = original.double(), twin.double()
    torch.testing.assert_close(twin(x), original(x), rtol=0, atol=1e-12)
    names = [name for name, _ in original.named_parameters()]
    p_o, p_t = dict(original.named_parameters()), dict(twin.named_parameters())
    grads_o = torch.autograd.grad(original(x).square().mean(), [p_o[n] for n in names])
    grads_t = torch.autograd.grad(twin(x).square().mean(), [p_t[n] for n in names])
    for name, go, gt in zip(names, grads_o, grads_t):
        torch.testing.assert_close(gt, go, rtol=0, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_torch_layer_norm_backward_is_autograds():
    """The original's hand-written LayerNorm2d backward equals autograd of its forward (float64)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch_reference.LayerNormFunction.apply(*a, 1e-6), (x, w, b))


def test_torch_twin_tlc_pool_equals_nafnet_jax_tlc_pool():
    import torch

    model = tiny_model(tlc_train_size=(8, 8))  # level-0 kernel 12 < a 20x24 map: the local branch
    net = torch_reference.build_torch_model(model)
    pool = net.encoders[0][0].sca[0]
    assert isinstance(pool, torch_reference.AvgPool2d), "TLC should replace the global pool"
    x = np.random.default_rng(1).normal(size=(1, 20, 24, 4)).astype(np.float32)
    got = pool(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    want = np.asarray(tlc_pool(jnp.asarray(x), (12, 12)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
