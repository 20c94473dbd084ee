"""Restoration blocks: the block contract, the block registry, and the paper's ablation ladder.

A *block* is any linen module that
  * is built from keyword attributes: its own options plus the contract
    `BLOCK_CONTRACT` (`tlc_kernel`, `dtype`, `param_dtype`, `depthwise_impl`,
    `platform`, `drop_path_rate`), which the U-Net passes to every block;
  * is called `block(x, deterministic)`: x is (N, H, W, c), the result has the
    same shape; `deterministic` is a Python bool, False in training, where
    stochastic layers draw from the 'drop_path' / 'dropout' RNG streams.
`register_block("name")` puts a block class in the registry and
`config.model.block = {"name": "name", **options}` selects it (docs/extending.md
walks through one).

The registered "restoration" block, `RestorationBlock`, covers the paper's whole
ladder from PlainNet to NAFNet; a rung is a `BlockConfig` value, never a copied class:

    PlainNet  -> +LayerNorm -> ReLU->GELU -> +channel attention (= Baseline)
              -> GELU->SimpleGate -> CA->SCA (= NAFNet)

Parameter names mirror the original's state-dict keys (conv1..conv5, norm1/2,
sca = `sca.1`, se_reduce/se_expand = `se.1`/`se.3`, beta, gamma), so the
converter's key table stays one line per layer.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from nafnet_jax.models.layers import (Conv2d, DropPath, channel_layer_norm, cotangent_fusion_barrier,
                                      simple_gate, tlc_pool)

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


# ---------------------------------------------------------------------------
# The block contract and the registry.
# ---------------------------------------------------------------------------

# The keyword attributes the U-Net passes to every block; a block class must have each as a field.
BLOCK_CONTRACT = ("tlc_kernel", "dtype", "param_dtype", "depthwise_impl", "platform", "drop_path_rate")
DEFAULT_BLOCK = "restoration"
_NOT_OPTIONS = frozenset(BLOCK_CONTRACT) | {"parent", "name"}  # flax's own fields are no options either

BlockClass = TypeVar("BlockClass", bound=type)
_REGISTRY: Dict[str, type] = {}


def _check_block_class(block_cls: Any, name: str) -> None:
    if not (isinstance(block_cls, type) and issubclass(block_cls, nn.Module)):
        raise TypeError(f"block {name!r}: {block_cls!r} is not a flax.linen Module class")
    fields = {f.name for f in dataclasses.fields(block_cls)}
    missing = [key for key in BLOCK_CONTRACT if key not in fields]
    if missing:
        raise TypeError(f"block {name!r} ({block_cls.__qualname__}) lacks the contract attribute(s) "
                        f"{missing}: every block takes {list(BLOCK_CONTRACT)} (see nafnet_jax.models.blocks)")


def register_block(name: str) -> Callable[[BlockClass], BlockClass]:
    """Class decorator: registers a block module under `name`, the value `model.block.name` selects.

    The class must follow the block contract (module docstring): have the
    `BLOCK_CONTRACT` attributes and be called `block(x, deterministic)`. Its other
    attributes are its options, set from the config. Registering happens when the
    defining module is imported (import it from the config file).

    Raises:
      TypeError if the class breaks the contract; ValueError if `name` is taken by another class.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"block name must be a non-empty string without ':', got {name!r}")

    def register(block_cls: BlockClass) -> BlockClass:
        _check_block_class(block_cls, name)
        known = _REGISTRY.get(name)
        same = known is not None and (known.__module__, known.__qualname__) == (block_cls.__module__,
                                                                                 block_cls.__qualname__)
        if known is not None and not same:  # the same class re-imported (a reload) may re-register
            raise ValueError(f"block name {name!r} is already registered to "
                             f"{known.__module__}.{known.__qualname__}")
        _REGISTRY[name] = block_cls
        return block_cls

    return register


def registered_blocks() -> Tuple[str, ...]:
    """The registered block names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_block(name: str) -> type:
    """The block class registered as `name`; a 'package.module:ClassName' name imports it first.

    Raises:
      ValueError naming an unknown block and listing the registered ones.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:  # self-contained in a saved config: no import needed beforehand
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"block {name!r}: cannot import module {module_name!r}: {e}") from e
        if not hasattr(module, attr):
            raise ValueError(f"block {name!r}: module {module_name!r} has no attribute {attr!r}")
        block_cls = getattr(module, attr)
        _check_block_class(block_cls, name)
        return block_cls
    raise ValueError(f"unknown block {name!r}; registered blocks: {list(registered_blocks())} (a block is "
                     "registered when the module defining it is imported: import it in the config file, "
                     "or name it 'package.module:ClassName')")


