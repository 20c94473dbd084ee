"""Parameter and MAC counts of a model, comparable with NAFNET.md section 3.

    python -m nafnet_jax.models.summary NAFNet-GoPro-width64 --size 256
    python -m nafnet_jax.models.summary NAFNet-GoPro-width64 --size 720x1280 --no-xla
    python -m nafnet_jax.models.summary NAFSSR-T-x4 --size 30x90 --no-xla

Two MAC figures, both for a batch of one image:

- `conv_macs` (analytic): every `Conv2d` call's `out.numel() * (Cin/groups) * kh * kw`,
  bias excluded: exactly what the original's forward-hook count does ("conv MACs"
  in section 3). The calls are captured with `flax.linen.intercept_methods` under
  `jax.eval_shape`, so nothing is allocated and the shapes are the real ones,
  including TLC's full-resolution pooled maps at large inputs.
  `conv_bias_macs` adds one per output element of a biased conv ("conv+bias").
  `attention_macs` (NAFSSR): the SCAM matrix products, 3 * N*H*W*W*c per block (the
  logits and the two attention-weighted sums): section 3's "+SCAM matmul".
- `xla_macs` (compiled): `flops / 2` from XLA's cost analysis of the jitted
  forward on this backend. It counts every multiply and add of the optimised HLO,
  so besides the convs (2 flops per MAC) it includes biases, LayerNorm, gates,
  attention products, beta/gamma, pooling and padding: it is not a MAC count.

How the two compare with the original's counts for the published models, and why XLA's
figure is higher for Baseline: docs/benchmarks.md, "Parameters and MACs".
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from nafnet_jax.models import NAFSSR, SCAM, UNet, get_model
from nafnet_jax.models.layers import Conv2d
from nafnet_jax.models.registry import NAFSSR_TRAIN_SIZE

Size = Union[int, Tuple[int, int]]


def _hw(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _count_convs(model: Union[UNet, NAFSSR], x: jax.ShapeDtypeStruct) -> Tuple[Any, Dict[str, int]]:
    """Traces model.init abstractly; returns (abstract variables, conv and attention counts)."""
    counts = {"conv_macs": 0, "conv_bias_macs": 0, "num_convs": 0, "attention_macs": 0}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if isinstance(module, Conv2d) and context.method_name == "__call__":
            kh, kw = module.kernel_size
            in_per_group = args[0].shape[-1] // module.groups
            counts["conv_macs"] += out.size * in_per_group * kh * kw
            counts["conv_bias_macs"] += out.size * (in_per_group * kh * kw + int(module.use_bias))
            counts["num_convs"] += 1
        if isinstance(module, SCAM) and context.method_name == "__call__":
            n, h, w, c = args[0].shape
            counts["attention_macs"] += 3 * n * h * w * w * c
        return out

    # init runs the forward once, so one trace gives both the parameters and the calls.
    with nn.intercept_methods(interceptor):
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return variables, counts


def xla_flops(model: Union[UNet, NAFSSR], variables: Any, x: jax.ShapeDtypeStruct) -> float:
    """FLOPs of the compiled forward per XLA's cost analysis (abstract inputs; compiles)."""
    compiled = jax.jit(model.apply).lower(variables, x).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per computation
        analysis = analysis[0]
    return float(analysis["flops"])


def summarize(model: Union[str, UNet, NAFSSR], size: Size = 256, xla: bool = True) -> Dict[str, Any]:
    """Parameters and MACs of one forward on a 1 x H x W x C input.

    Args:
      model: a named model (nafnet_jax.models.registry.ARCHITECTURES) or a `UNet` / `NAFSSR`
        (whose input is the low-resolution stereo pair, C = 6).
      size: H (square) or (H, W) of the input image.
      xla: also compile the forward for XLA's figure (seconds to a minute for
        the big models on CPU); the analytic counts need no compilation.
    Returns:
      dict with 'input_shape', 'params', 'conv_macs', 'conv_bias_macs',
      'num_convs', 'attention_macs' (0 but for NAFSSR), and if xla: 'xla_flops', 'xla_macs' (= flops / 2).
    """
    name = model if isinstance(model, str) else None
    model = get_model(model) if isinstance(model, str) else model
    h, w = _hw(size)
    x = jax.ShapeDtypeStruct((1, h, w, model.img_channel), jnp.float32)
    variables, counts = _count_convs(model, x)
    result: Dict[str, Any] = {
        "name": name,
        "input_shape": x.shape,
        "params": sum(leaf.size for leaf in jax.tree.leaves(variables["params"])),
        **counts,
    }
    if xla:
        flops = xla_flops(model, variables, x)
        result.update(xla_flops=flops, xla_macs=flops / 2)
    return result


def _parse_size(text: str) -> Tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--size expects H or HxW, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nafnet_jax.models.summary",
                                description="Parameters and GMACs of a published model.")
    p.add_argument("name", help="a named model (nafnet_jax.models.registry.ARCHITECTURES)")
    p.add_argument("--size", type=_parse_size, default=(256, 256), help="H or HxW (default 256)")
    p.add_argument("--tlc", action=argparse.BooleanOptionalAction, default=None,
                   help="force the test-time local converter on (train size 256; NAFSSR 30x90) or off; "
                        "default: as the published config")
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                   help="compile the forward for XLA's cost analysis (default on)")
    args = p.parse_args(argv)

    overrides = {}
    if args.tlc is not None:
        model = get_model(args.name)
        train_size = NAFSSR_TRAIN_SIZE if isinstance(model, NAFSSR) else (256, 256)
        overrides["tlc_train_size"] = train_size if args.tlc else None
    model = get_model(args.name, **overrides)
    s = summarize(model, args.size, xla=args.xla)
    h, w = args.size
    tlc = model.tlc_train_size is not None
    tlc_note = f" (TLC, train size {model.tlc_train_size})" if tlc else ""
    print(f"{args.name} @ {h}x{w}{tlc_note}")
    print(f"  parameters        {s['params']:>16,}")
    print(f"  conv MACs         {s['conv_macs'] / 1e9:>16.3f} G   ({s['num_convs']} conv calls)")
    print(f"  conv+bias MACs    {s['conv_bias_macs'] / 1e9:>16.3f} G")
    if s["attention_macs"]:
        print(f"  SCAM matmul MACs  {s['attention_macs'] / 1e9:>16.3f} G")
    if args.xla:
        backend = jax.default_backend()
        print(f"  XLA flops / 2     {s['xla_macs'] / 1e9:>16.3f} G   (backend {backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
