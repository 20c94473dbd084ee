"""`nafnet-bench`: how fast nafnet_jax runs a step, and the PyTorch original beside it.

    python -m nafnet_jax.bench --model NAFNet-GoPro-width32 --mode forward,train \\
        --batch 1 --crop 256 --dtype float32 --torch eager,compile --markdown

One row per (framework, mode, dtype, depthwise formulation). Method:

* nafnet_jax: the step is lowered and compiled on its own (`compile_s`), run
  `--warmup` times untimed, then `--steps` times, each step ended by
  `jax.block_until_ready`, cycling over `--input_sets` random batches (uniform
  in [0.05, 1], never zeros). The train step is the original recipe
  (`make_bench_train_step`). FLOPs come from XLA's cost analysis of the
  compiled step; MFU divides the achieved rate by `--peak_tflops` or a known
  peak for the device (none is known for CPUs).
* PyTorch (`--torch`): spandrel's copy of the original NAFNet (Baseline and the
  ablation blocks rebuilt from the same config), on the same device and
  threads, eager and/or `torch.compile`, float32 or bf16 autocast, inference
  (`torch.inference_mode`) and the original train step (PSNR loss,
  clip_grad_norm_ 0.01, AdamW betas (0.9, 0.9), cosine LR). Same inputs, same
  timing loop; its TFLOP/s use the FLOPs XLA counted for the same step.
* Rows report the median ms/step with its spread (p10-p90, min, max),
  images/s, TFLOP/s, MFU, peak memory (`device.memory_stats()` where the
  backend has it, else the process's peak host RSS during the timed steps,
  named in `memory_source`) and the 1-minute load average before and after.
  Each nafnet_jax row carries `speedup_vs_torch_<variant>` = torch ms / jax ms
  (> 1: nafnet_jax is faster), measured in the same run.

Threads (`--threads N`): the process is pinned to N CPUs before any backend
starts (XLA:CPU sizes its intra-op pool from the CPUs it may run on; Eigen
multi-threading stays on, `--xla_cpu_multi_thread_eigen=true`) and PyTorch gets
`torch.set_num_threads(N)`. XLA:CPU flushes denormals to zero; PyTorch does not
by default, so the PyTorch rows run with `torch.set_flush_denormal(True)`
unless `--torch_denormals keep` (a row's `torch_flush_denormal` says which).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import enum
import importlib.machinery
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

MODES = ("forward", "train")
DTYPES = ("float32", "bfloat16")
TORCH_VARIANTS = ("eager", "compile")

# Dense peak TFLOP/s per device at XLA's default matmul precision: float32 runs
# as TF32 on NVIDIA GPUs and as bf16 passes on TPUs, so both dtypes share the
# tensor-core peak there. Matched on lower-cased `device_kind` substrings.
KNOWN_PEAK_TFLOPS: Tuple[Tuple[str, Dict[str, float]], ...] = (
    ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
    ("h100", {"bfloat16": 989.4, "float32": 494.7}),
    ("h200", {"bfloat16": 989.4, "float32": 494.7}),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}),
    ("tpu v6 lite", {"bfloat16": 918.0, "float32": 918.0}),
    ("tpu v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("tpu v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("tpu v5", {"bfloat16": 459.0, "float32": 459.0}),
    ("tpu v4", {"bfloat16": 275.0, "float32": 275.0}),
)

# The original recipe (NAFNET.md 2.2): lr 1e-3 cosine to 1e-7 over T_max.
RECIPE = dict(learning_rate=1e-3, eta_min=1e-7, total_steps=200_000, weight_decay=1e-3, grad_clip=0.01)


# --------------------------------------------------------------------------- #
# What to measure
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One measured configuration (a row is one case on one framework variant).

    Attributes:
      model_name: a published name, or a label for a config-file model.
      model_config: the `build_model` mapping (name + UNet overrides).
      mode: 'forward' (inference) or 'train' (loss, grad, clip, AdamW update).
      batch: global batch (split over `num_devices`).
      height, width: crop size in pixels.
      dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
      depthwise_impl: 'auto', 'xla' or 'shifted' (see `resolve_depthwise_impl`).
      num_devices: data-parallel devices (the batch is split over them).
    """

    model_name: str
    model_config: Mapping[str, Any]
    mode: str
    batch: int
    height: int
    width: int
    dtype: str
    depthwise_impl: str
    num_devices: int


def _parse_crop(text: str) -> Tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _split(text: str, allowed: Optional[Sequence[str]] = None, flag: str = "") -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise SystemExit(f"{flag}: unknown value(s) {bad}; choose from {list(allowed)}")
    return items


