"""NAFSSR: stereo image super-resolution built from NAFNet blocks (NAFSSR_arch.py), Flax linen, NHWC.

A stereo pair is one 6-channel image: channels 0..2 the left view, 3..5 the right.
Every module but the cross-view attention (SCAM) is shared by the two views, so the
views are stacked along the batch axis, interleaved (sample i's left view at 2i, its
right view at 2i + 1), and each shared layer runs once on the 2N-image batch. The
interleaving keeps a batch-sharded input sharded the same way: each device already
holds both views of its own samples.

Parameter names mirror the original's state-dict keys (`intro`, `body_{b}/blk`,
`body_{b}/fusion`, `up`); the converter's key table maps them
(`nafnet_jax.tools.convert`).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nafnet_jax.models.blocks import NAFNET_BLOCK, RestorationBlock
from nafnet_jax.models.layers import Conv2d, DropPath, channel_layer_norm, pixel_shuffle, tlc_kernels

Array = jax.Array

VIEWS = 2          # left, right
VIEW_CHANNELS = 3  # RGB (or BGR: the original's training data) per view


def views_to_batch(x: Array) -> Array:
    """(N, H, W, 2C) stereo pairs -> (2N, H, W, C) single views, interleaved (left of i at 2i)."""
    n, h, w, c = x.shape
    if c % VIEWS:
        raise ValueError(f"a stereo pair has an even channel count (left, right); got shape {x.shape}")
    return x.reshape(n, h, w, VIEWS, c // VIEWS).transpose(0, 3, 1, 2, 4).reshape(n * VIEWS, h, w, c // VIEWS)


def batch_to_views(x: Array) -> Array:
    """The inverse of `views_to_batch`: (2N, H, W, C) -> (N, H, W, 2C), left view first."""
    n2, h, w, c = x.shape
    return x.reshape(n2 // VIEWS, VIEWS, h, w, c).transpose(0, 2, 3, 1, 4).reshape(n2 // VIEWS, h, w, VIEWS * c)


def _upsample_axis(x: Array, s: int, axis: int) -> Array:
    """Bilinear x`s` upsampling along one axis, torch's align_corners=False rule.

    Output pixel o = i*s + k samples the input at src = (o + 0.5)/s - 0.5 = i + d_k with
    d_k = (k + 0.5)/s - 0.5 in (-0.5, 0.5): between pixels i-1 and i when d_k < 0, i and
    i+1 otherwise. Edge replication gives torch's clamp (src < 0 -> 0, i+1 -> n-1). Only
    slices and multiply-adds: no gather, no weight matrix.
    """
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode="edge")
    prev = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
    nxt = jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis)
    phases = []
    for k in range(s):
        d = (k + 0.5) / s - 0.5
        if d < 0:
            phases.append(x * (1.0 + d) + prev * (-d))
        else:
            phases.append(x * (1.0 - d) + nxt * d)
    out = jnp.stack(phases, axis=axis + 1)  # (..., n, s, ...) -> (..., n*s, ...)
    shape = list(x.shape)
    shape[axis] = n * s
    return out.reshape(shape)


def upsample_bilinear(x: Array, scale: int) -> Array:
    """`F.interpolate(x, scale_factor=scale, mode='bilinear')` (align_corners=False) in NHWC.

    Args:
      x: (N, H, W, C), any H, W >= 1.
      scale: a positive integer factor.
    Returns:
      (N, H*scale, W*scale, C) in x's dtype.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"upsample_bilinear: scale must be a positive int, got {scale!r}")
    if scale == 1:
        return x
    return _upsample_axis(_upsample_axis(x, scale, 2), scale, 1)


