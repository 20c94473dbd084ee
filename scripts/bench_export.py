"""CPU latency of an exported NAFNet in each runtime vs the Flax model under jax.jit.

    JAX_PLATFORMS=cpu python scripts/bench_export.py [--model NAFNet-GoPro-width32] \
        [--sizes 256x256,1280x720] [--runs 5] [--runs-large 3] [--threads 2] [--json out.json]

Weights are random (fan-in scaled; latency does not depend on their values). For every size each
format is exported at that fixed size (TLC as the model's config: GoPro models use it), loaded in
its own runtime, run once to warm up, then timed `--runs` times (the median is reported; sizes over
0.9 Mpixel (720p) use `--runs-large`). Rows:

  flax (cpu model)      model.apply under jax.jit, built for CPU (shifted depthwise, as nafnet-restore)
  flax (portable)       the same with the portable model the exporters serialise (grouped conv)
  stablehlo             jax.export.deserialize(...).call under jax.jit
  savedmodel            tf.saved_model.load(...).signatures['serving_default'] (jax2tf, XlaCallModule)
  tflite                tf.lite.Interpreter (converted from that SavedModel)
  onnx                  onnxruntime CPUExecutionProvider (jax2onnx)

Threads: the process is pinned to `--threads` CPUs (os.sched_setaffinity: bounds XLA, which has
no thread-count option), TF intra-op = --threads / inter-op = 1, onnxruntime intra-op = --threads,
TFLite num_threads = --threads. Prints a markdown table and, with --json, writes the figures.
A runtime that fails to export or run is reported with its error, not dropped silently.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """'256x256,1280x720' -> [(256, 256), (720, 1280)] as (height, width); WxH as written."""
    sizes = []
    for item in text.split(","):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not WIDTHxHEIGHT")
        sizes.append((h, w))
    return sizes


def random_params(model: Any, seed: int = 0) -> Any:
    """Fan-in-scaled random weights for `model` (shapes from jax.eval_shape, values from NumPy)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, model.img_channel)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            value = rng.uniform(-1, 1, leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name.endswith("['scale']"):
            value = 1 + rng.normal(0, 0.1, leaf.shape)
        else:
            value = rng.normal(0, 0.05, leaf.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def time_runs(run: Callable[[], Any], runs: int) -> Dict[str, Any]:
    """One warm-up call, then `runs` timed calls: median and all times in seconds."""
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": times}


def runners(model: Any, params: Any, x: Any, threads: int, workdir: str) -> Dict[str, Callable[[], Callable]]:
    """name -> a builder that exports/loads the runtime and returns a zero-argument blocking call."""
    import jax
    import numpy as np

    from nafnet_jax.models import for_platform
    h, w = x.shape[1:3]

    def flax(platform_name):
        def build():
            m = for_platform(model, platform_name)
            fn = jax.jit(lambda p, images: m.apply({"params": p}, images))
            return lambda: fn(params, x).block_until_ready()
        return build

    def stablehlo():
        from jax import export as jax_export

        from nafnet_jax.tools import export as ex
        d = tempfile.mkdtemp(dir=workdir)
        path = ex.write_stablehlo(ex.export_fn(model, params), ex.InputSpec(h, w), d)
        exported = jax_export.deserialize(bytearray(open(path, "rb").read()))
        fn = jax.jit(exported.call)
        return lambda: fn(x).block_until_ready()

    def savedmodel():
        import tensorflow as tf

        from nafnet_jax.tools import export as ex
        d = tempfile.mkdtemp(dir=workdir)
        path = ex.write_savedmodel(ex.export_fn(model, params), ex.InputSpec(h, w), d)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        tx = tf.constant(x)
        return lambda: [v.numpy() for v in serve(tx).values()]

    def tflite():
        import tensorflow as tf

        from nafnet_jax.tools import export as ex
        d = tempfile.mkdtemp(dir=workdir)
        path = ex.write_tflite(ex.export_fn(model, params), ex.InputSpec(h, w, batch=1), d)
        interpreter = tf.lite.Interpreter(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

        def run():
            interpreter.set_tensor(inp, x)
            interpreter.invoke()
            return interpreter.get_tensor(out)
        return run

    def onnx():
        from nafnet_jax.tools import export_onnx as eo
        path = eo.export_model_onnx(model, params, os.path.join(workdir, f"m_{h}x{w}.onnx"), height=h, width=w)
        session = eo.onnx_session(path, threads=threads)
        return lambda: eo.run_onnx(session, np.asarray(x))

    return {"flax (cpu model)": flax("cpu"), "flax (portable)": flax(None), "stablehlo": stablehlo,
            "savedmodel": savedmodel, "tflite": tflite, "onnx": onnx}


def versions() -> Dict[str, str]:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "flax", "tensorflow-cpu", "jax2onnx", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="NAFNet-GoPro-width32")
    p.add_argument("--sizes", default="256x256,1280x720", help="WIDTHxHEIGHT,...")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--runs-large", type=int, default=3, help="runs for sizes of 0.9 Mpixel (1280x720) and more")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated runtime names (default: all)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))[:args.threads]
    os.sched_setaffinity(0, cpus)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import numpy as np

    from nafnet_jax.models import UNet
    from nafnet_jax.models.registry import architecture

    model = UNet(**architecture(args.model))
    params = random_params(model)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    results: List[Dict[str, Any]] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        for h, w in parse_sizes(args.sizes):
            x = np.random.default_rng(0).uniform(size=(1, h, w, 3)).astype(np.float32)
            runs = args.runs_large if h * w >= 900_000 else args.runs  # 720p (0.92 Mpixel) and up
            for name, build in runners(model, params, x, args.threads, workdir).items():
                if only and name not in only:
                    continue
                row: Dict[str, Any] = {"runtime": name, "size": f"{w}x{h}", "runs": runs}
                try:
                    start = time.perf_counter()
                    run = build()
                    row["build_s"] = time.perf_counter() - start
                    row.update(time_runs(run, runs))
                except Exception as err:  # report, do not hide: the table says which runtime failed
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    info = {"model": args.model, "weights": "random (fan-in scaled)", "threads": args.threads,
            "cpus_pinned": cpus, "machine": f"{platform.machine()} {os.cpu_count()} cpus "
            f"({platform.processor() or platform.platform()})",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "versions": versions(),
            "tlc": model.tlc_train_size is not None, "results": results}
    print(f"{args.model}, random weights, batch 1, {args.threads} threads, median of N after 1 warm-up\n")
    print("| runtime | size | median (s) | N | export+load (s) |")
    print("|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['runtime']} | {r['size']} | failed: {r['error']} | | |")
        else:
            print(f"| {r['runtime']} | {r['size']} | {r['median_s']:.3f} | {r['runs']} | {r['build_s']:.1f} |")
    print(f"\n{json.dumps({k: v for k, v in info.items() if k != 'results'})}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