def load_model_config(args: argparse.Namespace) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """(label, model config mapping, recipe overrides) from --model or --config.

    --config takes a `configs/*.py` file (optionally `file.py:arg`, as train.py)
    whose `get_config()` has a `model` section, or a JSON file holding a model
    mapping (or {"model": {...}}).
    """
    recipe: Dict[str, Any] = {}
    if not args.config:
        return args.model, {"name": args.model}, recipe
    path, _, arg = args.config.partition(":")
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        model = dict(data.get("model", data))
    else:
        spec = importlib.util.spec_from_file_location("_bench_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
        model = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
        optimizer, train = config.get("optimizer"), config.get("train")
        if optimizer is not None:
            recipe.update(learning_rate=optimizer.get("lr", RECIPE["learning_rate"]),
                          eta_min=optimizer.get("eta_min", RECIPE["eta_min"]),
                          weight_decay=optimizer.get("weight_decay", RECIPE["weight_decay"]))
        if train is not None and train.get("total_steps"):
            recipe["total_steps"] = int(train.get("total_steps"))
    label = model.get("name") or os.path.basename(args.config)
    return label, model, recipe


def _with_tlc(model_config: Mapping[str, Any], tlc: str) -> Dict[str, Any]:
    cfg = dict(model_config)
    if tlc == "off":
        cfg["tlc_train_size"] = None
    elif tlc == "on" and not _effective_tlc(cfg):
        cfg["tlc_train_size"] = (256, 256)  # NAFNetLocal's default train_size
    return cfg


def _effective_tlc(model_config: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
    if "tlc_train_size" in model_config:
        size = model_config["tlc_train_size"]
    else:
        from nafnet_jax.models import PUBLISHED
        size = PUBLISHED.get(model_config.get("name") or "", {}).get("tlc_train_size")
    return tuple(size) if size else None


# --------------------------------------------------------------------------- #
# nafnet_jax side
# --------------------------------------------------------------------------- #

def build_bench_model(case: BenchCase):
    """The UNet of a case, with its compute dtype and depthwise formulation."""
    from nafnet_jax.models import build_model
    cfg = dict(case.model_config)
    cfg["dtype"] = case.dtype
    cfg["depthwise_impl"] = case.depthwise_impl
    return build_model(cfg)


def random_params(model, img_channel: int, seed: int) -> Any:
    """Parameters of the model's shapes, drawn with NumPy (no XLA init compile).

    Timing does not depend on the values, so this skips `model.init`, whose
    compiled RNG graph for the 28-block models takes minutes on a CPU. Kernels
    are U(+-1/sqrt(fan_in)) as PyTorch's init, LayerNorm scales 1, and the
    rest (biases, and beta/gamma, which the original zero-inits) U(+-0.1), so
    every block's branches carry signal and gradient as in a trained model.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    levels = len(model.enc_blk_nums)
    sample = jnp.zeros((1, 2 ** levels, 2 ** levels, img_channel), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), sample)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        bound = 1.0 / math.sqrt(max(1, int(np.prod(leaf.shape[:-1])))) if name == "kernel" else 0.1
        return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_bench_train_step(model, *, total_steps: int = RECIPE["total_steps"],
                          learning_rate: float = RECIPE["learning_rate"],
                          eta_min: float = RECIPE["eta_min"],
                          weight_decay: float = RECIPE["weight_decay"],
                          grad_clip: float = RECIPE["grad_clip"],
                          donate: bool = True) -> Tuple[Callable, Callable]:
    """The original training step, built from its pieces (NAFNET.md 2.2).

    loss = PSNR loss (10/ln10) * mean_b(log(mean_chw((pred - gt)^2) + 1e-8));
    optimiser = clip_by_global_norm(grad_clip) -> AdamW(cosine_decay(lr -> eta_min
    over total_steps), b1 = b2 = 0.9, eps 1e-8, decoupled weight_decay on every
    parameter).

    This is the one place that defines the benchmarked step, so the trainer's
    step (`nafnet_jax.train_step`) can be swapped in here.

    Returns:
      (init_state, train_step): `init_state(params) -> state` and the jitted
      `train_step(state, lq, gt) -> (state, loss)` with the state donated;
      lq/gt are (B, H, W, C) float32 in [0, 1].
    """
    import jax
    import optax

    from nafnet_jax.losses import psnr_loss

    schedule = optax.cosine_decay_schedule(learning_rate, total_steps, alpha=eta_min / learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.9, eps=1e-8, weight_decay=weight_decay))

    def init_state(params):
        return {"params": params, "opt_state": tx.init(params)}

    def loss_fn(params, lq, gt):
        return psnr_loss(model.apply({"params": params}, lq), gt)

    def train_step(state, lq, gt):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], lq, gt)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state}, loss

    return init_state, jax.jit(train_step, donate_argnums=(0,) if donate else ())


def _input_sets(case: BenchCase, count: int, seed: int, channels: int):
    """`count` random (lq, gt) batches as NumPy NHWC float32, never all zeros."""
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = (case.batch, case.height, case.width, channels)
    sets = []
    for _ in range(count):
        lq = rng.uniform(0.05, 1.0, shape).astype(np.float32)
        gt = np.clip(lq + rng.normal(0.0, 0.05, shape), 0.0, 1.0).astype(np.float32)
        sets.append((lq, gt))
    return sets


def summarize_times(seconds: Sequence[float]) -> Dict[str, float]:
    """Median and spread of step times, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)

    def pct(q):  # linear interpolation, as numpy's default
        pos = (len(ms) - 1) * q
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(ms) - 1)
        return ms[lo] + (ms[hi] - ms[lo]) * (pos - lo)

    med = statistics.median(ms)
    return {"ms_median": med, "ms_p10": pct(0.10), "ms_p90": pct(0.90), "ms_min": ms[0], "ms_max": ms[-1],
            "spread_pct": 100.0 * (pct(0.90) - pct(0.10)) / med if med > 0 else 0.0}