def block_options(block_cls: type) -> Tuple[str, ...]:
    """A block class's options: its attributes other than the contract's (and flax's parent/name)."""
    return tuple(f.name for f in dataclasses.fields(block_cls) if f.name not in _NOT_OPTIONS)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A registered block with its options: the `UNet.block` value of any block but the restoration one.

    Hashable and comparable like any model attribute; `block_spec` builds it from a
    config's `model.block` and checks the name and options.

    Attributes:
      name: a registered name (or 'package.module:ClassName').
      options: (option, value) pairs sorted by option; values are hashable (lists become tuples).
    """

    name: str
    options: Tuple[Tuple[str, Any], ...] = ()


Block = Union[BlockConfig, BlockSpec]


def _frozen(key: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(key, v) for v in value)
    try:
        hash(value)
    except TypeError:
        raise ValueError(f"block option {key}={value!r}: values must be scalars or sequences of "
                         "them") from None
    return value


def block_spec(value: Union[Block, str, Mapping[str, Any]]) -> Block:
    """Checks a block selection (a config's `model.block`) and returns its `UNet.block` value.

    Args:
      value: a mapping (or ConfigDict) `{"name": registered name, **that block's options}` (name
        defaults to "restoration", whose options are `BlockConfig`'s fields), a
        name alone (default options), or a `BlockConfig` / `BlockSpec`.
    Returns:
      a `BlockConfig` for the restoration block (as the published models hold),
      else a `BlockSpec`.
    Raises:
      ValueError naming an unknown block (and the registered ones) or an unknown
      option (and the block's options).
    """
    if hasattr(value, "to_dict"):  # an ml_collections ConfigDict
        value = value.to_dict()
    if isinstance(value, BlockConfig):
        return value
    if isinstance(value, BlockSpec):
        name, options = value.name, dict(value.options)
    elif isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, Mapping):
        options = dict(value)
        name = options.pop("name", None) or DEFAULT_BLOCK
    else:
        raise TypeError(f"a block is a name, a mapping, a BlockConfig or a BlockSpec; got {value!r}")
    block_cls = get_block(name)
    if block_cls is RestorationBlock:  # its options are spelled flat, as every config and checkpoint has them
        return BlockConfig.from_dict(options)
    known = block_options(block_cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for block {name!r}; its options: {sorted(known)}")
    return BlockSpec(name, tuple(sorted((k, _frozen(k, v)) for k, v in options.items())))


def resolve_block(block: Block) -> Tuple[type, Dict[str, Any]]:
    """The module class of a `UNet.block` value and its options (the U-Net adds the contract's)."""
    if isinstance(block, BlockConfig):
        return RestorationBlock, {"config": block}
    if isinstance(block, BlockSpec):
        return get_block(block.name), dict(block.options)
    raise TypeError(f"UNet.block must be a BlockConfig or a BlockSpec (see block_spec), got {block!r}")


class BlockBase(nn.Module, kw_only=True):
    """The block contract's attributes, which the U-Net sets on every block: subclass it to write one.

    The fields are keyword-only, so a subclass's own options may be positional. A block needs
    only these fields (or its own fields of the same names) and the call
    `block(x, deterministic)`; subclassing saves spelling them out.

    Attributes:
      tlc_kernel: the TLC box for this level's pooling, or None for global pooling.
      dtype, param_dtype, depthwise_impl, platform: as `Conv2d`.
      drop_path_rate: this block's stochastic-depth rate (the U-Net's schedule).
    """

    tlc_kernel: Optional[Tuple[int, int]] = None
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None
    drop_path_rate: float = 0.0


@register_block(DEFAULT_BLOCK)
class RestorationBlock(BlockBase):
    """NAFBlock / BaselineBlock / any rung of the ablation ladder (registered as "restoration").

    Input and output (N, H, W, c). beta and gamma start at zero (skip-init), so
    the block is the identity at initialisation.

    Attributes:
      config: what the block is made of (its only option; in a config file its
        fields are spelled out flat: `model.block = {"activation": ..., ...}`).
      tlc_kernel: the TLC box for this level's pooling, or None for global pooling.
      dtype, param_dtype, depthwise_impl, platform: as `Conv2d`.
      drop_path_rate: stochastic depth on each of the two residual branches
        (x * beta, x * gamma): per-sample drop with this probability in training,
        identity in evaluation. Adds no parameters.
    """

    config: BlockConfig = NAFNET_BLOCK

    @nn.compact
    def __call__(self, inp: Array, deterministic: bool = True) -> Array:
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
        y = inp + self._drop_path("drop_path_beta", x * beta.astype(x.dtype).reshape(1, 1, 1, c),
                                  deterministic)

        x = norm("norm2")(y) if cfg.norm else y
        x = conv(c * cfg.ffn_expand, name="conv4")(x)
        x = activate(x, cfg.activation)
        x = conv(c, name="conv5")(x)
        gamma = self.param("gamma", nn.initializers.zeros, (c,), self.param_dtype)
        return y + self._drop_path("drop_path_gamma", x * gamma.astype(x.dtype).reshape(1, 1, 1, c),
                                   deterministic)

    def _drop_path(self, name: str, branch: Array, deterministic: bool) -> Array:
        return DropPath(self.drop_path_rate, name=name)(branch, deterministic)

    def _channel_attention(self, x: Array, conv) -> Array:
        ch = x.shape[-1]
        if self.config.attention == "sca":
            return x * conv(ch, name="sca")(tlc_pool(x, self.tlc_kernel))
        if self.config.attention == "se":
            s = jax.nn.relu(conv(ch // 2, name="se_reduce")(tlc_pool(x, self.tlc_kernel)))
            return x * jax.nn.sigmoid(conv(ch, name="se_expand")(s))
        return x
