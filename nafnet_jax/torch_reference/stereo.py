"""The original NAFSSR (NAFSSR_arch.py, NAFNET.md section 1.6) in PyTorch, NCHW.

Written from the original's code as NAFNET.md describes it, on `original.py`'s
NAFBlock (`RestorationBlock` with the NAFNet block config), `LayerNorm2d` and TLC:

- `SCAM`: stereo cross-attention along each image row.
- `DropPath`: skips the wrapped block with probability `drop_rate` in training,
  one `np.random.rand()` draw per call for the whole batch and both views; a kept
  block's residual is scaled by 1 / (1 - drop_rate).
- `NAFBlockSR`, `MySequential` (arch_util's, which passes tuples on), `NAFNetSR`.
- `NAFSSR`: `NAFNetSR(dual=True)` made local as `Local_Base.convert` does
  (`original.make_local` with train_size (1, 6, h, w)).
- `build_torch_nafssr(flax_model)`: the PyTorch twin of a `nafnet_jax.models.NAFSSR`.

Importing this module imports torch; `nafnet_jax.torch_reference` re-exports it lazily.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nafnet_jax.torch_reference.original import AvgPool2d, LayerNorm2d, RestorationBlock, make_local


def _nafnet_block_config():
    from nafnet_jax.models.blocks import NAFNET_BLOCK
    return NAFNET_BLOCK


class SCAM(nn.Module):
    """Stereo Cross Attention Module (keys norm_l, norm_r, l_proj1, r_proj1, l_proj2, r_proj2, beta, gamma)."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = c ** -0.5
        self.norm_l = LayerNorm2d(c)
        self.norm_r = LayerNorm2d(c)
        self.l_proj1 = nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0)
        self.r_proj1 = nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.l_proj2 = nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0)
        self.r_proj2 = nn.Conv2d(c, c, kernel_size=1, stride=1, padding=0)

    def forward(self, x_l, x_r):
        q_l = self.l_proj1(self.norm_l(x_l)).permute(0, 2, 3, 1)      # B, H, W, c
        q_r_t = self.r_proj1(self.norm_r(x_r)).permute(0, 2, 1, 3)    # B, H, c, W
        v_l = self.l_proj2(x_l).permute(0, 2, 3, 1)
        v_r = self.r_proj2(x_r).permute(0, 2, 3, 1)
        attention = torch.matmul(q_l, q_r_t) * self.scale             # B, H, W_l, W_r
        f_r2l = torch.matmul(torch.softmax(attention, dim=-1), v_r)
        f_l2r = torch.matmul(torch.softmax(attention.permute(0, 1, 3, 2), dim=-1), v_l)
        f_r2l = f_r2l.permute(0, 3, 1, 2) * self.beta
        f_l2r = f_l2r.permute(0, 3, 1, 2) * self.gamma
        return x_l + f_r2l, x_r + f_l2r


class DropPath(nn.Module):
    """The original's DropPath(drop_rate, module): the state-dict prefix is `module.`."""

    def __init__(self, drop_rate: float, module: nn.Module):
        super().__init__()
        self.drop_rate = drop_rate
        self.module = module

    def forward(self, *feats):
        if self.training and np.random.rand() < self.drop_rate:
            return feats
        new_feats = self.module(*feats)
        factor = 1. / (1 - self.drop_rate) if self.training else 1.
        if self.training and factor != 1.:
            new_feats = tuple(x + factor * (new_x - x) for x, new_x in zip(feats, new_feats))
        return new_feats


class NAFBlockSR(nn.Module):
    """A NAFBlock applied to every view (shared weights), then SCAM when `fusion`."""

    def __init__(self, c: int, fusion: bool = False, drop_out_rate: float = 0.):
        super().__init__()
        if drop_out_rate:
            raise ValueError(f"drop_out_rate={drop_out_rate}: only 0 (every published NAFSSR) is supported")
        self.blk = RestorationBlock(c, _nafnet_block_config())
        self.fusion = SCAM(c) if fusion else None

    def forward(self, *feats):
        feats = tuple(self.blk(x) for x in feats)
        if self.fusion:
            feats = self.fusion(*feats)
        return feats