def _time_loop(run_step: Callable[[int], None], warmup: int, steps: int) -> Tuple[List[float], float]:
    """Wall seconds of each timed step, and the median process CPU seconds per step.

    CPU time (all threads) is a steadier measure of work than wall time on a
    loaded machine, though it also counts threads that spin while waiting.
    """
    for i in range(warmup):
        run_step(i)
    times, cpu = [], []
    for i in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        run_step(warmup + i)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, statistics.median(cpu)


class HostMemory:
    """Peak resident memory of this process over a region (Linux /proc), else lifetime peak."""

    def __init__(self):
        self.resettable = False

    def start(self) -> None:
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.rss_before = _proc_status_bytes("VmRSS")

    def peak(self) -> Tuple[Optional[int], str]:
        hwm = _proc_status_bytes("VmHWM")
        if hwm is not None and self.resettable:
            return hwm, "host_rss_peak_during_timed_steps"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host_rss_peak_process_lifetime"


def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _device_peak_memory(devices) -> Optional[int]:
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # backends without the call
            stats = None
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _cost_flops(compiled) -> Optional[float]:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _xla_memory(compiled) -> Dict[str, Optional[int]]:
    """XLA's own accounting of the compiled step: temporaries, arguments, outputs (bytes per device)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:
        ma = None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return {f"xla_{f.replace('_size_in', '')}": (int(getattr(ma, f)) if ma is not None else None) for f in fields}


def known_peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
    kind = device_kind.lower()
    for key, peaks in KNOWN_PEAK_TFLOPS:
        if key in kind:
            return peaks.get(dtype)
    return None


def bench_jax(case: BenchCase, opts: argparse.Namespace, recipe: Mapping[str, Any]) -> Dict[str, Any]:
    """Compiles and times one case on nafnet_jax; returns its row."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from nafnet_jax import partitioning
    from nafnet_jax.models.layers import resolve_depthwise_impl

    model = build_bench_model(case)
    if case.batch % case.num_devices:
        raise SystemExit(f"--batch {case.batch} must be divisible by --num_devices {case.num_devices}")
    mesh = partitioning.create_mesh(case.num_devices)
    data_sharding = partitioning.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(random_params(model, model.img_channel, opts.seed), replicated)
    sets = [tuple(jax.device_put(a, data_sharding) for a in pair)
            for pair in _input_sets(case, opts.input_sets, opts.seed + 1, model.img_channel)]
    jax.block_until_ready(sets)

    t0 = time.perf_counter()
    if case.mode == "forward":
        fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
        compiled = fwd.lower(params, sets[0][0]).compile()
        compile_s = time.perf_counter() - t0

        def run_step(i):
            jax.block_until_ready(compiled(params, sets[i % len(sets)][0]))
        losses = None
    else:
        init_state, step = make_bench_train_step(model, **recipe)
        state = jax.jit(init_state, out_shardings=replicated)(params)
        compiled = step.lower(state, *sets[0]).compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}
        losses = []

        def run_step(i):
            lq, gt = sets[i % len(sets)]
            holder["state"], loss = compiled(holder["state"], lq, gt)
            jax.block_until_ready((holder["state"], loss))
            losses.append(float(loss))

    flops = _cost_flops(compiled)
    xla_memory = _xla_memory(compiled)
    memory = HostMemory()
    load_before = os.getloadavg()
    run_step(0)  # first run (allocations), then the warm-up and the timed steps
    memory.start()
    times, cpu_s = _time_loop(run_step, opts.warmup, opts.steps)
    load_after = os.getloadavg()
    peak = _device_peak_memory(mesh.devices.flat)
    source = "device.memory_stats:peak_bytes_in_use"
    if peak is None:
        peak, source = memory.peak()

    device = mesh.devices.flat[0]
    row = _base_row(case, opts, framework="nafnet_jax", variant="jit")
    row.update(
        depthwise_impl_resolved=resolve_depthwise_impl(case.depthwise_impl),
        tlc_train_size=list(model.tlc_train_size) if model.tlc_train_size else None,
        compile_s=compile_s, flops_per_step=flops, flops_source="xla_cost_analysis",
        device=device.device_kind, platform=device.platform,
        peak_memory_bytes=peak, memory_source=source,
        rss_before_bytes=memory.rss_before if source.startswith("host") else None,
        load_avg_before=list(load_before), load_avg_after=list(load_after),
        final_loss=losses[-1] if losses else None, cpu_s_per_step=cpu_s, **xla_memory,
    )
    row.update(_rates(row, summarize_times(times), flops, opts, device.device_kind))
    return row


