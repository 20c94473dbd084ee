"""Compiles and times nafnet_jax: the trainer's own step (train) or the model it trains (forward).

Both modes start from `build_train_setup(case.config)`, the function `train.py`
trains with: the same model (specialised for the mesh's platform), optimiser,
loss, gradient accumulation, non-finite select, mesh and shardings. Nothing of
the step is re-implemented here.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from nafnet_jax.tools.bench import timing
from nafnet_jax.tools.bench.cases import BenchCase
from nafnet_jax.tools.bench.report import base_row
from nafnet_jax.models.layers import resolve_depthwise_impl
from nafnet_jax.training.setup import TrainSetup, build_train_setup


def input_sets(case: BenchCase, count: int, seed: int, channels: int,
               scale: int = 1) -> List[Dict[str, np.ndarray]]:
    """`count` random batches {'lq', 'gt'} as NumPy NHWC float32 in [0, 1], never all zeros.

    lq is uniform in [0.05, 1]; gt is lq (repeated `scale` times along H and W for a
    super-resolution model) plus Gaussian noise (sigma 0.05), so the loss and its
    gradient are those of a real restoration pair.
    """
    rng = np.random.default_rng(seed)
    shape = (case.batch, case.height, case.width, channels)
    sets = []
    for _ in range(count):
        lq = rng.uniform(0.05, 1.0, shape).astype(np.float32)
        up = lq.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else lq
        gt = np.clip(up + rng.normal(0.0, 0.05, up.shape), 0.0, 1.0).astype(np.float32)
        sets.append({"lq": lq, "gt": gt})
    return sets


def device_input_sets(setup: TrainSetup, case: BenchCase, count: int, seed: int) -> List[Dict[str, jax.Array]]:
    """`input_sets` placed on the mesh with the trainer's batch sharding."""
    sets = [jax.device_put(s, setup.batch_sharding)
            for s in input_sets(case, count, seed, setup.model.img_channel, setup.model.scale)]
    return jax.block_until_ready(sets)


def _sync(result: Any) -> None:
    jax.block_until_ready(result)


def train_runner(setup: TrainSetup, case: BenchCase, state: Any, sets: List[Dict[str, jax.Array]]
                 ) -> Tuple[Any, Callable[[int], Any], Callable[[], Any], float]:
    """The trainer's step, compiled ahead of time, and a `run_step(i)` that advances the state.

    Returns:
      (compiled, run_step, last, compile_s): run_step(i) runs one step on
      `sets[i % len(sets)]` and returns (state, metrics) (not waited for);
      last() is that pair for the last step run.
    """
    t0 = time.perf_counter()
    compiled = setup.lower(case.batch, (case.height, case.width)).compile()
    compile_s = time.perf_counter() - t0
    holder = {"last": (state, None)}

    def run_step(i: int):
        holder["last"] = compiled(holder["last"][0], sets[i % len(sets)])
        return holder["last"]

    return compiled, run_step, lambda: holder["last"], compile_s


def forward_runner(setup: TrainSetup, params: Any, sets: List[Dict[str, jax.Array]]
                   ) -> Tuple[Any, Callable[[int], Any], float]:
    """The platform-specialised model the trainer builds, jitted for inference on `params`."""
    model = setup.model
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    t0 = time.perf_counter()
    compiled = fwd.lower(params, sets[0]["lq"]).compile()
    compile_s = time.perf_counter() - t0
    return compiled, (lambda i: compiled(params, sets[i % len(sets)]["lq"])), compile_s


def run_case(case: BenchCase, opts: Any) -> Tuple[Dict[str, Any], Any]:
    """Compiles and times one case; returns (row, final train state or None for forward).

    Order: build the setup, init the state (`setup.init_state`, timed as
    `init_s`), compile (`compile_s`), one untimed call (allocations), `warmup`
    untimed steps, then `steps` timed steps with one wait at the end (or one per
    step with `opts.per_step`). With `opts.profile_dir`, `opts.profile_steps`
    more steps run under `jax.profiler.trace` after the timed ones.
    """
    setup = build_train_setup(case.config)
    t0 = time.perf_counter()
    state = jax.block_until_ready(setup.init_state(seed=opts.seed))
    init_s = time.perf_counter() - t0
    sets = device_input_sets(setup, case, opts.input_sets, opts.seed + 1)
    last: Optional[Callable[[], Any]] = None
    if case.mode == "forward":
        params = state.params
        del state  # the optimiser state would only inflate the memory figures
        compiled, run_step, compile_s = forward_runner(setup, params, sets)
    else:
        compiled, run_step, last, compile_s = train_runner(setup, case, state, sets)
        del state  # donated to the first step

    load_before = os.getloadavg()
    _sync(run_step(0))
    memory = timing.HostMemory()
    memory.start()
    # Step k of the whole run (first call, warm-up, timed, profiled) uses input set k % input_sets.
    times = timing.time_steps(run_step, _sync, opts.warmup, opts.steps, per_step=opts.per_step, start=1)
    load_after = os.getloadavg()
    peak = timing.device_peak_memory(setup.mesh.devices.flat)
    source = "device.memory_stats:peak_bytes_in_use"
    if peak is None:
        peak, source = memory.peak()
    steps_run = 1 + opts.warmup + opts.steps
    profile_dir = None
    if opts.profile_dir:
        profile_dir = profile_steps(run_step, steps_run, opts.profile_steps, opts.profile_dir,
                                    name=f"{case.mode}_step")
        steps_run += opts.profile_steps

    device = setup.mesh.devices.flat[0]
    flops = timing.xla_flops(compiled)
    row = base_row(case, opts, framework="nafnet_jax", variant="jit")
    row.update(
        num_devices=int(setup.mesh.devices.size), platform=setup.platform, device=device.device_kind,
        depthwise_impl_resolved=resolve_depthwise_impl(case.depthwise_impl, setup.platform),
        tlc_train_size=list(setup.model.tlc_train_size) if setup.model.tlc_train_size else None,
        init_s=init_s, compile_s=compile_s, flops_per_step=flops, flops_source="xla_cost_analysis",
        peak_memory_bytes=peak, memory_source=source,
        rss_before_bytes=memory.rss_before if source.startswith("host") else None,
        load_avg_before=list(load_before), load_avg_after=list(load_after),
        steps_run=steps_run, profile_dir=profile_dir, **timing.xla_memory(compiled),
        **timing.loop_fields(times),
    )
    state_out = None
    if last is not None:
        state_out, metrics = last()
        row.update(final_loss=float(metrics["loss"]), final_psnr=float(metrics["psnr"]),
                   step=int(state_out.step), nonfinite_count=int(state_out.nonfinite_count))
    row.update(timing.rates(row, flops, opts.peak_tflops, device.device_kind))
    return row, state_out


def profile_steps(run_step: Callable[[int], Any], start: int, count: int, log_dir: str,
                  name: str = "train_step") -> str:
    """Runs `count` more steps under `jax.profiler.trace(log_dir)` (a TensorBoard / Perfetto trace).

    Each step is annotated `name` with its step number (TensorBoard's step-time view).
    """
    os.makedirs(log_dir, exist_ok=True)
    with jax.profiler.trace(log_dir):
        out = None
        for i in range(count):
            with jax.profiler.StepTraceAnnotation(name, step_num=start + i):
                out = run_step(start + i)
        _sync(out)
    return log_dir


def bench_jax(case: BenchCase, opts: Any) -> Dict[str, Any]:
    """Compiles and times one case on nafnet_jax; returns its row."""
    return run_case(case, opts)[0]
