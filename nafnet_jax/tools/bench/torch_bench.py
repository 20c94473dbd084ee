"""Times the PyTorch original on the same case: eager or `torch.compile`, float32 or bf16 autocast.

The network is `nafnet_jax.torch_reference.build_torch_model` of the case's
model (the original's architecture, its LayerNorm backward included), or
`build_torch_nafssr` for a NAFSSR (the original's DropPath too). The train
step is the original's (basicsr's image_restoration_model): PSNR or MSE loss,
`clip_grad_norm_`, AdamW and a cosine schedule with the config's numbers, with
the config's micro-batches accumulated when `train.grad_accum_steps` > 1. Only
the 'psnr' and 'mse' losses and one device are supported; other cases give an
error row.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Dict, Optional

from nafnet_jax.tools.bench import timing
from nafnet_jax.tools.bench.cases import BenchCase
from nafnet_jax.tools.bench.jax_bench import input_sets
from nafnet_jax.tools.bench.report import base_row, cpu_model

TORCH_VARIANTS = ("eager", "compile")
TORCH_LOSSES = ("psnr", "mse")  # basicsr's PSNRLoss (NAFNet recipes) and MSELoss (NAFSSR recipes)


def bench_torch(case: BenchCase, variant: str, opts: Any, flops: Optional[float],
                platform: str = "cpu") -> Dict[str, Any]:
    """Times the PyTorch original on `case`; returns its row (with `error` if it could not run).

    Args:
      variant: 'eager' or 'compile' (`torch.compile` with its default backend).
      flops: XLA's FLOP count of the same nafnet_jax step (PyTorch has none of its own).
      platform: where the nafnet_jax rows ran ('gpu': PyTorch runs on CUDA, else on the CPU).
    """
    import torch

    from nafnet_jax.models import build_model

    row = base_row(case, opts, framework="torch", variant=variant)
    row["num_devices"] = 1
    if case.num_devices != 1:
        row["error"] = "PyTorch rows run on one device only"
        return row
    if case.mode == "train" and case.config.train.loss not in TORCH_LOSSES:
        row["error"] = f"PyTorch rows implement the {TORCH_LOSSES} losses only, not {case.config.train.loss!r}"
        return row
    device = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(opts.seed)
    # True only where the CPU supports it (x86 with SSE3 DAZ); False otherwise
    row["torch_flush_denormal"] = bool(torch.set_flush_denormal(opts.torch_denormals == "flush")
                                       and opts.torch_denormals == "flush")
    try:
        return _time_torch(case, variant, opts, flops, row, build_model(case.config.model.to_dict()), device)
    finally:
        torch.set_flush_denormal(False)


def _randomise_skip_init(net: Any, seed: int) -> None:
    """beta/gamma U(+-0.1) instead of the original's zeros, so every branch carries gradient from step 1."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)


def _train_step(net: Any, fn: Any, config: Any, autocast: Any):
    """The original's train step on one batch: returns `step(lq, gt) -> loss tensor`."""
    import torch

    o, t = config.optimizer, config.train
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.total_steps, eta_min=o.eta_min)
    micro = int(t.grad_accum_steps)
    psnr_loss = t.loss == "psnr"

    def step(lq, gt):
        opt.zero_grad()
        total = 0.0
        for lq_m, gt_m in zip(lq.chunk(micro), gt.chunk(micro)):
            with autocast():
                pred = fn(lq_m)
            mse = ((pred.float() - gt_m) ** 2).mean(dim=(1, 2, 3))
            loss = ((10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean() if psnr_loss else mse.mean()) / micro
            loss.backward()
            total = total + loss.detach()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        return total

    return step


def _time_torch(case: BenchCase, variant: str, opts: Any, flops: Optional[float], row: Dict[str, Any],
                model: Any, device: str) -> Dict[str, Any]:
    import torch

    from nafnet_jax.models import NAFSSR
    from nafnet_jax.torch_reference import build_torch_model, build_torch_nafssr

    net = (build_torch_nafssr(model) if isinstance(model, NAFSSR) else build_torch_model(model)).to(device)
    _randomise_skip_init(net, opts.seed)
    sets = [tuple(torch.from_numpy(s[k].transpose(0, 3, 1, 2).copy()).to(device) for k in ("lq", "gt"))
            for s in input_sets(case, opts.input_sets, opts.seed + 1, model.img_channel, model.scale)]

    def autocast():
        if case.dtype == "bfloat16":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(_result):
        if device == "cuda":
            torch.cuda.synchronize()

    fn = torch.compile(net) if variant == "compile" else net
    if case.mode == "forward":
        net.eval()

        def run_step(i):
            with torch.inference_mode(), autocast():
                return fn(sets[i % len(sets)][0])
    else:
        net.train()
        train_step = _train_step(net, fn, case.config, autocast)

        def run_step(i):
            return train_step(*sets[i % len(sets)])

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        first = run_step(0)  # eager: allocations; compile: tracing + Inductor codegen
        sync(first)
    except Exception as exc:  # torch.compile needs a working C++ toolchain
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        row.update(error=f"{type(exc).__name__}: {message}", load_avg_before=list(load_before))
        return row
    first_call_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    memory = timing.HostMemory()
    memory.start()
    last = [None]

    def run_and_keep(i):  # keeps only the latest result alive, as the loop's memory would
        last[0] = run_step(i)
        return last[0]

    times = timing.time_steps(run_and_keep, sync, opts.warmup, opts.steps, per_step=opts.per_step, start=1)
    if device == "cuda":
        peak, source = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        peak, source = memory.peak()
    row.update(
        compile_s=first_call_s if variant == "compile" else None, first_call_s=first_call_s,
        flops_per_step=flops, flops_source="xla_cost_analysis_of_the_nafnet_jax_step",
        device=torch.cuda.get_device_name() if device == "cuda" else cpu_model(), platform=device,
        peak_memory_bytes=peak, memory_source=source,
        rss_before_bytes=memory.rss_before if source.startswith("host") else None,
        load_avg_before=list(load_before), load_avg_after=list(os.getloadavg()),
        final_loss=float(last[0]) if case.mode == "train" else None,
        torch_threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
        torch_autocast="bfloat16" if case.dtype == "bfloat16" else None, **timing.loop_fields(times),
    )
    row.update(timing.rates(row, flops, opts.peak_tflops, row["device"]))
    return row