def _rates(row: Mapping[str, Any], timing: Dict[str, float], flops: Optional[float],
           opts: argparse.Namespace, device_kind: str) -> Dict[str, Any]:
    out = dict(timing)
    sec = timing["ms_median"] / 1e3
    out["images_per_s"] = row["batch"] / sec if sec > 0 else None
    # XLA's cost analysis counts the per-device program of an SPMD step.
    total = flops * row["num_devices"] if flops else None
    out["tflops"] = total / sec / 1e12 if total and sec > 0 else None
    peak = opts.peak_tflops if opts.peak_tflops else known_peak_tflops(device_kind, row["dtype"])
    out["peak_tflops"] = peak
    out["peak_tflops_source"] = "--peak_tflops" if opts.peak_tflops else ("known_device" if peak else None)
    out["mfu"] = out["tflops"] / (peak * row["num_devices"]) if out["tflops"] and peak else None
    return out


def _base_row(case: BenchCase, opts: argparse.Namespace, framework: str, variant: str) -> Dict[str, Any]:
    return {
        "framework": framework, "variant": variant, "model": case.model_name, "mode": case.mode,
        "batch": case.batch, "height": case.height, "width": case.width, "dtype": case.dtype,
        "depthwise_impl": case.depthwise_impl, "remat": bool(case.model_config.get("remat", False)),
        "tlc": _effective_tlc(case.model_config) is not None, "num_devices": case.num_devices,
        "steps": opts.steps, "warmup": opts.warmup, "input_sets": opts.input_sets,
        "threads": opts.threads_used, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": _cpu_model(), **_versions(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata
    out = {}
    for dist in ("jax", "jaxlib", "flax", "optax", "torch", "spandrel"):
        try:
            out[f"{dist}_version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[f"{dist}_version"] = None
    out["python_version"] = platform.python_version()
    return out


# --------------------------------------------------------------------------- #
# PyTorch side (the original architecture)
# --------------------------------------------------------------------------- #

def _install_torchvision_stand_in() -> None:
    """spandrel imports torchvision at package import; the installed one is broken here.

    Puts a stand-in `torchvision` in sys.modules unless a real one imports.
    The two names spandrel's (unused) LaMa/RestoreFormer files take raise if
    called. (tests/torch_stubs.py has the test suite's copy of this.)
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

    def unavailable(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in (nafnet_jax.bench): not available here")

    modules = {}
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        module.__path__ = []
        modules[name] = module
    functional = modules["torchvision.transforms.functional"]
    functional.InterpolationMode = enum.Enum("InterpolationMode", {"NEAREST": "nearest",
                                                                   "BILINEAR": "bilinear",
                                                                   "BICUBIC": "bicubic"})
    functional.rotate = functional.normalize = unavailable
    modules["torchvision.transforms"].functional = functional
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    sys.modules.update(modules)


def build_torch_model(model) -> Any:
    """The PyTorch original of a UNet config: spandrel's NAFNet, other blocks swapped in.

    NAFNet blocks are spandrel's NAFBlock (the original file). Any other
    `BlockConfig` (Baseline, the ablation rungs) gets `_torch_block`, the
    original BaselineBlock generalised the same way nafnet_jax's block is. With
    TLC, each block's global pool becomes the original's local AvgPool2d
    (fast_imp=False) with this level's kernel.
    """
    _install_torchvision_stand_in()
    from spandrel.architectures.NAFNet.__arch.NAFNet_arch import NAFNet as TorchNAFNet

    from nafnet_jax.models.blocks import NAFNET_BLOCK
    from nafnet_jax.models.layers import tlc_kernels

    net = TorchNAFNet(img_channel=model.img_channel, width=model.width, middle_blk_num=model.middle_blk_num,
                      enc_blk_nums=list(model.enc_blk_nums), dec_blk_nums=list(model.dec_blk_nums))
    levels = len(model.enc_blk_nums)
    kernels = (tlc_kernels(model.tlc_train_size, levels) if model.tlc_train_size
               else (None,) * (levels + 1))
    stages = ([(seq, kernels[i]) for i, seq in enumerate(net.encoders)] + [(net.middle_blks, kernels[levels])]
              + [(seq, kernels[levels - 1 - i]) for i, seq in enumerate(net.decoders)])
    for seq, kernel in stages:
        for idx in range(len(seq)):
            if model.block != NAFNET_BLOCK:
                seq[idx] = _torch_block(seq[idx].norm1.weight.numel(), model.block)
            if kernel is not None:
                _use_local_pool(seq[idx], kernel)
    return net


def _torch_block(c: int, cfg) -> Any:
    """The original BaselineBlock, generalised to any `BlockConfig` (ablation rungs)."""
    import torch
    from torch import nn
    from spandrel.architectures.NAFNet.__arch.arch_util import LayerNorm2d

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d, f = c * cfg.dw_expand, c * cfg.ffn_expand
            gate = cfg.activation == "simple_gate"
            self.norm1 = LayerNorm2d(c) if cfg.norm else nn.Identity()
            self.norm2 = LayerNorm2d(c) if cfg.norm else nn.Identity()
            self.conv1 = nn.Conv2d(c, d, 1)
            self.conv2 = nn.Conv2d(d, d, 3, padding=1, groups=d)
            da, fa = (d // 2, f // 2) if gate else (d, f)
            if cfg.attention == "se":
                self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(da, da // 2, 1), nn.ReLU(),
                                        nn.Conv2d(da // 2, da, 1), nn.Sigmoid())
            elif cfg.attention == "sca":
                self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(da, da, 1))
            self.conv3 = nn.Conv2d(da, c, 1)
            self.conv4 = nn.Conv2d(c, f, 1)
            self.conv5 = nn.Conv2d(fa, c, 1)
            self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
            self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

        def act(self, x):
            if cfg.activation == "relu":
                return torch.relu(x)
            if cfg.activation == "gelu":
                return nn.functional.gelu(x)
            x1, x2 = x.chunk(2, dim=1)
            return x1 * x2

        def forward(self, inp):
            x = self.act(self.conv2(self.conv1(self.norm1(inp))))
            if cfg.attention == "se":
                x = x * self.se(x)
            elif cfg.attention == "sca":
                x = x * self.sca(x)
            y = inp + self.conv3(x) * self.beta
            x = self.conv5(self.act(self.conv4(self.norm2(y))))
            return y + x * self.gamma

    return Block()


def _use_local_pool(block, kernel: Tuple[int, int]) -> None:
    """Replaces the block's AdaptiveAvgPool2d(1) by TLC's local average (local_arch.py)."""
    import torch
    from torch import nn

    class LocalAvgPool(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            if kernel[0] >= h and kernel[1] >= w:
                return nn.functional.adaptive_avg_pool2d(x, 1)
            k1, k2 = min(h, kernel[0]), min(w, kernel[1])
            s = nn.functional.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
            out = (s[:, :, k1:, k2:] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2] + s[:, :, :-k1, :-k2]) / (k1 * k2)
            _h, _w = out.shape[2:]
            pad = ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2)
            return nn.functional.pad(out, pad, mode="replicate")

    for name in ("sca", "se"):
        seq = getattr(block, name, None)
        if seq is not None and isinstance(seq[0], torch.nn.AdaptiveAvgPool2d):
            seq[0] = LocalAvgPool()


def _randomise_torch_skip_init(net, seed: int) -> None:
    """beta/gamma U(+-0.1), as `random_params` does, so branches carry gradient."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)


def bench_torch(case: BenchCase, variant: str, opts: argparse.Namespace, recipe: Mapping[str, Any],
                flops: Optional[float]) -> Dict[str, Any]:
    """Times the PyTorch original on the same case; returns its row (with `error` if it failed)."""
    import torch

    model = build_bench_model(case)
    row = _base_row(case, opts, framework="torch", variant=variant)
    device = "cuda" if opts.platform == "gpu" and torch.cuda.is_available() else "cpu"
    if case.num_devices != 1:
        row["error"] = "PyTorch rows run on one device only"
        return row
    torch.manual_seed(opts.seed)
    # True only where the CPU supports it (x86 with SSE3 DAZ); False otherwise
    row["torch_flush_denormal"] = bool(torch.set_flush_denormal(opts.torch_denormals == "flush")
                                       and opts.torch_denormals == "flush")
    try:
        return _bench_torch(case, variant, opts, recipe, flops, row, model, device)
    finally:
        torch.set_flush_denormal(False)


def _bench_torch(case, variant, opts, recipe, flops, row, model, device):
    import torch

    net = build_torch_model(model).to(device)
    _randomise_torch_skip_init(net, opts.seed)
    sets = [tuple(torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).to(device) for a in pair)
            for pair in _input_sets(case, opts.input_sets, opts.seed + 1, model.img_channel)]
    def autocast():
        if case.dtype == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn = torch.compile(net) if variant == "compile" else net
    losses = []
    if case.mode == "forward":
        net.eval()

        def run_step(i):
            with torch.inference_mode(), autocast():
                fn(sets[i % len(sets)][0])
            sync()
    else:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.get("learning_rate", RECIPE["learning_rate"]),
                                betas=(0.9, 0.9), eps=1e-8,
                                weight_decay=recipe.get("weight_decay", RECIPE["weight_decay"]))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=recipe.get("total_steps", RECIPE["total_steps"]),
            eta_min=recipe.get("eta_min", RECIPE["eta_min"]))

        def run_step(i):
            lq, gt = sets[i % len(sets)]
            opt.zero_grad()
            with autocast():
                pred = fn(lq)
            mse = ((pred.float() - gt) ** 2).mean(dim=(1, 2, 3))
            loss = (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.get("grad_clip", RECIPE["grad_clip"]))
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            sync()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        run_step(0)  # eager: allocations; compile: tracing + Inductor codegen
    except Exception as exc:  # torch.compile needs a working C++ toolchain
        row.update(error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                   load_avg_before=list(load_before))
        return row
    first_call_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    memory = HostMemory()
    memory.start()
    times, cpu_s = _time_loop(run_step, opts.warmup, opts.steps)
    if device == "cuda":
        peak, source = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        peak, source = memory.peak()
    row.update(
        compile_s=first_call_s if variant == "compile" else None, first_call_s=first_call_s,
        flops_per_step=flops, flops_source="xla_cost_analysis_of_the_nafnet_jax_step",
        device=torch.cuda.get_device_name() if device == "cuda" else _cpu_model(), platform=device,
        peak_memory_bytes=peak, memory_source=source,
        rss_before_bytes=memory.rss_before if source.startswith("host") else None,
        load_avg_before=list(load_before), load_avg_after=list(os.getloadavg()),
        final_loss=losses[-1] if losses else None, cpu_s_per_step=cpu_s,
        torch_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
        torch_autocast="bfloat16" if case.dtype == "bfloat16" else None,
    )
    row.update(_rates(row, summarize_times(times), flops, opts, row["device"]))
    return row