class SCAM(nn.Module):
    """Stereo cross-attention module: each view attends to the other along its image row.

    Q = proj1(LayerNorm(x)), V = proj2(x) per view; A = Q_l Q_r^T / sqrt(c) over each row
    (W_l x W_r); the left view gains beta * softmax_r(A) V_r, the right gamma *
    softmax_l(A)^T V_l. beta and gamma start at zero (the identity). The logits and the
    softmax run in at least float32 whatever the compute dtype.

    Attributes:
      dtype: compute dtype (None: from the inputs/params).
      param_dtype: parameter dtype.
    """

    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_l: Array, x_r: Array) -> Tuple[Array, Array]:
        """x_l, x_r: (N, H, W, c) features of the two views -> the fused pair, same shapes."""
        c = x_l.shape[-1]
        conv = functools.partial(Conv2d, c, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(channel_layer_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        q_l = conv(name="l_proj1")(norm("norm_l")(x_l))
        q_r = conv(name="r_proj1")(norm("norm_r")(x_r))
        v_l = conv(name="l_proj2")(x_l)
        v_r = conv(name="r_proj2")(x_r)
        beta = self.param("beta", nn.initializers.zeros, (c,), self.param_dtype)
        gamma = self.param("gamma", nn.initializers.zeros, (c,), self.param_dtype)

        acc = jnp.promote_types(q_l.dtype, jnp.float32)
        logits = jnp.einsum("nhic,nhjc->nhij", q_l, q_r, preferred_element_type=acc) * (c ** -0.5)
        r2l = jax.nn.softmax(logits, axis=-1).astype(v_r.dtype)  # each left pixel over the right row
        l2r = jax.nn.softmax(logits, axis=-2).astype(v_l.dtype)  # each right pixel over the left row
        f_r2l = jnp.einsum("nhij,nhjc->nhic", r2l, v_r, preferred_element_type=acc).astype(v_r.dtype)
        f_l2r = jnp.einsum("nhij,nhic->nhjc", l2r, v_l, preferred_element_type=acc).astype(v_l.dtype)
        shape = (1, 1, 1, c)
        return (x_l + f_r2l * beta.astype(f_r2l.dtype).reshape(shape),
                x_r + f_l2r * gamma.astype(f_l2r.dtype).reshape(shape))


class NAFBlockSR(nn.Module):
    """One body block: the shared NAFBlock on both views, then SCAM, under one drop-path.

    Works on the views stacked along the batch axis (`views_to_batch`). In training
    (deterministic=False) the whole block is skipped with probability `drop_path_rate`,
    one draw from the 'drop_path' RNG stream for the whole batch and both views (the
    original's `DropPath` draws `np.random.rand()` once per call); a kept block's
    residual is scaled by 1 / (1 - rate): x + (new - x) / (1 - rate). Evaluation
    returns the block's output, no RNG needed.

    Attributes:
      fusion: whether the block has a SCAM (the original's fusion_from <= b <= fusion_to).
      drop_path_rate: probability of skipping the block in training, in [0, 1).
      tlc_kernel: the NAFBlock's TLC pooling box, or None for global pooling.
      dtype, param_dtype, depthwise_impl, platform: as `layers.Conv2d`.
    """

    fusion: bool = True
    drop_path_rate: float = 0.0
    tlc_kernel: Optional[Tuple[int, int]] = None
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """x: (2N, H, W, c), views interleaved -> the same shape."""
        new = RestorationBlock(config=NAFNET_BLOCK, tlc_kernel=self.tlc_kernel, dtype=self.dtype,
                               param_dtype=self.param_dtype, depthwise_impl=self.depthwise_impl,
                               platform=self.platform, drop_path_rate=0.0, name="blk")(x, deterministic)
        if self.fusion:
            n2, h, w, c = new.shape
            pair = new.reshape(n2 // VIEWS, VIEWS, h, w, c)
            left, right = SCAM(dtype=self.dtype, param_dtype=self.param_dtype,
                               name="fusion")(pair[:, 0], pair[:, 1])
            new = jnp.stack([left, right], axis=1).reshape(n2, h, w, c)
        if deterministic or self.drop_path_rate == 0.0:
            return new
        residual = DropPath(self.drop_path_rate, per_sample=False, name="drop_path")(new - x, deterministic)
        return x + residual.astype(x.dtype)


class NAFSSR(nn.Module):
    """NAFSSR (the original's `NAFSSR`, or `NAFNetSR(dual=True)` with tlc_train_size=None).

    (N, h, w, 6) low-resolution stereo pairs -> (N, h*s, w*s, 6), s = up_scale:
    intro 3x3 (3 -> width, shared by the views) -> num_blks x [NAFBlock (shared) + SCAM]
    -> up: 3x3 width -> 3*s*s, PixelShuffle(s) (shared) -> + bilinear x s of the input.
    Any h, w >= 1 works (no padding).

    Attributes:
      up_scale: the super-resolution factor s (2 or 4 in the published models).
      width: feature channels.
      num_blks: body blocks.
      drop_path_rate: every block's skip probability in training (the same for all:
        the original does not ramp it); 0 in evaluation.
      tlc_train_size: the low-resolution training crop (h, w) to enable the test-time
        local converter: every block's pooling box is int(1.5 * size), (45, 135) for the
        published (30, 90). None: plain global pooling (the original's NAFNetSR).
      fusion_from, fusion_to: blocks b with fusion_from <= b <= fusion_to have a SCAM
        (default: all).
      dtype: compute dtype (e.g. jnp.bfloat16); None keeps the input's.
      param_dtype: parameter dtype.
      depthwise_impl, platform: as `UNet` (the platform a step is compiled for; None is
        the portable model).
      remat: rematerialise each body block in the backward pass (memory for compute).
    """

    up_scale: int = 4
    width: int = 48
    num_blks: int = 16
    drop_path_rate: float = 0.0
    tlc_train_size: Optional[Tuple[int, int]] = None
    fusion_from: int = -1
    fusion_to: int = 1000
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None
    remat: bool = False

    @property
    def img_channel(self) -> int:
        """Channels in and out: a stereo pair, left view 0..2, right 3..5."""
        return VIEWS * VIEW_CHANNELS

    @property
    def scale(self) -> int:
        """Output size / input size (the super-resolution factor)."""
        return self.up_scale

    def _check(self) -> None:
        if not isinstance(self.up_scale, int) or self.up_scale < 1:
            raise ValueError(f"NAFSSR.up_scale must be a positive int, got {self.up_scale!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"NAFSSR.drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if self.tlc_train_size is not None and (len(self.tlc_train_size) != 2
                                                or min(self.tlc_train_size) < 1):
            raise ValueError(f"NAFSSR.tlc_train_size must be (h, w) >= 1 or None, got {self.tlc_train_size!r}")

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """Super-resolves a batch of stereo pairs.

        Args:
          x: (N, h, w, 6) low-resolution pairs, float in [0, 1]; channels 0..2 left, 3..5 right.
          deterministic: False in training: drop-path draws from the 'drop_path' RNG
            stream passed to `apply`. True (evaluation) is exact and needs no RNG.
        Returns:
          (N, h*up_scale, w*up_scale, 6), not clipped.
        """
        self._check()
        if x.ndim != 4 or x.shape[-1] != self.img_channel:
            raise ValueError(f"NAFSSR expects NHWC stereo pairs with {self.img_channel} channels "
                             f"(left 0..2, right 3..5), got shape {x.shape}")
        s = self.up_scale
        kernel = tlc_kernels(self.tlc_train_size, 0)[0] if self.tlc_train_size is not None else None
        conv = functools.partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        block_cls = NAFBlockSR
        if self.remat:  # deterministic is argument 2 (self is 0) and must stay a Python bool under remat
            block_cls = nn.remat(block_cls, static_argnums=(2,))

        inp_hr = upsample_bilinear(x, s)
        feats = conv(self.width, (3, 3), padding=1, name="intro")(views_to_batch(x))
        for b in range(self.num_blks):
            feats = block_cls(fusion=self.fusion_from <= b <= self.fusion_to,
                              drop_path_rate=self.drop_path_rate, tlc_kernel=kernel, dtype=self.dtype,
                              param_dtype=self.param_dtype, depthwise_impl=self.depthwise_impl,
                              platform=self.platform, name=f"body_{b}")(feats, deterministic)
        out = pixel_shuffle(conv(VIEW_CHANNELS * s * s, (3, 3), padding=1, name="up")(feats), s)
        return batch_to_views(out) + inp_hr
