"""NAFNet's layers in NHWC, numerically equivalent to the PyTorch original.

Every function here is pure; the two modules only own parameters (`Conv2d`) or an RNG
stream (`DropPath`). Names follow the paper (`simple_gate`, `channel_layer_norm`,
`tlc_pool`, `pixel_shuffle`) and timm (`drop_path`, stochastic depth).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# Depthwise 3x3 formulations; all compute the same function (see Conv2d).
DEPTHWISE_IMPLS = ("xla", "shifted", "auto")


def torch_kernel_init() -> Initializer:
    """PyTorch's default Conv2d weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    kaiming_uniform_(a=sqrt(5)) reduces to that bound; in Flax terms it is
    variance_scaling(1/3, 'fan_in', 'uniform'), which reads fan_in from HWIO
    (so a depthwise kernel (3,3,1,C) gets fan_in 9, as in PyTorch).
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


PLATFORMS = (None, "cpu", "gpu", "tpu")


def resolve_depthwise_impl(impl: str, platform: Optional[str] = None) -> str:
    """Maps 'auto' to the depthwise formulation for the platform a step is compiled for.

    `platform` is that of the devices the step runs on (`partitioning.mesh_platform`),
    never the process's default backend: a step compiled for TPU from a CPU host
    gets the TPU choice. On CPU XLA's grouped convolution is slow and nine shifted
    multiply-adds are faster (docs/benchmarks.md); on GPU and TPU, and for a model
    built for no particular platform (None), XLA's grouped convolution, which
    supports every transformation (jvp included).
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    if impl != "auto":
        return impl
    return "shifted" if platform == "cpu" else "xla"


def _accumulation_dtype(dtype: Dtype) -> Dtype:
    """float32 for narrower floats (bfloat16/float16), else the dtype itself."""
    return jnp.promote_types(dtype, jnp.float32)


def _shifted_multiply_add(x: Array, kernel: Array) -> Array:
    """sum_{i,j} pad(x)[:, i:i+H, j:j+W] * kernel[i, j, 0], accumulated in >= float32.

    One XLA loop fusion: each output element reads its nine neighbours once; no
    shifted copy of `x` is ever materialised.
    """
    _, h, w, _ = x.shape
    acc = _accumulation_dtype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = None
    for i in range(3):
        for j in range(3):
            term = xp[:, i:i + h, j:j + w, :].astype(acc) * kernel[i, j, 0].astype(acc).reshape(1, 1, 1, -1)
            out = term if out is None else out + term
    return out.astype(x.dtype)


def _shifted_kernel_grad(x: Array, g: Array) -> Array:
    """dL/dkernel of the depthwise conv: (3, 3, 1, C), sum over N, H, W of shifted pad(x) * g.

    One variadic reduction reads `x` and the cotangent `g` once for all nine
    taps (float32 accumulation): first over the N*H rows, keeping W*C, then over
    W. Nine separate sums made XLA:CPU copy eight shifted views of `x`; plain
    autodiff kept nine shifted copies of `x` as residuals (figures:
    docs/benchmarks_model.md).
    """
    n, h, w, c = x.shape
    acc = _accumulation_dtype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    g = g.astype(acc)
    products = [(xp[:, i:i + h, j:j + w, :].astype(acc) * g).reshape(n * h, w * c)
                for i in range(3) for j in range(3)]
    zeros = [jnp.zeros((), acc)] * len(products)
    row_sums = lax.reduce(products, zeros, lambda a, b: [u + v for u, v in zip(a, b)], (0,))
    return jnp.stack([r.reshape(w, c).sum(axis=0) for r in row_sums]).reshape(3, 3, 1, c)


@jax.custom_vjp
def depthwise_conv3x3_shifted(x: Array, kernel: Array) -> Array:
    """3x3 depthwise conv, zero padding 1, as nine shifted multiply-adds.

    Equal to `lax.conv_general_dilated(..., feature_group_count=C)` up to float32
    summation order (bfloat16 inputs are accumulated in float32, as XLA's conv
    does). Its VJP is hand-written: dx is the same nine-tap sum over the
    cotangent with the kernel rotated 180 degrees, dkernel nine reductions; the
    only residuals are `x` and `kernel`. Plain autodiff of the shifted sum
    stored nine shifted copies of every depthwise input and made XLA:CPU emit
    pad/transpose fusions that cost more than the matmuls (docs/benchmarks.md).
    Being a `custom_vjp`, it supports reverse mode (grad, vjp, remat) but not
    forward mode (jvp); use `depthwise_impl='xla'` where forward mode is needed.

    Args:
      x: (N, H, W, C).
      kernel: (3, 3, 1, C), the HWIO layout of a grouped conv with groups == C.
    Returns:
      (N, H, W, C) in x's dtype.
    """
    return _shifted_multiply_add(x, kernel)


def _depthwise_shifted_fwd(x: Array, kernel: Array):
    return _shifted_multiply_add(x, kernel), (x, kernel)


def _depthwise_shifted_bwd_with(kernel_grad: Callable[[Array, Array], Array]):
    def bwd(residuals, g: Array):
        x, kernel = residuals
        dx = _shifted_multiply_add(g.astype(x.dtype), kernel[::-1, ::-1])
        return dx, kernel_grad(x, g).astype(kernel.dtype)

    return bwd


depthwise_conv3x3_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd_with(_shifted_kernel_grad))


def _tap_sums_kernel_grad(x: Array, g: Array) -> Array:
    """dL/dkernel as nine per-tap sums over N, H, W of shifted pad(x) * g (float32 accumulation).

    The TPU formulation: XLA:TPU fuses each product into its reduction and reads the
    maps in their W-minor layout. The row-sum formulation above (the CPU one) made
    it materialise nine float32 products and copy each to another layout.
    """
    _, h, w, c = x.shape
    acc = _accumulation_dtype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    g = g.astype(acc)
    taps = [jnp.sum(xp[:, i:i + h, j:j + w, :].astype(acc) * g, axis=(0, 1, 2))
            for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, 1, c)


@jax.custom_vjp
def depthwise_conv3x3_shifted_tpu(x: Array, kernel: Array) -> Array:
    """`depthwise_conv3x3_shifted` with the kernel gradient as nine fused per-tap sums.

    What `Conv2d` uses for `depthwise_impl='shifted'` on TPU. XLA:TPU runs its
    grouped convolution channel-minor, so 32/64-channel maps are padded to 128
    lanes and copied between layouts around every depthwise conv; the shifted
    multiply-adds stay in the W-minor layout of the neighbouring matmuls and
    elementwise ops. Same values and gradients; reverse mode only (a custom_vjp).
    """
    return _shifted_multiply_add(x, kernel)


depthwise_conv3x3_shifted_tpu.defvjp(_depthwise_shifted_fwd,
                                     _depthwise_shifted_bwd_with(_tap_sums_kernel_grad))


def _unfusible_identity(x: Array) -> Array:
    """x, through a one-trip while loop whose trip count XLA cannot know.

    XLA fuses neither into nor out of a while loop, so `x` is materialised once
    and every consumer reads that buffer. (`lax.optimization_barrier` does not
    do this on CPU: it is lowered to control dependencies before fusion.) The
    start value is 0, or 1 when x's first element is NaN (the loop then does not
    run); the body's select keeps XLA from forwarding `x` around the loop.
    Cost: one copy of x.
    """
    start = jnp.isnan(x.reshape(-1)[0]).astype(jnp.int32)
    _, out = lax.while_loop(lambda c: c[0] < 1,
                            lambda c: (c[0] + 1, jnp.where(c[0] < 0, -c[1], c[1])), (start, x))
    return out


@jax.custom_vjp
def cotangent_fusion_barrier(x: Array) -> Array:
    """Identity whose cotangent is materialised once on CPU (an XLA:CPU fusion workaround).

    NAFNet's residual stream carries its cotangent through every block as a
    chain of elementwise adds. XLA:CPU fuses that whole chain, duplicated, into
    each consumer (weight-gradient transposes, bias-gradient reductions), so
    the backward of the 28-block GoPro models did quadratic work (step and
    compile times: docs/benchmarks_model.md).
    Applied to each block's input, the cotangent is computed once per block.
    Forward values and gradients are unchanged. Applied only in a model built
    for CPU (`UNet.platform='cpu'`, which the trainer sets from its mesh); reverse
    mode only (a custom_vjp), like the shifted depthwise conv.
    """
    return x


def _cotangent_barrier_fwd(x: Array):
    return x, None


def _cotangent_barrier_bwd(_, g: Array):
    return (_unfusible_identity(g),)


cotangent_fusion_barrier.defvjp(_cotangent_barrier_fwd, _cotangent_barrier_bwd)


def patchify_conv(x: Array, kernel: Array) -> Array:
    """A k x k conv with stride k, no padding (NAFNet's 2x2 `downs`) as one matrix product.

    Space-to-depth of non-overlapping k x k patches, then (..., k*k*Cin) @
    (k*k*Cin, Cout); rows/columns beyond a multiple of k are dropped, as a VALID
    conv does. The same products summed in another order as XLA's convolution;
    on CPU its backward is faster (XLA's conv weight gradient is slow there;
    figures: docs/benchmarks_model.md).

    Args:
      x: (N, H, W, Cin).
      kernel: (k, k, Cin, Cout), HWIO.
    Returns:
      (N, H // k, W // k, Cout).
    """
    n, h, w, c = x.shape
    k, _, _, out = kernel.shape
    ho, wo = h // k, w // k
    x = x[:, :ho * k, :wo * k, :]
    patches = x.reshape(n, ho, k, wo, k, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, k * k * c)
    return lax.dot_general(patches, kernel.reshape(k * k * c, out), (((3,), (0,)), ((), ())))


class Conv2d(nn.Module):
    """`torch.nn.Conv2d` in NHWC with PyTorch's default initialisation.

    The kernel is HWIO (`(kh, kw, in/groups, out)`), the layout the converter
    produces from PyTorch's OIHW. 1x1 convs run as a matrix product, k x k
    stride-k convs (the downsamplers) as a patchify matrix product, depthwise
    3x3 convs in the formulation `depthwise_impl` selects; all else is XLA's
    convolution.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: stride in both spatial dims.
      padding: symmetric zero padding in both spatial dims (PyTorch `padding`).
      groups: feature groups (== in channels for depthwise).
      use_bias: whether a bias is added.
      dtype: compute dtype (None: from the input/params).
      param_dtype: parameter dtype.
      depthwise_impl: 'xla', 'shifted' or 'auto' (see `resolve_depthwise_impl`).
        On TPU, 'shifted' is `depthwise_conv3x3_shifted_tpu`: fewer HBM bytes per
        training step than XLA's grouped conv (docs/benchmarks.md, TPU section).
      platform: the platform the model is compiled for ('auto' resolves by it).
        With platform='cpu', 'auto' picks 'shifted', whose hand-written VJP
        (a `custom_vjp`) supports reverse mode only: `jax.jvp`/`jax.jacfwd`
        raise. `depthwise_impl='xla'` (or platform=None) opts out.
    """

    features: int
    kernel_size: Tuple[int, int] = (1, 1)
    strides: int = 1
    padding: int = 0
    groups: int = 1
    use_bias: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_ch = x.shape[-1]
        if in_ch % self.groups:
            raise ValueError(f"{self.name}: input channels {in_ch} not divisible by groups {self.groups}")
        kh, kw = self.kernel_size
        fan_in = (in_ch // self.groups) * kh * kw
        kernel = self.param("kernel", torch_kernel_init(),
                            (kh, kw, in_ch // self.groups, self.features), self.param_dtype)
        bias = (self.param("bias", torch_bias_init(fan_in), (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

        depthwise = self.groups == in_ch == self.features and self.groups > 1
        if (kh, kw) == (1, 1) and self.strides == 1 and self.groups == 1 and self.padding == 0:
            y = lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
        elif kh == kw == self.strides and self.groups == 1 and self.padding == 0:
            y = patchify_conv(x, kernel)
        elif (depthwise and (kh, kw) == (3, 3) and self.strides == 1 and self.padding == 1
              and resolve_depthwise_impl(self.depthwise_impl, self.platform) == "shifted"):
            shifted = depthwise_conv3x3_shifted_tpu if self.platform == "tpu" else depthwise_conv3x3_shifted
            y = shifted(x, kernel)
        else:
            p = self.padding
            y = lax.conv_general_dilated(
                x, kernel, window_strides=(self.strides, self.strides),
                padding=((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups)
        if bias is not None:
            y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))  # explicit rank: no implicit promotion
        return y


def channel_layer_norm(name: str, dtype: Optional[Dtype] = None,
                       param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """NAFNet's `LayerNorm2d` in NHWC: normalise over channels per pixel.

    Biased variance and eps 1e-6 inside the sqrt, as the original; its weight and
    bias are Flax's `scale` and `bias`. Flax computes the statistics in at least
    float32, also for bfloat16 compute.
    """
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                        param_dtype=param_dtype, name=name)


def simple_gate(x: Array) -> Array:
    """SimpleGate: split channels into halves [0:c] and [c:2c], multiply them."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x1 * x2


def pixel_shuffle(x: Array, r: int) -> Array:
    """`torch.nn.PixelShuffle(r)` in NHWC (channel order c*r*r + i*r + j).

    Note this is NOT `depth_to_space` (TF's DCR order).
    """
    n, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: channels {c} not divisible by r^2 = {r * r}")
    oc = c // (r * r)
    x = x.reshape(n, h, w, oc, r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * r, w * r, oc)


def tlc_pool(x: Array, kernel: Optional[Tuple[int, int]]) -> Array:
    """Test-time local converter pool (local_arch.AvgPool2d, fast_imp=False).

    The integral image is accumulated in float32 whatever the compute dtype
    (float64 stays float64) and the result is cast back to x's dtype: in
    bfloat16, a 720x1280 map sums to ~1e5, where one bfloat16 step is ~512, and
    the four-corner difference of a bfloat16 integral image is off by 10% and
    more. The per-image, per-channel mean is subtracted before the cumsum and
    added back after (a box mean commutes with a constant shift), so the
    running sums stay near zero and the corner differences cancel little.

    Args:
      x: (N, H, W, C).
      kernel: the (kh, kw) box fixed at 1.5x this level's training feature size,
        or None for the plain global mean (no TLC).
    Returns:
      (N, 1, 1, C) when the box covers the whole map (the global mean, identical
      to AdaptiveAvgPool2d(1)), else (N, H, W, C): the local box mean computed by
      an integral image, edge-replicated back to (H, W) with (k-1)//2 before and
      k//2 after, as the original. Both in x's dtype.
    """
    n, h, w, c = x.shape
    if kernel is None or (kernel[0] >= h and kernel[1] >= w):
        return jnp.mean(x, axis=(1, 2), keepdims=True)  # jnp.mean sums bfloat16 in float32
    k1, k2 = min(h, kernel[0]), min(w, kernel[1])
    xa = x.astype(_accumulation_dtype(x.dtype))
    # The result does not depend on the offset (d/d offset = 1 - box mean of 1 = 0), so no
    # gradient needs to flow through it.
    offset = lax.stop_gradient(jnp.mean(xa, axis=(1, 2), keepdims=True))
    s = jnp.cumsum(jnp.cumsum(xa - offset, axis=2), axis=1)
    s = jnp.pad(s, ((0, 0), (1, 0), (1, 0), (0, 0)))
    box = (s[:, k1:, k2:] + s[:, :-k1, :-k2] - s[:, :-k1, k2:] - s[:, k1:, :-k2]) / (k1 * k2)
    out = (box + offset).astype(x.dtype)
    oh, ow = out.shape[1:3]
    pad = ((0, 0), ((h - oh) // 2, (h - oh + 1) // 2), ((w - ow) // 2, (w - ow + 1) // 2), (0, 0))
    return jnp.pad(out, pad, mode="edge")


def pad_to_multiple(x: Array, multiple: int) -> Array:
    """Zero-pads H and W at the bottom/right up to a multiple (check_image_size)."""
    _, h, w, _ = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))


def tlc_kernels(train_size: Sequence[int], num_levels: int) -> Tuple[Tuple[int, int], ...]:
    """Per-level TLC kernels, as the original's warm-up forward would set them.

    The original runs one forward at `train_size` (after padding to 2**L) and
    each pool sets kernel = feat * int(1.5 * size) // size. Returns one (kh, kw)
    per level 0..L; index L is the middle blocks; decoder level i reuses the
    kernel of encoder level L-1-i.
    """
    th, tw = int(train_size[0]), int(train_size[1])
    mult = 2 ** num_levels
    ph, pw = th + (-th) % mult, tw + (-tw) % mult
    bh, bw = int(th * 1.5), int(tw * 1.5)
    kernels = []
    for level in range(num_levels + 1):
        fh, fw = ph, pw
        for _ in range(level):  # stride-2 VALID convs floor the size
            fh, fw = fh // 2, fw // 2
        kernels.append((fh * bh // th, fw * bw // tw))
    return tuple(kernels)


def drop_path(x: Array, rate: float, key: Array, per_sample: bool = True) -> Array:
    """Stochastic depth on a residual branch (timm's `drop_path`): drop it with probability `rate`.

    Survivors are scaled by 1 / (1 - rate), so the expectation over draws is `x`
    and evaluation (no drop-path) needs no rescaling.

    Args:
      x: (N, ...) a residual branch's output, before it is added to its skip.
      rate: drop probability in [0, 1); 0 returns `x` untouched (and `key` is unused).
      key: a PRNG key (a block draws it from the 'drop_path' stream).
      per_sample: one Bernoulli draw per sample, as timm and NAFNet's blocks; False
        draws once for the whole batch, as NAFSSR's DropPath (there applied to a
        block's combined residual `new - x`).
    Returns:
      x * keep_mask / (1 - rate), in x's dtype.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path rate must be in [0, 1), got {rate!r}")
    if rate == 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if per_sample else (1,) * x.ndim
    mask = jax.random.bernoulli(key, keep, shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class DropPath(nn.Module):
    """`drop_path` as a layer: active only when called with deterministic=False.

    Owns no parameters, so adding it changes no parameter tree. It asks for a key
    from `rng_collection` only when it drops something, so evaluation and rate 0
    need no RNG.

    Attributes:
      rate: drop probability in [0, 1).
      per_sample: see `drop_path`.
      rng_collection: the RNG stream passed to `apply` (`rngs={'drop_path': key}`).
    """

    rate: float = 0.0
    per_sample: bool = True
    rng_collection: str = "drop_path"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return drop_path(x, self.rate, self.make_rng(self.rng_collection), self.per_sample)
