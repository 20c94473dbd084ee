"""Parameter and MAC counts against NAFNET.md section 3 (measured on the original code).

Everything published is counted abstractly (jax.eval_shape): nothing large is
allocated and nothing big is compiled. XLA's compiled figure is checked on a tiny model.
"""

from __future__ import annotations

import functools

import pytest

from nafnet_jax.models import summary
from nafnet_jax.models import NAFNet, get_model

# NAFNET.md section 3: params (exact), conv MACs and conv+bias MACs in G (1e9) at 1x3x256x256.
SECTION_3 = {
    "NAFNet-GoPro-width32": (17_111_907, 15.96, 16.08),
    "NAFNet-GoPro-width64": (67_888_835, 63.05, 63.30),
    "NAFNet-REDS-width64": (67_888_835, 63.05, 63.30),
    "Baseline-GoPro-width32": (17_023_875, 15.82, 15.92),
    "Baseline-GoPro-width64": (112_036_291, 82.41, 82.66),
    "NAFNet-SIDD-width32": (29_159_715, 16.05, 16.21),
    "NAFNet-SIDD-width64": (115_982_915, 63.24, 63.56),
    "Baseline-SIDD-width32": (29_056_227, 15.87, 15.99),
    "Baseline-SIDD-width64": (194_419_779, 82.61, 82.94),
}


@functools.lru_cache(maxsize=None)
def _published(name: str, size=256, tlc=True):
    """One abstract trace per config, shared by the tests below."""
    model = get_model(name) if tlc else get_model(name, tlc_train_size=None)
    return summary.summarize(model, size, xla=False)


@pytest.mark.parametrize("name", sorted(SECTION_3))
def test_published_parameter_count(name):
    assert _published(name)["params"] == SECTION_3[name][0]


@pytest.mark.parametrize("name", sorted(SECTION_3))
def test_published_conv_macs_match_the_hook_count(name):
    """Equal to the table's two decimals (the brief allows 1%; it matches to rounding)."""
    s = _published(name)
    _, conv, conv_bias = SECTION_3[name]
    assert round(s["conv_macs"] / 1e9, 2) == conv, f"{name}: {s['conv_macs'] / 1e9:.4f} G vs {conv}"
    assert round(s["conv_bias_macs"] / 1e9, 2) == conv_bias, \
        f"{name}: conv+bias {s['conv_bias_macs'] / 1e9:.4f} G vs {conv_bias}"


def test_tlc_conv_macs_at_gopro_resolution():
    """Section 1.5.7: at 720x1280 every pool is local and SCA's 1x1 conv runs per pixel:
    886.6 G for plain NAFNet-w64, 1022.5 G for NAFNetLocal."""
    local = _published("NAFNet-GoPro-width64", (720, 1280))["conv_macs"] / 1e9
    plain = _published("NAFNet-GoPro-width64", (720, 1280), tlc=False)["conv_macs"] / 1e9
    assert round(local, 1) == 1022.5 and round(plain, 1) == 886.6, f"local {local}, plain {plain}"


def _hand_count_nafnet_1level(c: int, h: int, w: int) -> int:
    """intro, one block, down, one middle block, up, one block, ending; global SCA pools."""
    def block(ch, pixels):  # conv1 1x1 ch->2ch, conv2 dw 3x3, sca 1x1 on 1x1, conv3, conv4, conv5
        return pixels * (2 * ch * ch + 2 * ch * 9 + ch * ch + 2 * ch * ch + ch * ch) + ch * ch

    hw, hw4 = h * w, (h // 2) * (w // 2)
    return (hw * c * 3 * 9 + block(c, hw) + hw4 * 2 * c * c * 4 + block(2 * c, hw4)
            + hw4 * 4 * c * 2 * c + block(c, hw) + hw * 3 * c * 9)


def test_conv_macs_equal_a_hand_count_on_the_padded_input():
    """13x19 is padded to 14x20 (a multiple of 2**1) before the first conv."""
    s = summary.summarize(NAFNet(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,)),
                          (13, 19), xla=False)
    assert s["conv_macs"] == _hand_count_nafnet_1level(4, 14, 20)
    assert s["num_convs"] == 2 + 3 * 6 + 2  # intro/ending, 3 blocks x 6 convs, down/up


def test_xla_flops_cover_the_convs_plus_a_little_elementwise_work():
    """flops/2 counts every conv multiply-add, plus biases, norms, gates, pools: a few % more."""
    model = NAFNet(width=8, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
    s = summary.summarize(model, 32)
    ratio = s["xla_macs"] / s["conv_bias_macs"]
    assert 1.0 <= ratio <= 1.15, f"XLA flops/2 = {ratio:.3f} x conv+bias MACs"


def test_cli_prints_parameters_and_macs(capsys):
    assert summary.main(["NAFNet-SIDD-width32", "--size", "32x48", "--no-xla"]) == 0
    out = capsys.readouterr().out
    assert "29,159,715" in out and "32x48" in out and "conv MACs" in out
