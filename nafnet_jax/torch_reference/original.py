"""The original NAFNet / Baseline architectures in PyTorch (NAFNET.md section 1), NCHW.

Written from the original's code as NAFNET.md describes it:

- `LayerNorm2d`: arch_util.LayerNorm2d with its hand-written backward
  (`LayerNormFunction`), so PyTorch timings run the original's own autograd.
- `RestorationBlock`: NAFBlock (NAFNet_arch.py) and BaselineBlock
  (Baseline_arch.py) are one block in the original's two files; this is that
  block driven by a block config (any object with nafnet_jax's `BlockConfig`
  fields), so the paper's ablation rungs get a PyTorch twin too. Parameter names
  and their registration order are the original's (conv1..conv5, sca.1 / se.1,
  se.3, norm1, norm2, beta, gamma).
- `UNet` (the original's NAFNet/Baseline top level), `NAFNet`, `Baseline`.
- TLC (section 1.5): `AvgPool2d(fast_imp=False)`, `replace_layers`, and
  `make_local`, which does what `Local_Base.convert` does in `NAFNetLocal` /
  `BaselineLocal`.

Importing this module imports torch; `nafnet_jax.torch_reference` re-exports it
lazily.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class LayerNormFunction(torch.autograd.Function):
    """arch_util.LayerNormFunction: per-pixel channel norm, biased var, eps inside the sqrt."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        ctx.eps = eps
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + eps).sqrt()
        ctx.save_for_backward(y, var, weight)
        return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad_output):
        y, var, weight = ctx.saved_tensors
        g = grad_output * weight.view(1, -1, 1, 1)
        mean_g = g.mean(dim=1, keepdim=True)
        mean_gy = (g * y).mean(dim=1, keepdim=True)
        gx = (g - y * mean_gy - mean_g) / torch.sqrt(var + ctx.eps)
        return gx, (grad_output * y).sum(dim=(0, 2, 3)), grad_output.sum(dim=(0, 2, 3)), None