class MySequential(nn.Sequential):
    """arch_util.MySequential: a tuple output is unpacked into the next module's arguments."""

    def forward(self, *inputs):
        for module in self._modules.values():
            inputs = module(*inputs) if isinstance(inputs, tuple) else module(inputs)
        return inputs


class NAFNetSR(nn.Module):
    """The original NAFNetSR(up_scale, width, num_blks, img_channel, drop_path_rate, ..., dual)."""

    def __init__(self, up_scale: int = 4, width: int = 48, num_blks: int = 16, img_channel: int = 3,
                 drop_path_rate: float = 0., drop_out_rate: float = 0., fusion_from: int = -1,
                 fusion_to: int = -1, dual: bool = False):
        super().__init__()
        self.dual = dual
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, groups=1, bias=True)
        self.body = MySequential(*[
            DropPath(drop_path_rate, NAFBlockSR(width, fusion=(fusion_from <= i <= fusion_to),
                                                drop_out_rate=drop_out_rate))
            for i in range(num_blks)])
        self.up = nn.Sequential(
            nn.Conv2d(width, img_channel * up_scale ** 2, kernel_size=3, padding=1, stride=1, groups=1, bias=True),
            nn.PixelShuffle(up_scale))
        self.up_scale = up_scale

    def forward(self, inp):
        inp_hr = F.interpolate(inp, scale_factor=self.up_scale, mode="bilinear")
        views = inp.chunk(2, dim=1) if self.dual else (inp,)
        feats = [self.intro(x) for x in views]
        feats = self.body(*feats)
        out = torch.cat([self.up(x) for x in feats], dim=1)
        return out + inp_hr


class NAFSSR(NAFNetSR):
    """The original NAFSSR: NAFNetSR(dual=True, fusion_from=-1, fusion_to=1000) with TLC (Local_Base).

    The constructor runs the original's warm-up forward on `torch.rand(train_size)`
    (consuming the global torch RNG), which fixes every pool's kernel to (1.5 h, 1.5 w).
    """

    def __init__(self, *args: Any, train_size: Tuple[int, int, int, int] = (1, 6, 30, 90),
                 fast_imp: bool = False, fusion_from: int = -1, fusion_to: int = 1000, **kwargs: Any):
        if fast_imp:
            raise ValueError("fast_imp=True (the original's non-equivalent approximation) is not reproduced")
        super().__init__(*args, img_channel=3, fusion_from=fusion_from, fusion_to=fusion_to, dual=True,
                         **kwargs)
        make_local(self, train_size)


def build_torch_nafssr(model: Any) -> NAFNetSR:
    """The PyTorch original of a nafnet_jax `NAFSSR` (same architecture and parameter names).

    With TLC (`model.tlc_train_size`), every NAFBlock's global pool becomes the
    original's local AvgPool2d with the kernel `tlc_kernels(size, 0)` gives (what the
    original's warm-up forward fixes; the parity tests check the two agree).
    Parameters are PyTorch's default init; the returned module is in training mode,
    as a fresh PyTorch module (`.eval()` for inference).
    """
    from nafnet_jax.models.layers import tlc_kernels

    net = NAFNetSR(up_scale=model.up_scale, width=model.width, num_blks=model.num_blks, img_channel=3,
                   drop_path_rate=model.drop_path_rate, fusion_from=model.fusion_from,
                   fusion_to=model.fusion_to, dual=True)
    if model.tlc_train_size is not None:
        kernel = tlc_kernels(tuple(model.tlc_train_size), 0)[0]
        for block in net.body:
            block.module.blk.sca[0] = AvgPool2d(kernel_size=kernel)
    return net
