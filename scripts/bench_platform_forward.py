"""CPU forward time of the portable model (platform=None) against the CPU-specialised one ('cpu').

The portable model (what `get_model` / `build_model` give) uses XLA's grouped
convolution for the depthwise 3x3 and supports every JAX transformation; the
model built for CPU (what the trainer, inference and `nafnet-bench` build on a
CPU mesh) uses nine shifted multiply-adds and is reverse mode only. The forward
pass differs only by the depthwise formulation (the cotangent barrier is an
identity there). Timed reps alternate between the two models, so load from
other processes hits both alike; the ratio is the figure to trust.

    JAX_PLATFORMS=cpu python scripts/bench_platform_forward.py --model NAFNet-GoPro-width32 --crop 256
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nafnet_jax.models import for_platform, get_model
from nafnet_jax.models.layers import resolve_depthwise_impl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="NAFNet-GoPro-width32")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5, help="timed forwards per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per model after compiling")
    args = p.parse_args()

    base = get_model(args.model)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(args.batch, args.crop, args.crop, 3)), jnp.float32)
    abstract = jax.eval_shape(base.init, jax.random.key(0), x)
    rng = np.random.default_rng(1)  # random weights: init would compile one more program
    variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), abstract)

    fns, compile_s = {}, {}
    for platform in (None, "cpu"):
        model = for_platform(base, platform)
        t0 = time.perf_counter()
        fns[platform] = jax.jit(model.apply).lower(variables, x).compile()
        compile_s[platform] = time.perf_counter() - t0
        for _ in range(args.warmup):
            fns[platform](variables, x).block_until_ready()
    times = {platform: [] for platform in fns}
    for _ in range(args.reps):
        for platform, fn in fns.items():
            t0 = time.perf_counter()
            fn(variables, x).block_until_ready()
            times[platform].append(time.perf_counter() - t0)

    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
          f"{jax.devices()[0].device_kind} x{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{args.model}, batch {args.batch}, {args.crop}x{args.crop}, float32, {args.reps} reps")
    for platform, ts in times.items():
        dw = resolve_depthwise_impl(base.depthwise_impl, platform)
        print(f"platform={platform!s:5} depthwise={dw:8} compile {compile_s[platform]:5.1f} s  "
              f"forward median {1e3 * statistics.median(ts):7.1f} ms (min {1e3 * min(ts):7.1f})")
    ratio = statistics.median(times[None]) / statistics.median(times["cpu"])
    print(f"portable / cpu forward time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