class LayerNorm2d(nn.Module):
    """arch_util.LayerNorm2d (weight 1, bias 0, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


def _conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, padding=0, stride=1, groups=1, bias=bias)


class RestorationBlock(nn.Module):
    """NAFBlock / BaselineBlock / an ablation rung, chosen by `block` (nafnet_jax's BlockConfig fields).

    activation 'simple_gate' halves the channels after conv2 and conv4 (NAFBlock);
    'gelu' is the exact erf GELU (nn.GELU()); attention 'sca' is Sequential(pool,
    1x1 d->d), 'se' is Sequential(pool, 1x1 d->d/2, ReLU, 1x1 d/2->d, Sigmoid);
    norm=False drops both LayerNorms (PlainNet).
    """

    def __init__(self, c: int, block: Any):
        super().__init__()
        self.activation, self.attention = block.activation, block.attention
        d, f = c * block.dw_expand, c * block.ffn_expand
        gate = 2 if block.activation == "simple_gate" else 1
        self.conv1 = _conv1x1(c, d)
        self.conv2 = nn.Conv2d(d, d, kernel_size=3, padding=1, stride=1, groups=d, bias=True)
        self.conv3 = _conv1x1(d // gate, c)
        if block.attention == "sca":
            self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv1x1(d // gate, d // gate))
        elif block.attention == "se":
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv1x1(d // gate, d // gate // 2),
                                    nn.ReLU(inplace=True), _conv1x1(d // gate // 2, d // gate), nn.Sigmoid())
        self.conv4 = _conv1x1(c, f)
        self.conv5 = _conv1x1(f // gate, c)
        self.norm1 = LayerNorm2d(c) if block.norm else nn.Identity()
        self.norm2 = LayerNorm2d(c) if block.norm else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def act(self, x):
        if self.activation == "simple_gate":
            x1, x2 = x.chunk(2, dim=1)
            return x1 * x2
        if self.activation == "gelu":
            return F.gelu(x)  # exact erf GELU, as nn.GELU()
        return F.relu(x)

    def forward(self, inp):
        x = self.act(self.conv2(self.conv1(self.norm1(inp))))
        if self.attention == "sca":
            x = x * self.sca(x)
        elif self.attention == "se":
            x = x * self.se(x)
        y = inp + self.conv3(x) * self.beta
        x = self.conv5(self.act(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class UNet(nn.Module):
    """The original's NAFNet / Baseline top level (section 1.1), with `RestorationBlock`s.

    Pads H, W up to a multiple of 2**levels (zeros, bottom/right) and crops back.
    """

    def __init__(self, block: Any, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = ()):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, stride=1, bias=True)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[RestorationBlock(chan, block) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[RestorationBlock(chan, block) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(_conv1x1(chan, chan * 2, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[RestorationBlock(chan, block) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp):
        _, _, h, w = inp.shape
        ph = (self.padder_size - h % self.padder_size) % self.padder_size
        pw = (self.padder_size - w % self.padder_size) % self.padder_size
        inp = F.pad(inp, (0, pw, 0, ph))
        x = self.intro(inp)
        encs = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            encs.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, encs[::-1]):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]


def _block_config(activation: str, attention: Optional[str], dw_expand: int, ffn_expand: int):
    from nafnet_jax.models.blocks import BlockConfig
    return BlockConfig(activation, attention, True, dw_expand, ffn_expand)


class NAFNet(UNet):
    """The original NAFNet(img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=[], dec_blk_nums=[])."""

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = ()):
        super().__init__(_block_config("simple_gate", "sca", 2, 2), img_channel, width, middle_blk_num,
                         enc_blk_nums, dec_blk_nums)


class Baseline(UNet):
    """The original Baseline(img_channel=3, width=16, ..., dw_expand=1, ffn_expand=2) (section 1.4)."""

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (),
                 dw_expand: int = 1, ffn_expand: int = 2):
        super().__init__(_block_config("gelu", "se", dw_expand, ffn_expand), img_channel, width,
                         middle_blk_num, enc_blk_nums, dec_blk_nums)


class AvgPool2d(nn.Module):
    """local_arch.AvgPool2d with fast_imp=False and auto_pad=True (section 1.5.6).

    With `kernel_size=None` the kernel is fixed lazily on the first forward:
    `feature_size * base_size // train_size`, per dim.
    """

    def __init__(self, kernel_size=None, base_size=None, train_size=None):
        super().__init__()
        self.kernel_size = None if kernel_size is None else list(kernel_size)
        self.base_size = base_size
        self.train_size = train_size

    def forward(self, x):
        if self.kernel_size is None and self.base_size:
            self.kernel_size = [x.shape[2] * self.base_size[0] // self.train_size[-2],
                                x.shape[3] * self.base_size[1] // self.train_size[-1]]
        if self.kernel_size[0] >= x.size(-2) and self.kernel_size[1] >= x.size(-1):
            return F.adaptive_avg_pool2d(x, 1)
        n, c, h, w = x.shape
        s = x.cumsum(dim=-1).cumsum_(dim=-2)
        s = F.pad(s, (1, 0, 1, 0))
        k1, k2 = min(h, self.kernel_size[0]), min(w, self.kernel_size[1])
        s1, s2 = s[:, :, :-k1, :-k2], s[:, :, :-k1, k2:]
        s3, s4 = s[:, :, k1:, :-k2], s[:, :, k1:, k2:]
        out = (s4 + s1 - s2 - s3) / (k1 * k2)
        _h, _w = out.shape[2:]
        pad2d = ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2)
        return F.pad(out, pad2d, mode="replicate")


def replace_layers(model: nn.Module, base_size, train_size) -> None:
    """local_arch.replace_layers: every AdaptiveAvgPool2d(1) becomes a lazy AvgPool2d."""
    for name, module in model.named_children():
        if len(list(module.children())) > 0:
            replace_layers(module, base_size, train_size)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            if module.output_size not in (1, (1, 1)):
                raise ValueError(f"{name}: TLC replaces global pools only, got output_size {module.output_size}")
            setattr(model, name, AvgPool2d(base_size=base_size, train_size=train_size))


def make_local(model: nn.Module, train_size: Tuple[int, int, int, int]) -> nn.Module:
    """What NAFNetLocal/BaselineLocal's constructor does to a built model (in place).

    train_size is NCHW, e.g. (1, 3, 256, 256). The warm-up forward consumes the
    global torch RNG, as the original's.
    """
    _, _, h, w = train_size
    base_size = (int(h * 1.5), int(w * 1.5))
    model.eval()
    with torch.no_grad():
        replace_layers(model, base_size, train_size)
        model(torch.rand(train_size))
    return model


def tlc_pool_kernels(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    """{module name: kernel} of the TLC pools, e.g. {'encoders.0.0.sca.0': (48, 48), ...}."""
    return {name: tuple(m.kernel_size) for name, m in model.named_modules()
            if isinstance(m, AvgPool2d)}


@torch.no_grad()
def perturb_identity_params_(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Makes the parameters that start trivial (beta, gamma = 0; LayerNorm 1/0) random.

    At init every block is the identity, which would let a wrong block pass any
    parity test. Convs keep their (already random) PyTorch default init.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype)
        if leaf in ("beta", "gamma"):
            param.copy_(scale * noise)
        elif ".norm" in name and leaf == "weight":
            param.copy_(1.0 + 0.2 * noise)
        elif ".norm" in name and leaf == "bias":
            param.copy_(0.2 * noise)
    return model


def build_torch_model(model: Any) -> UNet:
    """The PyTorch original of a nafnet_jax `UNet` (same architecture and parameter names).

    With TLC (`model.tlc_train_size`), each block's global pool becomes the
    original's local AvgPool2d with the kernel its level gets from
    `tlc_kernels` (what the original's warm-up forward fixes; the parity tests
    check the two agree). Parameters are PyTorch's default init; `dtype` /
    `platform` attributes of the Flax model are not copied (the caller chooses
    the device and autocast).
    """
    from nafnet_jax.models.layers import tlc_kernels

    net = UNet(model.block, img_channel=model.img_channel, width=model.width,
               middle_blk_num=model.middle_blk_num, enc_blk_nums=list(model.enc_blk_nums),
               dec_blk_nums=list(model.dec_blk_nums))
    if model.tlc_train_size:
        levels = len(model.enc_blk_nums)
        kernels = tlc_kernels(tuple(model.tlc_train_size), levels)
        # Decoder i works at encoder level levels-1-i; the middle at `levels`.
        stages = ([(seq, kernels[i]) for i, seq in enumerate(net.encoders)]
                  + [(net.middle_blks, kernels[levels])]
                  + [(seq, kernels[levels - 1 - i]) for i, seq in enumerate(net.decoders)])
        for seq, kernel in stages:
            for blk in seq:
                for name in ("sca", "se"):
                    if hasattr(blk, name):
                        getattr(blk, name)[0] = AvgPool2d(kernel_size=kernel)
    return net