# --------------------------------------------------------------------------- #
# Driver and output
# --------------------------------------------------------------------------- #

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nafnet-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to run")
    what.add_argument("--model", default="NAFNet-GoPro-width32", help="a published model name")
    what.add_argument("--config", default=None,
                      help="configs/*.py[:arg] (its `model` section) or a JSON model mapping; overrides --model")
    what.add_argument("--mode", default="forward,train", help="comma list of: forward, train")
    what.add_argument("--batch", type=int, default=1, help="global batch")
    what.add_argument("--crop", default="256", help="crop size, '256' or 'HxW'")
    what.add_argument("--dtype", default="float32", help="comma list of compute dtypes: float32, bfloat16")
    what.add_argument("--tlc", choices=("config", "on", "off"), default="config",
                      help="test-time local converter: as the model config, forced on (train size 256), or off")
    what.add_argument("--depthwise_impl", default="auto",
                      help="comma list of depthwise formulations to compare: auto, xla, shifted")
    what.add_argument("--remat", action="store_true", help="rematerialise each block (UNet(remat=True))")
    what.add_argument("--num_devices", type=int, default=1, help="data-parallel devices (batch split over them)")
    what.add_argument("--host_device_count", type=int, default=0,
                      help="CPU only: simulate this many XLA devices (they share the same cores)")
    how = p.add_argument_group("how to time")
    how.add_argument("--steps", type=int, default=10, help="timed steps")
    how.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    how.add_argument("--input_sets", type=int, default=4, help="random input batches to cycle over")
    how.add_argument("--threads", type=int, default=0,
                     help="CPU threads for both frameworks (pins the process to that many CPUs); 0: all")
    how.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for this run (before the backend starts)")
    how.add_argument("--peak_tflops", type=float, default=0.0, help="peak TFLOP/s per device for MFU")
    how.add_argument("--seed", type=int, default=0)
    torch_group = p.add_argument_group("PyTorch comparison")
    torch_group.add_argument("--torch", nargs="?", const="eager,compile", default="",
                             help="also time the PyTorch original: comma list of eager, compile "
                                  "(bare --torch: both)")
    torch_group.add_argument("--torch_denormals", choices=("flush", "keep"), default="flush",
                             help="flush: torch.set_flush_denormal(True), as XLA:CPU does; keep: PyTorch's default")
    torch_group.add_argument("--omp_wait_policy", choices=("default", "passive", "active"), default="default",
                             help="OMP_WAIT_POLICY for PyTorch's OpenMP pool; 'passive' on a shared, loaded machine "
                                  "(spinning threads there stall each other)")
    out = p.add_argument_group("output")
    out.add_argument("--jsonl", default=None, help="append one JSON object per row to FILE ('-': stdout)")
    out.add_argument("--markdown", action="store_true", help="also print a Markdown table (docs/benchmarks.md)")
    out.add_argument("--quiet", action="store_true", help="no terminal table")
    args = p.parse_args(argv)
    args.modes = _split(args.mode, MODES, "--mode")
    args.dtypes = _split(args.dtype, DTYPES, "--dtype")
    args.impls = _split(args.depthwise_impl, ("auto", "xla", "shifted"), "--depthwise_impl")
    args.torch_variants = _split(args.torch, TORCH_VARIANTS, "--torch")
    args.height, args.width = _parse_crop(args.crop)
    if args.steps < 1 or args.input_sets < 1 or args.warmup < 0:
        p.error("--steps and --input_sets must be >= 1, --warmup >= 0")
    return args


