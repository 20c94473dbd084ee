"""Timers, memory probes and rates: how a benchmark row's numbers are measured.

Nothing here knows which framework it times: a step is a callable, and the
caller says how to wait for the device (`sync`).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# Dense peak TFLOP/s per device at XLA's default matmul precision: float32 runs
# as TF32 on NVIDIA GPUs and as bf16 passes on TPUs, so both dtypes share the
# tensor-core peak there. Matched on lower-cased `device_kind` substrings, first
# match wins (so "h100 pcie" precedes "h100").
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


@dataclasses.dataclass
class LoopTimes:
    """What `time_steps` measured.

    Attributes:
      total_s: wall seconds of the timed steps, from the first dispatch to the
        end of the final wait.
      steps: how many steps were timed.
      cpu_s: process CPU seconds (all threads) over the same span.
      per_step_s: wall seconds of each step when each was waited for
        (`per_step=True`), else empty.
    """

    total_s: float
    steps: int
    cpu_s: float
    per_step_s: List[float]

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.total_s / self.steps


def time_steps(run_step: Callable[[int], Any], sync: Callable[[Any], None], warmup: int, steps: int,
               per_step: bool = False, start: int = 0) -> LoopTimes:
    """Runs `warmup` waited-for steps, then times `steps` steps.

    By default the timed steps are dispatched back to back and `sync` waits once,
    on the last step's result, so asynchronous dispatch overlaps host and device
    work as in a training loop. With `per_step`, `sync` waits after every step
    and each step's time is kept as well (the distribution, at the cost of the
    overlap).

    Args:
      run_step: `run_step(i) -> result`; i counts from `start` over warm-up and timed steps.
      sync: blocks until a result (and everything before it) is computed.
    """
    for i in range(start, start + warmup):
        sync(run_step(i))
    per: List[float] = []
    c0, t0 = time.process_time(), time.perf_counter()
    out = None
    for i in range(steps):
        s0 = time.perf_counter()
        out = run_step(start + warmup + i)
        if per_step:
            sync(out)
            per.append(time.perf_counter() - s0)
    if not per_step:
        sync(out)
    return LoopTimes(time.perf_counter() - t0, steps, time.process_time() - c0, per)


def summarize_times(seconds: Sequence[float]) -> Dict[str, float]:
    """Median and spread of per-step times, in milliseconds (percentiles as numpy's default)."""
    ms = sorted(1e3 * s for s in seconds)

    def pct(q):  # linear interpolation between closest ranks
        pos = (len(ms) - 1) * q
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(ms) - 1)
        return ms[lo] + (ms[hi] - ms[lo]) * (pos - lo)

    med = statistics.median(ms)
    return {"ms_median": med, "ms_p10": pct(0.10), "ms_p90": pct(0.90), "ms_min": ms[0], "ms_max": ms[-1],
            "spread_pct": 100.0 * (pct(0.90) - pct(0.10)) / med if med > 0 else 0.0}


def loop_fields(times: LoopTimes) -> Dict[str, Any]:
    """The row fields of a timed loop: mean ms/step, CPU s/step, and the spread when per-step."""
    out: Dict[str, Any] = {"ms_per_step": times.ms_per_step, "cpu_s_per_step": times.cpu_s / times.steps,
                           "per_step_timing": bool(times.per_step_s)}
    out.update(summarize_times(times.per_step_s) if times.per_step_s else
               dict.fromkeys(("ms_median", "ms_p10", "ms_p90", "ms_min", "ms_max", "spread_pct")))
    return out


class HostMemory:
    """Peak resident memory of this process over a region (Linux /proc), else the lifetime peak."""

    def __init__(self):
        self.resettable = False
        self.rss_before: Optional[int] = None

    def start(self) -> None:
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.rss_before = _proc_status_bytes("VmRSS")

    def peak(self) -> Tuple[Optional[int], str]:
        """(bytes, source): the peak since `start`, or the process's lifetime peak where it cannot reset."""
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


def device_peak_memory(devices) -> Optional[int]:
    """The largest `peak_bytes_in_use` over the devices, or None where the backend reports none (CPU)."""
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


def xla_flops(compiled) -> Optional[float]:
    """FLOPs of a compiled XLA program (per device for an SPMD program), from its cost analysis."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_memory(compiled) -> Dict[str, Optional[int]]:
    """XLA's own accounting of a compiled program: temporaries, arguments, outputs (bytes per device)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:
        ma = None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return {f"xla_{f.replace('_size_in', '')}": (int(getattr(ma, f)) if ma is not None else None) for f in fields}


def known_peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
    """The dense peak TFLOP/s of a device kind in a dtype, or None when not in `KNOWN_PEAK_TFLOPS`."""
    kind = device_kind.lower()
    for key, peaks in KNOWN_PEAK_TFLOPS:
        if key in kind:
            return peaks.get(dtype)
    return None


def rates(row: Mapping[str, Any], flops: Optional[float], peak_tflops: float,
          device_kind: str) -> Dict[str, Any]:
    """images/s, achieved TFLOP/s and MFU of a timed row (from its `ms_per_step`).

    Args:
      row: has batch, num_devices, dtype, ms_per_step.
      flops: per-device FLOPs of one step (XLA counts the per-device SPMD program).
      peak_tflops: the user's peak per device (0: look the device kind up).
    """
    sec = row["ms_per_step"] / 1e3
    out: Dict[str, Any] = {"images_per_s": row["batch"] / sec if sec > 0 else None}
    total = flops * row["num_devices"] if flops else None
    out["tflops"] = total / sec / 1e12 if total and sec > 0 else None
    peak = peak_tflops or known_peak_tflops(device_kind, row["dtype"])
    out["peak_tflops"] = peak
    out["peak_tflops_source"] = "--peak_tflops" if peak_tflops else ("known_device" if peak else None)
    out["mfu"] = out["tflops"] / (peak * row["num_devices"]) if out["tflops"] and peak else None
    return out
