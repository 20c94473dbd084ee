"""Compiles the training step (or the forward pass) for a TPU topology that is not attached.

    nafnet-aot --config configs/gopro_nafnet_width32.py --topology v5e:2x4 \
        [--config.model.dtype=bfloat16 ...] [--mode train|forward] [--batch N] [--max_batch] [--json]

With `libtpu` installed (`pip install -e ".[tpu]"`), JAX describes the devices of
any TPU topology (`jax.experimental.topologies`) and compiles real TPU executables
for them on a CPU host. The step compiled here is the trainer's own
(`train_setup.build_train_setup` on the topology's devices, then `setup.lower`),
so its memory and cost are what `train.py` would get on that slice. Reported per
chip: argument/output/temporary bytes and whether they fit HBM, XLA's flops and
bytes accessed, a roofline bound on the step time, the collectives of the
compiled HLO, and the compile time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# Bytes per element of HLO primitive types (sub-byte types rounded up to a byte).
_DTYPE_BYTES = {
    "pred": 1, "s2": 1, "u2": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
    "token": 0,
}
_ARRAY_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*")
_OPCODE = re.compile(r"([a-z][a-z0-9\-]*)\(")


# ----------------------------------------------------------------------------- HLO parsing

def shape_bytes(shape: str) -> int:
    """Bytes of an HLO result shape: an array `f32[8,128]{1,0}` or a tuple of them."""
    total = 0
    for dtype, dims in _ARRAY_SHAPE.findall(shape):
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown HLO element type {dtype!r} in shape {shape!r}")
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES[dtype]
    return total


def _split_instruction(line: str) -> Optional[Tuple[str, str]]:
    """(result shape, opcode) of one HLO instruction line, or None for other lines."""
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):  # tuple shape: up to the matching parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                break
        shape, rest = rest[:i + 1], rest[i + 1:]
    else:
        parts = rest.split(" ", 1)
        if len(parts) != 2:
            return None
        shape, rest = parts
    op = _OPCODE.match(rest.lstrip())
    return (shape, op.group(1)) if op else None


def count_collectives(hlo_text: str) -> Dict[str, Dict[str, int]]:
    """Collective ops of an HLO module, per kind: {kind: {'count', 'bytes'}}.

    Counts instructions (not text matches), each once as it appears in the module
    text (an op inside a loop body counts once, not once per iteration). An async
    pair `<kind>-start` / `<kind>-done` is one op; its bytes are the `-done`
    result (the `-start` result also holds the operands and sync flags). Bytes
    are those of the result shape: per device, as the partitioned module sees them.
    """
    out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVE_KINDS}
    for line in hlo_text.splitlines():
        parsed = _split_instruction(line)
        if parsed is None:
            continue
        shape, opcode = parsed
        kind = opcode[:-len("-done")] if opcode.endswith("-done") else opcode
        if kind not in out:  # includes '<kind>-start': its '-done' counts the pair
            continue
        out[kind]["count"] += 1
        out[kind]["bytes"] += shape_bytes(shape)
    return out


# ----------------------------------------------------------------------------- compiling

def topology_devices(topology: str) -> List[Any]:
    """The devices of a TPU topology ('v5e:2x4'), described by libtpu without any TPU attached.

    Raises:
      RuntimeError when libtpu is missing, ValueError naming the topology when libtpu rejects it.
    """
    from jax.experimental import topologies

    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("nafnet-aot needs libtpu: pip install -e '.[tpu]'") from e
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # libtpu raises XlaRuntimeError / ValueError for unknown names
        hint = ""
        if "lockfile" in str(e):  # another process holds libtpu (e.g. a second nafnet-aot)
            hint = (" (another process is using libtpu; for deviceless compiles "
                    "ALLOW_MULTIPLE_LIBTPU_LOAD=1 lifts this)")
        raise ValueError(f"cannot describe TPU topology {topology!r} (e.g. 'v5e:2x4', 'v5p:2x2x1', "
                         f"'v4:2x2x1'; for fewer chips, --config.mesh.num_devices=N): {e}{hint}") from e


def _abstract_forward_inputs(setup, global_batch: int):
    import jax

    params = setup.abstract_state.params
    lq = setup.abstract_batch(global_batch)["lq"]
    forward = jax.jit(lambda p, x: setup.model.apply({"params": p}, x),
                      in_shardings=(jax.tree.map(lambda a: a.sharding, params), setup.batch_sharding),
                      out_shardings=setup.batch_sharding)
    return forward, (params, lq)


def compile_step(setup, mode: str, global_batch: int):
    """Lowers and compiles the train step or the forward pass; returns (compiled, lower_s, compile_s)."""
    t0 = time.perf_counter()
    if mode == "train":
        lowered = setup.lower(global_batch)
    elif mode == "forward":
        forward, args = _abstract_forward_inputs(setup, global_batch)
        lowered = forward.lower(*args)
    else:
        raise ValueError(f"invalid --mode {mode!r}: expected 'train' or 'forward'")
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def _cost(compiled) -> Dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per partition
        cost = cost[0]
    return dict(cost or {})


def analyse(compiled, chip, n_chips: int, images_per_chip: float,
            hbm_bytes: Optional[int] = None) -> Dict[str, Any]:
    """Memory, cost, roofline and collectives of a compiled SPMD executable, per chip.

    On a partitioned TPU executable `memory_analysis` and `cost_analysis` describe
    one partition (one chip); `tests/test_aot.py` checks the latter by compiling
    the same global batch on 1 and on 4 chips.
    """
    mem = compiled.memory_analysis()
    per_chip = {
        "argument": int(mem.argument_size_in_bytes),
        "output": int(mem.output_size_in_bytes),
        "alias": int(mem.alias_size_in_bytes),
        "temp": int(mem.temp_size_in_bytes),
        "generated_code": int(mem.generated_code_size_in_bytes),
    }
    # Donated state is aliased: its bytes are in both argument and output.
    per_chip["total"] = (per_chip["argument"] + per_chip["output"] - per_chip["alias"]
                         + per_chip["temp"] + per_chip["generated_code"])
    hbm = int(hbm_bytes) if hbm_bytes else chip.hbm_bytes
    cost = _cost(compiled)
    flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    compute_s = flops / chip.bf16_peak_flops
    memory_s = bytes_accessed / chip.hbm_bandwidth
    step_s = max(compute_s, memory_s)
    return {
        "chip": chip.name,
        "num_chips": n_chips,
        "fits": per_chip["total"] <= hbm,
        "hbm_bytes": hbm,
        "per_chip_bytes": per_chip,
        "flops": flops,
        "bytes_accessed": bytes_accessed,
        "cost_scope": "per_chip",
        "bytes_accessed_per_image": bytes_accessed / images_per_chip if images_per_chip else None,
        "roofline_compute_s": compute_s,
        "roofline_memory_s": memory_s,
        "roofline_step_s": step_s,
        "roofline_bound": "memory" if memory_s >= compute_s else "compute",
        "images_per_s_per_chip": images_per_chip / step_s if step_s > 0 else None,
        "collectives": count_collectives(compiled.as_text()),
    }


def build_setup(config, topology: str):
    """`build_train_setup` on the topology's devices (the trainer's own code path)."""
    from nafnet_jax.config import validate_config
    from nafnet_jax.training.setup import build_train_setup

    validate_config(config)
    return build_train_setup(config, devices=topology_devices(topology))


def aot_report(config, topology: str, mode: str = "train", global_batch: Optional[int] = None,
               hbm_bytes: Optional[int] = None, setup=None, hlo_path: Optional[str] = None
               ) -> Dict[str, Any]:
    """Compiles one step for `topology` and returns its per-chip report (see `analyse`).

    `hlo_path`, if given, receives the compiled (optimised, partitioned) HLO text.
    """
    import jax

    from nafnet_jax.tools.chips import chip_for_topology
    from nafnet_jax.training.setup import train_input_size

    chip = chip_for_topology(topology)
    if hlo_path and os.path.exists(hlo_path):
        raise FileExistsError(f"--hlo_out {hlo_path} exists; not overwriting it")
    setup = setup if setup is not None else build_setup(config, topology)
    n_chips = setup.mesh.devices.size
    batch = int(global_batch or config.train.batch_size)
    compiled, lower_s, compile_s = compile_step(setup, mode, batch)
    if hlo_path:
        with open(hlo_path, "x") as f:
            f.write(compiled.as_text())
    report = {
        "topology": topology, "mode": mode, "global_batch": batch,
        "crop": "x".join(map(str, train_input_size(config, setup.model))), "scale": setup.model.scale,
        "dtype": config.model.dtype,
        "mesh": dict(setup.mesh.shape), "platform": setup.platform,
        "jax": jax.__version__, "libtpu": _libtpu_version(),
    }
    report.update(analyse(compiled, chip, n_chips, batch / n_chips, hbm_bytes))
    report.update({"lower_s": lower_s, "compile_s": compile_s})
    return report


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """Largest k in [1, limit] with fits(k), assuming fits is monotone (true, then false); 0 if none.

    Doubles k until a miss (or `limit`), then bisects between the last fit and the first miss.
    """
    if limit < 1 or not fits(1):
        return 0
    lo, hi = 1, None
    while hi is None:
        k = min(lo * 2, limit)
        if k == lo:
            return lo
        if fits(k):
            lo = k
        else:
            hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def find_max_batch(config, topology: str, mode: str = "train", hbm_bytes: Optional[int] = None,
                   limit_per_chip: int = 1024, log: Optional[Callable[[str], None]] = None
                   ) -> Dict[str, Any]:
    """Largest global batch whose step fits HBM, by bisection over multiples of devices x grad_accum_steps.

    Returns {'max_batch' (0 if even the smallest misses), 'unit', 'tries': [[batch, fits, total bytes]]}.
    """
    setup = build_setup(config, topology)
    unit = setup.mesh.devices.size * config.train.grad_accum_steps
    tries: List[Tuple[int, bool, int]] = []

    def fits(k: int) -> bool:
        r = aot_report(config, topology, mode, k * unit, hbm_bytes, setup=setup)
        tries.append((k * unit, r["fits"], r["per_chip_bytes"]["total"]))
        if log:
            log(f"batch {k * unit}: {r['per_chip_bytes']['total'] / 2 ** 30:.2f} GiB per chip, "
                f"{'fits' if r['fits'] else 'does not fit'}")
        return r["fits"]

    limit = max(1, limit_per_chip * setup.mesh.devices.size // unit)
    best = largest_fitting(fits, limit)
    return {"max_batch": best * unit, "unit": unit, "tries": tries}


def _libtpu_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return None


def format_report(r: Dict[str, Any]) -> str:
    """A human-readable summary of `aot_report`."""
    gib = 2 ** 30
    b = r["per_chip_bytes"]
    lines = [
        f"{r['mode']} step, global batch {r['global_batch']} x {r['crop']}"
        f"{' (LR, x%d)' % r['scale'] if r.get('scale', 1) > 1 else ''}, {r['dtype']}, "
        f"{r['topology']} ({r['num_chips']} x {r['chip']}, mesh {r['mesh']})",
        f"  per chip: argument {b['argument'] / gib:.2f} GiB, output {b['output'] / gib:.2f} GiB "
        f"(aliased {b['alias'] / gib:.2f}), temp {b['temp'] / gib:.2f} GiB, "
        f"total {b['total'] / gib:.2f} GiB "
        f"of {r['hbm_bytes'] / gib:.2f} GiB HBM: {'fits' if r['fits'] else 'DOES NOT FIT'}",
        f"  per chip (XLA cost analysis): {r['flops'] / 1e12:.3f} TFLOP, {r['bytes_accessed'] / 1e9:.2f} GB "
        f"accessed ({(r['bytes_accessed_per_image'] or 0) / 1e9:.2f} GB per image)",
        f"  roofline: compute {r['roofline_compute_s'] * 1e3:.1f} ms, "
        f"memory {r['roofline_memory_s'] * 1e3:.1f} ms "
        f"-> {r['roofline_step_s'] * 1e3:.1f} ms per step ({r['roofline_bound']}-bound), "
        f"{r['images_per_s_per_chip']:.1f} images/s per chip",
        "  collectives (ops in the compiled HLO, result bytes per chip): " + (", ".join(
            f"{k} {v['count']} ({v['bytes'] / 2 ** 20:.1f} MiB)"
            for k, v in r["collectives"].items() if v["count"]) or "none"),
        f"  lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s (jax {r['jax']}, libtpu {r['libtpu']})",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("topology", "v5e:2x4", "TPU topology name, e.g. v5e:2x4, v5p:2x2x1, v5e:16x16.")
    flags.DEFINE_enum("mode", "train", ["train", "forward"], "Compile the train step or the forward pass.")
    flags.DEFINE_integer("batch", None, "Global batch (default: config.train.batch_size).")
    flags.DEFINE_bool("max_batch", False, "Find the largest global batch that fits, by bisection.")
    flags.DEFINE_integer("hbm_bytes", None, "Override the chip's HBM bytes (e.g. to keep a reserve).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
    flags.DEFINE_string("hlo_out", None, "Write the compiled HLO text to this file.")
    flags.mark_flags_as_required(["config"])


def _main(argv: Sequence[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    fl = flags.FLAGS
    config = fl.config
    if fl.max_batch:
        log = None if fl.json else print
        result = find_max_batch(config, fl.topology, fl.mode, fl.hbm_bytes, log=log)
        result.update({"topology": fl.topology, "mode": fl.mode})
        print(json.dumps(result) if fl.json else f"max global batch that fits: {result['max_batch']}")
        return
    report = aot_report(config, fl.topology, fl.mode, fl.batch, fl.hbm_bytes, hlo_path=fl.hlo_out)
    print(json.dumps(report, sort_keys=True) if fl.json else format_report(report))


def main() -> None:
    """Console entry point (`nafnet-aot`)."""
    from absl import app

    _define_flags()
    app.run(_main)


if __name__ == "__main__":
    main()
