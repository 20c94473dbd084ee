"""The rows of `nafnet-bench`: their common fields, and the terminal / Markdown / JSONL forms."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence


def base_row(case: Any, opts: Any, framework: str, variant: str) -> Dict[str, Any]:
    """Fields every row has: what was measured (case, timing options) and where (host, versions)."""
    cfg = case.config
    return {
        "framework": framework, "variant": variant, "model": case.label, "mode": case.mode,
        "batch": case.batch, "height": case.height, "width": case.width, "dtype": case.dtype,
        "depthwise_impl": case.depthwise_impl, "remat": bool(cfg.model.remat),
        "tlc": cfg.model.tlc_train_size is not None, "num_devices": case.num_devices,
        "fsdp": int(cfg.mesh.fsdp), "grad_accum_steps": int(cfg.train.grad_accum_steps),
        "loss": cfg.train.loss, "nonfinite": cfg.train.nonfinite,
        "steps": opts.steps, "warmup": opts.warmup, "input_sets": opts.input_sets,
        "threads": threads_used(opts), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host_cpu": cpu_model(), **versions(),
    }


def threads_used(opts: Any) -> int:
    """CPU threads both frameworks get: --threads, else every CPU this process may run on."""
    return opts.threads or len(os.sched_getaffinity(0))


def cpu_model() -> str:
    """The host CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> Dict[str, Optional[str]]:
    """Installed versions of the packages a row depends on (None: not installed)."""
    from importlib import metadata
    out: Dict[str, Optional[str]] = {}
    for dist in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            out[f"{dist}_version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[f"{dist}_version"] = None
    out["python_version"] = platform.python_version()
    return out


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


TABLE_COLUMNS = ("framework", "variant", "mode", "dtype", "dw", "batch", "crop", "compile s", "ms/step",
                 "p10-p90", "CPU s/step", "img/s", "TFLOP/s", "MFU", "peak mem GiB", "XLA temp GiB",
                 "jax/torch", "load 1m")


def _table_cells(row: Mapping[str, Any]) -> List[str]:
    head = [row["framework"], row["variant"], row["mode"], row["dtype"]]
    if "error" in row:
        return head + ["-", str(row["batch"]), f"{row['height']}x{row['width']}", "-",
                       f"failed: {row['error'][:60]}"] + ["-"] * (len(TABLE_COLUMNS) - 9)
    dw = row.get("depthwise_impl_resolved") or "-"
    if row["framework"] == "nafnet_jax" and row["depthwise_impl"] == "auto":
        dw = f"auto={dw}"
    ratios = [f"{row[k]:.2f} ({k.rsplit('_', 1)[1]})" for k in sorted(row) if k.startswith("speedup_vs_torch_")]
    mem = row.get("peak_memory_bytes")
    spread = (f"{row['ms_p10']:.1f}-{row['ms_p90']:.1f}" if row.get("ms_p10") is not None else "-")
    return head + [
        dw, str(row["batch"]), f"{row['height']}x{row['width']}", _fmt(row.get("compile_s"), ".1f"),
        f"{row['ms_per_step']:.1f}", spread,
        _fmt(row.get("cpu_s_per_step"), ".2f"), _fmt(row.get("images_per_s"), ".2f"), _fmt(row.get("tflops"), ".3f"),
        _fmt(row.get("mfu") and 100 * row["mfu"], ".1f") + ("%" if row.get("mfu") else ""),
        _fmt(mem and mem / 2 ** 30, ".2f") + ("*" if mem and row["memory_source"].startswith("host") else ""),
        _fmt(row.get("xla_temp_bytes") and row["xla_temp_bytes"] / 2 ** 30, ".2f"),
        ", ".join(ratios) or "-", f"{row['load_avg_before'][0]:.2f}",
    ]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width terminal table, one line per row."""
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
    """Appends one JSON object per row to `target` ('-': stdout); never truncates an existing file."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(target, "a") as f:
            f.write(text)


def progress_line(row: Mapping[str, Any]) -> str:
    """One stderr line per finished row."""
    what = f"{row['framework']}/{row['variant']} {row['mode']} {row['dtype']}"
    if "error" in row:
        return f"[nafnet-bench] {what}: FAILED {row['error']}"
    return (f"[nafnet-bench] {what} dw={row.get('depthwise_impl_resolved') or row['depthwise_impl']}: "
            f"{row['ms_per_step']:.1f} ms/step (load {row['load_avg_before'][0]:.2f})")
