"""PyTorch references for the parity tests, written from NAFNET.md (section 1).

- NAFNet itself comes from spandrel (`spandrel_nafnet`), whose architecture file
  is the original's with identical state-dict keys.
- `Baseline` / `BaselineBlock`: the original Baseline_arch.py (section 1.4): exact
  GELU, squeeze-excitation `se` = Sequential(pool, 1x1, ReLU, 1x1, Sigmoid).
- TLC (section 1.5): `AvgPool2d(fast_imp=False)`, `replace_layers` and
  `make_local`, which does what `Local_Base.convert` does in `NAFNetLocal` /
  `BaselineLocal`: swap every AdaptiveAvgPool2d(1) for a lazy AvgPool2d and run
  one warm-up forward on `torch.rand(train_size)`, during which each pool fixes
  its kernel from the feature map that reaches it.

All modules are NCHW, as the original.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torch_stubs import install_torchvision_stub

# The references are tiny; torch's default intra-op threads only contend with XLA and the
# other test processes on a small machine (a 13x19 forward took 1 s with 2 threads, 10 ms with 1).
torch.set_num_threads(1)


def spandrel_nafnet(**kwargs) -> nn.Module:
    """spandrel's copy of the original `NAFNet` (keyword arguments as the original)."""
    install_torchvision_stub()
    from spandrel.architectures.NAFNet.__arch.NAFNet_arch import NAFNet  # noqa: E402
    return NAFNet(**kwargs)


class LayerNorm2d(nn.Module):
    """arch_util.LayerNorm2d's forward: per-pixel channel norm, biased var, eps in the sqrt."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def _conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, padding=0, stride=1, groups=1, bias=bias)


class BaselineBlock(nn.Module):
    """The original BaselineBlock (DW_Expand, FFN_Expand; no dropout)."""

    def __init__(self, c: int, DW_Expand: int = 1, FFN_Expand: int = 2):
        super().__init__()
        dw_channel = c * DW_Expand
        self.conv1 = _conv1x1(c, dw_channel)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, stride=1,
                               groups=dw_channel, bias=True)
        self.conv3 = _conv1x1(dw_channel, c)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            _conv1x1(dw_channel, dw_channel // 2),
            nn.ReLU(inplace=True),
            _conv1x1(dw_channel // 2, dw_channel),
            nn.Sigmoid(),
        )
        self.gelu = nn.GELU()  # exact erf GELU
        ffn_channel = FFN_Expand * c
        self.conv4 = _conv1x1(c, ffn_channel)
        self.conv5 = _conv1x1(ffn_channel, c)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp):
        x = self.norm1(inp)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.gelu(x)
        x = x * self.se(x)
        x = self.conv3(x)
        y = inp + x * self.beta
        x = self.conv4(self.norm2(y))
        x = self.gelu(x)
        x = self.conv5(x)
        return y + x * self.gamma


class Baseline(nn.Module):
    """The original Baseline U-Net (same top level as NAFNet; section 1.1)."""

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (),
                 dw_expand: int = 1, ffn_expand: int = 2):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, stride=1, bias=True)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        block = lambda ch: BaselineBlock(ch, dw_expand, ffn_expand)  # noqa: E731
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[block(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[block(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False),
                                          nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[block(chan) for _ in range(num)]))
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
            assert module.output_size == 1
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


def tlc_pool_kernels(model: nn.Module):
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
