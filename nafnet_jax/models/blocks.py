"""The restoration block and its variants: NAFBlock, BaselineBlock and the ablation ladder.

One module, `RestorationBlock`, covers the paper's whole ladder from PlainNet to
NAFNet; a variant is a `BlockConfig` value, never a copied class:

    PlainNet  -> +LayerNorm -> ReLU->GELU -> +channel attention (= Baseline)
              -> GELU->SimpleGate -> CA->SCA (= NAFNet)

Parameter names mirror the original's state-dict keys (conv1..conv5, norm1/2,
sca = `sca.1`, se_reduce/se_expand = `se.1`/`se.3`, beta, gamma), so the
converter's key table stays one line per layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nafnet_jax.models.layers import (Conv2d, channel_layer_norm, cotangent_fusion_barrier, simple_gate,
                                      tlc_pool)

Array = jax.Array

ACTIVATIONS = ("relu", "gelu", "simple_gate")
ATTENTIONS = (None, "se", "sca")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """What a restoration block is made of.

    Attributes:
      activation: 'relu', 'gelu' (exact erf GELU, as torch's nn.GELU) or
        'simple_gate' (halves the channels).
      attention: None, 'se' (squeeze-excitation: pool, 1x1 d->d/2, ReLU, 1x1
        d/2->d, sigmoid) or 'sca' (simplified channel attention: pool, 1x1 d->d).
      norm: channel LayerNorm before each of the two sub-blocks.
      dw_expand: the spatial sub-block works on dw_expand * c channels.
      ffn_expand: the feed-forward sub-block works on ffn_expand * c channels.
    """

    activation: str = "simple_gate"
    attention: Optional[str] = "sca"
    norm: bool = True
    dw_expand: int = 2
    ffn_expand: int = 2

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BlockConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"BlockConfig.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        for key in ("dw_expand", "ffn_expand"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockConfig.{key} must be a positive int, got {value!r}")
            if self.activation == "simple_gate" and value % 2:
                raise ValueError(f"BlockConfig.{key}={value}: SimpleGate halves channels, it must be even")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BlockConfig":
        """Builds a config from a (config-file) mapping, rejecting unknown keys by name."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown block config key(s) {unknown}; known: {sorted(fields)}")
        return cls(**d)


NAFNET_BLOCK = BlockConfig("simple_gate", "sca", True, 2, 2)


def baseline_block(dw_expand: int = 1, ffn_expand: int = 2) -> BlockConfig:
    """The paper's Baseline block (GELU + SE attention)."""
    return BlockConfig("gelu", "se", True, dw_expand, ffn_expand)


# The paper's ablation (Table 1/2, width 32): each rung changes one thing.
ABLATION_LADDER: Dict[str, BlockConfig] = {
    "plainnet": BlockConfig("relu", None, False, 1, 2),
    "plainnet+ln": BlockConfig("relu", None, True, 1, 2),
    "plainnet+ln+gelu": BlockConfig("gelu", None, True, 1, 2),
    "baseline": baseline_block(1, 2),                          # + channel attention
    "baseline+simple_gate": BlockConfig("simple_gate", "se", True, 2, 2),
    "nafnet": NAFNET_BLOCK,                                    # CA -> SCA
}


def activate(x: Array, activation: str) -> Array:
    """The block's nonlinearity (or SimpleGate, which is none)."""
    if activation == "relu":
        return jax.nn.relu(x)
    if activation == "gelu":
        return jax.nn.gelu(x, approximate=False)  # torch nn.GELU is exact erf
    return simple_gate(x)


class RestorationBlock(nn.Module):
    """NAFBlock / BaselineBlock / any rung of the ablation ladder.

    Input and output (N, H, W, c). beta and gamma start at zero (skip-init), so
    the block is the identity at initialisation.

    Attributes:
      config: what the block is made of.
      tlc_kernel: the TLC box for this level's pooling, or None for global pooling.
      dtype, param_dtype, depthwise_impl, platform: as `Conv2d`.
    """

    config: BlockConfig = NAFNET_BLOCK
    tlc_kernel: Optional[Tuple[int, int]] = None
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None

    @nn.compact
    def __call__(self, inp: Array) -> Array:
        cfg = self.config
        c = inp.shape[-1]
        if self.platform == "cpu":
            inp = cotangent_fusion_barrier(inp)  # materialise the residual cotangent once (XLA:CPU)
        conv = functools.partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(channel_layer_norm, dtype=self.dtype, param_dtype=self.param_dtype)

        x = norm("norm1")(inp) if cfg.norm else inp
        d = c * cfg.dw_expand
        x = conv(d, name="conv1")(x)
        x = conv(d, (3, 3), padding=1, groups=d, depthwise_impl=self.depthwise_impl, platform=self.platform,
                 name="conv2")(x)
        x = activate(x, cfg.activation)
        x = self._channel_attention(x, conv)
        x = conv(c, name="conv3")(x)
        beta = self.param("beta", nn.initializers.zeros, (c,), self.param_dtype)
        y = inp + x * beta.astype(x.dtype).reshape(1, 1, 1, c)

        x = norm("norm2")(y) if cfg.norm else y
        x = conv(c * cfg.ffn_expand, name="conv4")(x)
        x = activate(x, cfg.activation)
        x = conv(c, name="conv5")(x)
        gamma = self.param("gamma", nn.initializers.zeros, (c,), self.param_dtype)
        return y + x * gamma.astype(x.dtype).reshape(1, 1, 1, c)

    def _channel_attention(self, x: Array, conv) -> Array:
        ch = x.shape[-1]
        if self.config.attention == "sca":
            return x * conv(ch, name="sca")(tlc_pool(x, self.tlc_kernel))
        if self.config.attention == "se":
            s = jax.nn.relu(conv(ch // 2, name="se_reduce")(tlc_pool(x, self.tlc_kernel)))
            return x * jax.nn.sigmoid(conv(ch, name="se_expand")(s))
        return x