def configure_runtime(args: argparse.Namespace) -> None:
    """Threads, XLA flags and simulated devices; must run before any backend starts.

    Touches the process only for options given: --threads pins the process to
    that many CPUs (XLA:CPU and PyTorch's pools then both use them), --xla_flags
    and --host_device_count extend XLA_FLAGS / jax_num_cpu_devices.
    """
    if args.threads:
        allowed = sorted(os.sched_getaffinity(0))
        if args.threads > len(allowed):
            raise SystemExit(f"--threads {args.threads} but only {len(allowed)} CPUs are available")
        os.sched_setaffinity(0, allowed[:args.threads])
    if args.omp_wait_policy != "default":  # read when libgomp starts, i.e. at `import torch`
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags += args.xla_flags.split()
    if args.threads and not any(f.startswith("--xla_cpu_multi_thread_eigen") for f in flags):
        flags.append("--xla_cpu_multi_thread_eigen=true")
    if flags:
        os.environ["XLA_FLAGS"] = " ".join(flags)
    if args.host_device_count:
        import jax
        jax.config.update("jax_num_cpu_devices", args.host_device_count)


def run(args: argparse.Namespace,
        on_rows: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> List[Dict[str, Any]]:
    """Measures every requested case; returns the rows (nafnet_jax first, then PyTorch).

    `on_rows` gets each (mode, dtype) group of rows as soon as it is complete,
    so a long run that is stopped keeps what it measured.
    """
    import jax

    args.platform = jax.default_backend()
    args.threads_used = args.threads or len(os.sched_getaffinity(0))
    if args.torch_variants:
        import torch
        torch.set_num_threads(args.threads_used)
    label, model_config, recipe = load_model_config(args)
    model_config = _with_tlc(model_config, args.tlc)
    if args.remat:
        model_config["remat"] = True
    rows = []
    for mode in args.modes:
        for dtype in args.dtypes:
            jax_rows, torch_rows = [], []
            for impl in args.impls:
                case = BenchCase(label, model_config, mode, args.batch, args.height, args.width, dtype,
                                 impl, args.num_devices)
                jax_rows.append(bench_jax(case, args, recipe))
                _progress(args, jax_rows[-1])
            flops = jax_rows[0]["flops_per_step"] if jax_rows else None
            for variant in args.torch_variants:
                case = BenchCase(label, model_config, mode, args.batch, args.height, args.width, dtype,
                                 "auto", 1)
                trow = bench_torch(case, variant, args, recipe, flops)
                _progress(args, trow)
                for jrow in jax_rows:
                    if "error" not in trow and jrow["num_devices"] == 1:
                        jrow[f"speedup_vs_torch_{variant}"] = trow["ms_median"] / jrow["ms_median"]
                torch_rows.append(trow)
            rows += jax_rows + torch_rows
            if on_rows is not None:
                on_rows(jax_rows + torch_rows)
    return rows


def _progress(args: argparse.Namespace, row: Mapping[str, Any]) -> None:
    if args.quiet:
        return
    what = f"{row['framework']}/{row['variant']} {row['mode']} {row['dtype']}"
    if "error" in row:
        print(f"[nafnet-bench] {what}: FAILED {row['error']}", file=sys.stderr, flush=True)
    else:
        print(f"[nafnet-bench] {what} dw={row['depthwise_impl']}: {row['ms_median']:.1f} ms/step "
              f"(load {row['load_avg_before'][0]:.2f})", file=sys.stderr, flush=True)


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


TABLE_COLUMNS = ("framework", "variant", "mode", "dtype", "dw", "batch", "crop", "compile s", "ms/step (p10-p90)",
                 "CPU s/step", "img/s", "TFLOP/s", "MFU", "peak mem GiB", "XLA temp GiB", "jax/torch", "load 1m")


def _table_cells(row: Mapping[str, Any]) -> List[str]:
    if "error" in row:
        return [row["framework"], row["variant"], row["mode"], row["dtype"], "-", str(row["batch"]),
                f"{row['height']}x{row['width']}", "-", f"failed: {row['error'][:60]}", "-", "-", "-", "-",
                "-", "-", "-", "-"]
    dw = row.get("depthwise_impl_resolved") or "-"
    if row["framework"] == "nafnet_jax" and row["depthwise_impl"] == "auto":
        dw = f"auto={dw}"
    ratios = [f"{row[k]:.2f} ({k.rsplit('_', 1)[1]})" for k in sorted(row) if k.startswith("speedup_vs_torch_")]
    mem = row.get("peak_memory_bytes")
    return [
        row["framework"], row["variant"], row["mode"], row["dtype"], dw, str(row["batch"]),
        f"{row['height']}x{row['width']}", _fmt(row.get("compile_s"), ".1f"),
        f"{row['ms_median']:.1f} ({row['ms_p10']:.1f}-{row['ms_p90']:.1f})",
        _fmt(row.get("cpu_s_per_step"), ".2f"), _fmt(row.get("images_per_s"), ".2f"), _fmt(row.get("tflops"), ".3f"),
        _fmt(row.get("mfu") and 100 * row["mfu"], ".1f") + ("%" if row.get("mfu") else ""),
        _fmt(mem and mem / 2 ** 30, ".2f") + ("*" if mem and row["memory_source"].startswith("host") else ""),
        _fmt(row.get("xla_temp_bytes") and row["xla_temp_bytes"] / 2 ** 30, ".2f"),
        ", ".join(ratios) or "-", f"{row['load_avg_before'][0]:.2f}",
    ]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width terminal table."""
    cells = [list(TABLE_COLUMNS)] + [_table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any((r.get("memory_source") or "").startswith("host") for r in rows):
        lines.append("* peak host RSS of the process (no device memory stats on this backend)")
    return "\n".join(lines)


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The same table as GitHub Markdown, for docs/benchmarks.md."""
    out = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in _table_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def write_jsonl(rows: Sequence[Mapping[str, Any]], target: str) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(target, "a") as f:
            f.write(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    configure_runtime(args)
    rows = run(args, on_rows=(lambda group: write_jsonl(group, args.jsonl)) if args.jsonl else None)
    if not args.quiet and args.jsonl != "-":
        print(format_table(rows))
    if args.markdown:
        print(format_markdown(rows))
    return 1 if any("error" in r and r["variant"] != "compile" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
