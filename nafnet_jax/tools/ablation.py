"""The paper's ablation (Tables 1-3) as a command: train every rung of the ladder, write one table.

    python -m nafnet_jax.tools.ablation --config configs/ablation.py --steps 200000 --dataset sidd \
        --workdir runs/ablation-sidd
    nafnet-ablation --config configs/ablation.py --demo --steps 300      # CPU-sized (README demo scale)

Every rung of `ABLATION_LADDER` (PlainNet -> ... -> NAFNet) is trained through the real trainer
(`train_and_evaluate`) with the same data, step budget and seed, each in `<workdir>/<rung>/`
(checkpoints, config.json, TensorBoard events). Then one table, `<workdir>/ablation.md` and
`<workdir>/ablation.json` (also printed), gives per rung:

- params and conv GMACs of one 256x256 image (the paper's convention; `models/summary.py`'s
  analytic count, abstract shapes only);
- the compiled training step's time: the trainer's step for this config, compiled ahead of time,
  then `--timing_steps` steps on random batches of the training shape dispatched back to back with
  one wait at the end (after one waited-for warm-up step). A measured figure of this machine;
- validation PSNR / SSIM at the end of training (the config's eval protocol and split).

The config file must take a `"<rung>,<dataset>"` config string (as configs/ablation.py does).
Existing rung folders or tables are never overwritten unless `--overwrite` is given, and even then
only folders this runner made (holding a config.json or checkpoints/) are replaced.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform as py_platform
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import ml_collections

from nafnet_jax import cli
from nafnet_jax.cli import UsageError
from nafnet_jax.models.blocks import ABLATION_LADDER

PROG = "nafnet-ablation"
TABLE_MD = "ablation.md"
TABLE_JSON = "ablation.json"
MACS_SIZE = 256  # the paper's GMACs are for one 256x256 image


def load_rung_config(config_path: str, rung: str, dataset: str) -> ml_collections.ConfigDict:
    """`get_config("<rung>,<dataset>")` of a config file (configs/ablation.py), validated.

    Raises:
      UsageError naming the file when it is missing or rejects the rung/dataset.
    """
    from nafnet_jax.config import validate_config

    try:
        config = cli.load_config_file(config_path, f"{rung},{dataset}")
        validate_config(config)
    except (ValueError, KeyError) as e:
        raise UsageError(f"--config {config_path} with '{rung},{dataset}': {cli.error_message(e)}") from e
    return config


def apply_budget(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """The same budget for every rung: `steps` updates, one validation and one checkpoint at the end."""
    config = copy.deepcopy(config)
    config.train.total_steps = steps
    config.train.eval_every = steps
    config.train.eval_at_steps = ()
    config.train.checkpoint_every = steps
    config.train.log_every = max(1, min(int(config.train.log_every), steps))
    config.train.progress_bar = False
    return config


def model_counts(config: ml_collections.ConfigDict, size: int = MACS_SIZE) -> Dict[str, float]:
    """Parameters and conv MACs of one `size` x `size` image (abstract trace, nothing computed)."""
    from nafnet_jax.models import build_model
    from nafnet_jax.models.summary import summarize

    counts = summarize(build_model(config.model.to_dict()), size=size, xla=False)
    return {"params": int(counts["params"]), "gmacs": counts["conv_macs"] / 1e9}


def time_compiled_step(config: ml_collections.ConfigDict, state: Any, steps: int, seed: int = 0
                       ) -> Dict[str, float]:
    """Compiles the trainer's step for `config` and times `steps` steps from `state` (one wait at the end).

    `state` is a train state of this config on the trainer's mesh (the trained one: no second
    initialisation to compile); it is donated. The batch is random, of the training shape (global
    batch, crop, crop, C), with the trainer's batch sharding; the step's cost does not depend on
    pixel values.
    Returns {'compile_s', 'step_ms'}. compile_s is a persistent-cache load when the trainer has just
    compiled the same step with the compilation cache on (its default); it is kept in the JSON only.
    """
    import time

    import jax
    import numpy as np

    from nafnet_jax.tools.bench.timing import time_steps
    from nafnet_jax.training.setup import build_train_setup

    setup = build_train_setup(config)
    shape = setup.abstract_batch()["lq"].shape
    rng = np.random.default_rng(seed)
    lq = rng.uniform(0.05, 1.0, shape).astype(np.float32)
    gt = np.clip(lq + rng.normal(0.0, 0.05, shape), 0.0, 1.0).astype(np.float32)
    batch = jax.device_put({"lq": lq, "gt": gt}, setup.batch_sharding)
    holder = {"state": state}
    t0 = time.perf_counter()
    compiled = setup.lower().compile()
    compile_s = time.perf_counter() - t0

    def run_step(i: int):
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    times = time_steps(run_step, jax.block_until_ready, warmup=1, steps=steps)
    return {"compile_s": compile_s, "step_ms": times.ms_per_step}


def run_rung(config: ml_collections.ConfigDict, workdir: Path, timing_steps: int) -> Dict[str, Any]:
    """Trains one rung in `workdir` and measures it; returns its table row (without the name)."""
    from nafnet_jax.training.trainer import NonFiniteError, train_and_evaluate

    row: Dict[str, Any] = {"block": config.model.block.to_dict(), "lr": float(config.optimizer.lr)}
    row.update(model_counts(config))
    try:
        result = train_and_evaluate(config, str(workdir))
    except NonFiniteError as e:  # a rung that diverges is a result of the ablation, not a failed run
        row.update(status=f"diverged: {cli.error_message(e)}", steps=None, train_loss=None, val_psnr=None,
                   val_ssim=None, val_psnr_input=None, compile_s=None, step_ms=None)
        return row
    if result.get("interrupted"):
        raise RuntimeError(f"training in {workdir} was stopped by a signal at step {result['step']}")
    val = result.get("val") or {}
    train = result.get("train") or {}
    row.update({
        "status": "ok",
        "steps": int(result["step"]),
        "train_loss": train.get("loss"),
        "val_psnr": val.get("val/psnr"),
        "val_ssim": val.get("val/ssim"),
        "val_psnr_input": val.get("val/psnr_input"),
    })
    state = result.pop("state")
    del result
    if timing_steps > 0:
        # With the trainer's persistent compilation cache on (its default), this compile is a cache load.
        row.update(time_compiled_step(config, state, timing_steps, seed=int(config.seed)))
    else:
        row.update(compile_s=None, step_ms=None)
    return row


def run_metadata(args: argparse.Namespace, first: ml_collections.ConfigDict) -> Dict[str, Any]:
    """What the table was measured with: date, machine, versions, budget and data."""
    import jax
    from importlib import metadata

    from nafnet_jax.tools.bench.report import cpu_model

    devices = jax.devices()
    versions = {}
    for dist in ("jax", "jaxlib", "flax", "optax"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": args.config,
        "dataset": args.dataset,
        "steps": args.steps,
        "batch_size": int(first.train.batch_size),
        "crop_size": int(first.data.crop_size),
        "seed": int(first.seed),
        "eval_protocol": str(first.eval.protocol),
        "timing_steps": args.timing_steps,
        "macs_size": MACS_SIZE,
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "platform": devices[0].platform,
        "cpu": cpu_model(),
        "python": py_platform.python_version(),
        "versions": versions,
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_markdown(meta: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> str:
    """The table as markdown, with a line saying what it was measured with."""
    lines = [
        f"Ablation ladder, dataset `{meta['dataset']}`, {meta['steps']} steps of batch {meta['batch_size']} "
        f"x {meta['crop_size']}^2 crops, seed {meta['seed']}, eval protocol {meta['eval_protocol']}; "
        f"{meta['devices']} ({meta['cpu'] if meta['platform'] == 'cpu' else meta['platform']}), "
        f"jax {meta['versions'].get('jax')}, {meta['date']}.",
        "",
        f"| rung | params | GMACs @{meta['macs_size']}^2 | lr | step ms | val PSNR | val SSIM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rung']} | {r['params']:,} | {r['gmacs']:.3f} | {r['lr']:g} | "
            f"{_fmt(r['step_ms'], '.1f')} | {_fmt(r['val_psnr'], '.3f')} | {_fmt(r['val_ssim'], '.4f')} |")
    for r in rows:
        if r.get("status", "ok") != "ok":
            lines += ["", f"{r['rung']}: {r['status']}"]
    psnr_in = next((r["val_psnr_input"] for r in rows if r.get("val_psnr_input") is not None), None)
    if psnr_in is not None:
        lines += ["", f"Validation PSNR of the degraded inputs: {psnr_in:.3f} dB."]
    return "\n".join(lines) + "\n"


def write_tables(workdir: Path, meta: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> str:
    """Writes ablation.md and ablation.json (atomically: a reader never sees half a table)."""
    text = format_markdown(meta, rows)
    for name, content in ((TABLE_MD, text),
                          (TABLE_JSON, json.dumps({"meta": meta, "rows": list(rows)}, indent=2))):
        tmp = workdir / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, workdir / name)
    return text


def _made_by_runner(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "checkpoints").exists()


def check_targets(workdir: Path, rungs: Sequence[str], overwrite: bool) -> List[Path]:
    """The existing paths this run would replace; raises UsageError unless `overwrite` allows it."""
    existing = [p for p in [workdir / r for r in rungs] + [workdir / TABLE_MD, workdir / TABLE_JSON]
                if p.exists()]
    if existing and not overwrite:
        raise UsageError(f"{', '.join(map(str, existing))} already exist; pass --overwrite to replace them "
                         "or choose another --workdir")
    for p in existing:
        if p.is_dir() and any(p.iterdir()) and not _made_by_runner(p):
            raise UsageError(f"{p} exists and was not made by {PROG} (no config.json or checkpoints/); "
                             "it is not replaced even with --overwrite")
    return existing


def parse_rungs(text: Optional[str]) -> List[str]:
    if not text:
        return list(ABLATION_LADDER)
    rungs = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rungs if r not in ABLATION_LADDER]
    if unknown or not rungs:
        raise UsageError(f"--rungs {text!r}: unknown rung(s) {unknown}; choose from {list(ABLATION_LADDER)}")
    return rungs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ablation.py",
                   help="a config file taking '<rung>,<dataset>' (default: configs/ablation.py)")
    p.add_argument("--steps", type=int, required=True, help="training steps per rung (the same for all)")
    p.add_argument("--workdir", default=None, help="output folder (default: ablation-<dataset>)")
    p.add_argument("--rungs", default=None, help=f"comma-separated subset of {','.join(ABLATION_LADDER)}")
    p.add_argument("--dataset", default=None, help="the config's dataset: gopro, sidd or demo (default sidd)")
    p.add_argument("--demo", action="store_true", help="the README demo's CPU scale (--dataset demo)")
    p.add_argument("--timing_steps", type=int, default=5,
                   help="steps timed after compiling each rung's step (0: skip timing)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the rung folders and tables of an earlier run")
    p.add_argument("--debug", action="store_true", help="print tracebacks with errors")
    return p


def run(args: argparse.Namespace) -> int:
    """Checks everything, trains every rung, writes and prints the table."""
    import jax

    if args.demo:
        if args.dataset not in (None, "demo"):
            raise UsageError(f"--demo contradicts --dataset {args.dataset}")
        args.dataset = "demo"
    args.dataset = args.dataset or "sidd"
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: expected a positive number of training steps")
    if args.timing_steps < 0:
        raise UsageError(f"--timing_steps {args.timing_steps}: expected >= 0")
    rungs = parse_rungs(args.rungs)
    # Every rung's config is loaded and checked before anything is trained or written.
    configs = {r: apply_budget(load_rung_config(args.config, r, args.dataset), args.steps) for r in rungs}
    with cli.preflight():  # the data layout (and a decoded sample), as train.py checks it
        from nafnet_jax.data.preflight import check_data
        check_data(configs[rungs[0]].data, images="sample", need_eval=True)
    workdir = Path(args.workdir or f"ablation-{args.dataset}")
    cli.check_output_dir(str(workdir), "--workdir")
    for p in check_targets(workdir, rungs, args.overwrite):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(args, configs[rungs[0]])
    rows: List[Dict[str, Any]] = []
    for rung in rungs:
        print(f"[{PROG}] {rung}: training {args.steps} steps in {workdir / rung}", flush=True)
        rows.append({"rung": rung, **run_rung(configs[rung], workdir / rung, args.timing_steps)})
        if jax.process_index() == 0:  # the table so far, so a long run can be watched
            text = write_tables(workdir, meta, rows)
    if jax.process_index() == 0:
        print(text, end="", flush=True)
        print(f"[{PROG}] wrote {workdir / TABLE_MD} and {workdir / TABLE_JSON}", flush=True)
    return cli.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The nafnet-ablation command (exit statuses: nafnet_jax.cli)."""
    args = build_parser().parse_args(argv)
    cli.quiet_tensorflow()
    cli.quiet_library_logs()
    return cli.run_main(lambda: run(args), PROG, sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
