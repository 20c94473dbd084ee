"""`nafnet-bench` command line: parse, set up the process, run the cases, print the rows."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from nafnet_jax.tools.bench import report

MODES = ("forward", "train")
DTYPES = ("float32", "bfloat16")
DEPTHWISE_IMPLS = ("auto", "xla", "shifted")
TORCH_VARIANTS = ("eager", "compile")


def _parse_crop(text: str) -> Tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _split(text: str, allowed: Sequence[str], flag: str) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown value(s) {bad}; choose from {list(allowed)}")
    return items


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses and checks `nafnet-bench` arguments (see `--help`)."""
    from nafnet_jax.tools.bench import __doc__ as package_doc

    p = argparse.ArgumentParser(prog="nafnet-bench", description=package_doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to run")
    what.add_argument("--model", default="NAFNet-GoPro-width32",
                      help="a published model name (with base_config()'s recipe)")
    what.add_argument("--config", default=None,
                      help="configs/*.py[:arg] (its model and recipe) or a JSON file of config sections "
                           "(or a bare model mapping); overrides --model")
    what.add_argument("--mode", default="forward,train", help="comma list of: forward, train")
    what.add_argument("--batch", type=int, default=None,
                      help="global batch (default: the config's train.batch_size with --config, else 1)")
    what.add_argument("--crop", default=None,
                      help="crop size, '256' or 'HxW' (default: the config's data.crop_size with --config, "
                           "else 256)")
    what.add_argument("--dtype", default="float32", help="comma list of compute dtypes: float32, bfloat16")
    what.add_argument("--tlc", choices=("config", "on", "off"), default="config",
                      help="test-time local converter: as the config, forced on (train size 256), or off")
    what.add_argument("--depthwise_impl", default="auto",
                      help="comma list of depthwise formulations to compare: auto, xla, shifted")
    what.add_argument("--remat", action="store_true", help="rematerialise each block (model.remat)")
    what.add_argument("--grad_accum", type=int, default=None,
                      help="micro-batches per update (train.grad_accum_steps; default: the config's)")
    what.add_argument("--num_devices", type=int, default=None,
                      help="devices of the mesh (mesh.num_devices; default: the config's, 0 = all visible)")
    what.add_argument("--fsdp", type=int, default=None,
                      help="size of the mesh's fsdp axis (mesh.fsdp; default: the config's)")
    what.add_argument("--host_device_count", type=int, default=0,
                      help="CPU only: simulate this many XLA devices (they share the same cores)")
    how = p.add_argument_group("how to time")
    how.add_argument("--steps", type=int, default=10, help="timed steps")
    how.add_argument("--warmup", type=int, default=2, help="untimed steps after the first call")
    how.add_argument("--per_step", action="store_true",
                     help="wait for every step and report the spread (median, p10-p90); default: one wait "
                          "after the last timed step, as a training loop dispatches")
    how.add_argument("--input_sets", type=int, default=4, help="random input batches to cycle over")
    how.add_argument("--threads", type=int, default=0,
                     help="CPU threads for both frameworks (pins the process to that many CPUs); 0: all")
    how.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for this run (before the backend starts)")
    how.add_argument("--peak_tflops", type=float, default=0.0, help="peak TFLOP/s per device for MFU")
    how.add_argument("--seed", type=int, default=0)
    how.add_argument("--profile_dir", default=None,
                     help="write a jax.profiler trace (TensorBoard / Perfetto) of --profile_steps more steps "
                          "of each nafnet_jax case to this folder")
    how.add_argument("--profile_steps", type=int, default=3, help="steps traced with --profile_dir")
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
    out.add_argument("--quiet", action="store_true", help="no terminal table, no progress lines")
    args = p.parse_args(argv)
    args.modes = _split(args.mode, MODES, "--mode")
    args.dtypes = _split(args.dtype, DTYPES, "--dtype")
    args.impls = _split(args.depthwise_impl, DEPTHWISE_IMPLS, "--depthwise_impl")
    args.torch_variants = _split(args.torch, TORCH_VARIANTS, "--torch")
    args.height, args.width = _parse_crop(args.crop) if args.crop else (None, None)
    if args.steps < 1 or args.input_sets < 1 or args.warmup < 0 or args.profile_steps < 1:
        p.error("--steps, --input_sets and --profile_steps must be >= 1, --warmup >= 0")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch {args.batch}: expected >= 1")
    return args


def configure_runtime(args: argparse.Namespace) -> None:
    """Threads, XLA flags and simulated devices; must run before any backend starts.

    Touches the process only for options given: --threads pins the process to
    that many CPUs (XLA:CPU sizes its pool from the CPUs it may run on, and
    PyTorch's pool then gets the same count), --xla_flags and
    --host_device_count extend XLA_FLAGS / jax_num_cpu_devices.
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
    """Measures every requested case; returns the rows (per (mode, dtype): nafnet_jax, then PyTorch).

    `on_rows` gets each (mode, dtype) group of rows as soon as it is complete,
    so a long run that is stopped keeps what it measured.
    """
    from nafnet_jax.tools.bench.cases import make_cases
    from nafnet_jax.tools.bench.jax_bench import bench_jax

    if args.torch_variants:
        import torch
        torch.set_num_threads(report.threads_used(args))
    rows = []
    for _mode, _dtype, cases in make_cases(args):
        jax_rows = []
        for case in cases:
            jax_rows.append(bench_jax(case, args))
            _progress(args, jax_rows[-1])
        torch_rows = []
        if args.torch_variants:
            from nafnet_jax.tools.bench.torch_bench import bench_torch
            flops, platform = jax_rows[0]["flops_per_step"], jax_rows[0]["platform"]
            for variant in args.torch_variants:
                trow = bench_torch(cases[0], variant, args, flops, platform)
                _progress(args, trow)
                for jrow in jax_rows:
                    if "error" not in trow and jrow["num_devices"] == 1:
                        jrow[f"speedup_vs_torch_{variant}"] = trow["ms_per_step"] / jrow["ms_per_step"]
                torch_rows.append(trow)
        rows += jax_rows + torch_rows
        if on_rows is not None:
            on_rows(jax_rows + torch_rows)
    return rows


def _progress(args: argparse.Namespace, row: Dict[str, Any]) -> None:
    if not args.quiet:
        print(report.progress_line(row), file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `nafnet-bench` / `python -m nafnet_jax.tools.bench`; exit status 1 if a required row failed."""
    args = parse_args(argv)
    configure_runtime(args)
    rows = run(args, on_rows=(lambda group: report.write_jsonl(group, args.jsonl)) if args.jsonl else None)
    if not args.quiet and args.jsonl != "-":
        print(report.format_table(rows))
    if args.markdown:
        print(report.format_markdown(rows))
    # torch.compile needs a C++ toolchain some hosts lack: its failure is reported, not fatal.
    return 1 if any("error" in r and r["variant"] != "compile" for r in rows) else 0
