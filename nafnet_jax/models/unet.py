"""NAFNet's single-stage U-Net (also the Baseline's): pure Flax linen, NHWC."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from nafnet_jax.models.blocks import NAFNET_BLOCK, Block, baseline_block, block_spec, resolve_block
from nafnet_jax.models.layers import Conv2d, pad_to_multiple, pixel_shuffle, tlc_kernels

Array = jax.Array

DROP_PATH_SCHEDULES = ("linear", "constant")


def drop_path_rates(num_blocks: int, rate: float, schedule: str = "linear") -> Tuple[float, ...]:
    """Each block's drop-path rate, in the U-Net's block order (encoders, middle, decoders).

    'linear': rate * i / (num_blocks - 1) for block i, as timm
    (`torch.linspace(0, rate, num_blocks)`): the first block is never dropped,
    the last one at `rate` (a single block gets linspace's first point, 0).
    'constant': `rate` for every block (as NAFSSR's DropPath, models/nafssr.py).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate!r}")
    if schedule not in DROP_PATH_SCHEDULES:
        raise ValueError(f"drop_path_schedule must be one of {DROP_PATH_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return (float(rate),) * num_blocks
    if num_blocks == 1:
        return (0.0,)
    return tuple(float(rate) * i / (num_blocks - 1) for i in range(num_blocks))


class UNet(nn.Module):
    """The NAFNet/Baseline U-Net.

    intro 3x3 -> L encoder levels (blocks, then a 2x2 stride-2 conv doubling
    channels) -> middle blocks -> L decoder levels (1x1 conv + PixelShuffle(2),
    additive skip, blocks) -> ending 3x3 -> + input. The input is zero-padded
    bottom/right to a multiple of 2**L and the output cropped back, so any H, W
    works.

    Attributes:
      block: the block at every position: a `BlockConfig` (the restoration block:
        NAFBlock, BaselineBlock, an ablation rung) or a `BlockSpec` (any registered
        block with its options; `blocks.block_spec` builds either from a config's
        `model.block`). Each block gets the contract attributes
        (`blocks.BLOCK_CONTRACT`) from the U-Net and is called `block(x, deterministic)`.
      width: channels at level 0.
      enc_blk_nums: blocks per encoder level (L = its length).
      middle_blk_num: blocks at the bottom.
      dec_blk_nums: blocks per decoder level (length L).
      img_channel: image channels in and out.
      tlc_train_size: (H, W) of the training crops to enable the test-time local
        converter (the original's NAFNetLocal/BaselineLocal), or None.
      dtype: compute dtype (e.g. jnp.bfloat16); None keeps the input's.
      param_dtype: parameter dtype.
      depthwise_impl: depthwise 3x3 formulation ('auto', 'xla', 'shifted').
      platform: the platform the model is compiled for ('cpu', 'gpu', 'tpu'), set
        from the mesh's devices by the trainer, inference and benchmarks (see
        `for_platform`). None (the default) is the portable model: no
        device-specific formulation, every JAX transformation (jvp too) works.
        'cpu' selects two XLA:CPU speed workarounds (the shifted depthwise conv
        and a cotangent fusion barrier at each block input; docs/benchmarks.md
        has their speed-up). Values and gradients are unchanged, but both are
        `custom_vjp`s, so that model is reverse mode only (grad, vjp, remat):
        `jax.jvp`, `jax.jacfwd` and forward-over-reverse Hessians raise. To opt
        out, use the portable model (platform=None, `for_platform(model, None)`);
        `depthwise_impl='xla'` drops the shifted conv only, the barrier stays.
      remat: rematerialise each block in the backward pass (memory for compute).
      drop_path_rate: stochastic depth (0: none, the original NAFNet); each
        block's rate follows `drop_path_schedule` (see `drop_path_rates`). Active
        only in training (`deterministic=False`, with a 'drop_path' RNG); adds no
        parameters.
      drop_path_schedule: 'linear' over the blocks in order, or 'constant'.
    """

    block: Union[Block, str] = NAFNET_BLOCK
    width: int = 16
    enc_blk_nums: Tuple[int, ...] = ()
    middle_blk_num: int = 1
    dec_blk_nums: Tuple[int, ...] = ()
    img_channel: int = 3
    tlc_train_size: Optional[Tuple[int, int]] = None
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None
    remat: bool = False
    drop_path_rate: float = 0.0
    drop_path_schedule: str = "linear"

    def setup_check(self) -> None:
        if len(self.enc_blk_nums) != len(self.dec_blk_nums):
            raise ValueError(f"enc_blk_nums {tuple(self.enc_blk_nums)} and dec_blk_nums "
                             f"{tuple(self.dec_blk_nums)} must have the same length")

    @property
    def scale(self) -> int:
        """Output size / input size: 1 (restoration keeps the size; NAFSSR's is its up_scale)."""
        return 1

    @property
    def num_blocks(self) -> int:
        """Blocks in the whole U-Net (encoders, middle, decoders)."""
        return sum(self.enc_blk_nums) + self.middle_blk_num + sum(self.dec_blk_nums)

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """Restores a batch.

        Args:
          x: (N, H, W, img_channel) degraded images, float in [0, 1].
          deterministic: False in training: stochastic layers (drop-path) draw from the
            'drop_path' / 'dropout' RNG streams passed to `apply`. True (evaluation) is exact.
        Returns:
          (N, H, W, img_channel) restored images (not clipped).
        """
        self.setup_check()
        if x.ndim != 4 or x.shape[-1] != self.img_channel:
            raise ValueError(f"expected NHWC input with {self.img_channel} channels, got shape {x.shape}")
        _, h, w, _ = x.shape
        levels = len(self.enc_blk_nums)
        kernels = (tlc_kernels(self.tlc_train_size, levels) if self.tlc_train_size is not None
                   else (None,) * (levels + 1))
        conv = functools.partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        block_cls, options = resolve_block(block_spec(self.block))
        if self.remat:  # deterministic is argument 2 (self is 0) and must stay a Python bool under remat
            block_cls = nn.remat(block_cls, static_argnums=(2,))
        rates = iter(drop_path_rates(self.num_blocks, self.drop_path_rate, self.drop_path_schedule))

        def block(tlc_kernel, name):  # the next block in order, with its drop-path rate
            return block_cls(**options, tlc_kernel=tlc_kernel, dtype=self.dtype, param_dtype=self.param_dtype,
                             depthwise_impl=self.depthwise_impl, platform=self.platform,
                             drop_path_rate=next(rates), name=name)

        inp = pad_to_multiple(x, 2 ** levels)
        x = conv(self.width, (3, 3), padding=1, name="intro")(inp)
        skips = []
        chan = self.width
        for i, num in enumerate(self.enc_blk_nums):
            for j in range(num):
                x = block(kernels[i], name=f"encoders_{i}_{j}")(x, deterministic)
            skips.append(x)
            x = conv(2 * chan, (2, 2), strides=2, name=f"downs_{i}")(x)
            chan *= 2
        for j in range(self.middle_blk_num):
            x = block(kernels[levels], name=f"middle_blks_{j}")(x, deterministic)
        for i, num in enumerate(self.dec_blk_nums):
            x = pixel_shuffle(conv(2 * chan, use_bias=False, name=f"ups_{i}")(x), 2)
            chan //= 2
            x = x + skips[levels - 1 - i]
            for j in range(num):
                x = block(kernels[levels - 1 - i], name=f"decoders_{i}_{j}")(x, deterministic)
        x = conv(self.img_channel, (3, 3), padding=1, name="ending")(x)
        x = x + inp
        return x[:, :h, :w, :]


def for_platform(model: UNet, platform: Optional[str]) -> UNet:
    """The same model (same parameters) specialised for the platform a step is compiled for."""
    return model.clone(platform=platform)


def NAFNet(width: int = 16, enc_blk_nums: Sequence[int] = (), middle_blk_num: int = 1,
           dec_blk_nums: Sequence[int] = (), img_channel: int = 3, **kwargs) -> UNet:
    """NAFNet (the original's `NAFNet`, or `NAFNetLocal` with `tlc_train_size`)."""
    return UNet(block=NAFNET_BLOCK, width=width, enc_blk_nums=tuple(enc_blk_nums),
                middle_blk_num=middle_blk_num, dec_blk_nums=tuple(dec_blk_nums),
                img_channel=img_channel, **kwargs)


def Baseline(width: int = 16, enc_blk_nums: Sequence[int] = (), middle_blk_num: int = 1,
             dec_blk_nums: Sequence[int] = (), img_channel: int = 3, dw_expand: int = 1,
             ffn_expand: int = 2, **kwargs) -> UNet:
    """The paper's Baseline (the original's `Baseline`, or `BaselineLocal` with TLC)."""
    return UNet(block=baseline_block(dw_expand, ffn_expand), width=width,
                enc_blk_nums=tuple(enc_blk_nums), middle_blk_num=middle_blk_num,
                dec_blk_nums=tuple(dec_blk_nums), img_channel=img_channel, **kwargs)
