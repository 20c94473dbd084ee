"""The block registry: a block variant is one module plus one config line (models/blocks.py)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nafnet_jax.config import base_config, validate_config
from nafnet_jax.models import (BLOCK_CONTRACT, NAFNET_BLOCK, PUBLISHED, BlockConfig, BlockSpec,
                               RestorationBlock, UNet, block_spec, build_model, get_model, register_block,
                               registered_blocks)

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))


@register_block("test_scaled_residual")
class ScaledResidualBlock(nn.Module):
    """A minimal contract-following block: x + scale * conv1x1(relu(conv1x1(x)))."""

    expand: int = 2
    tlc_kernel: Optional[Tuple[int, int]] = None
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    platform: Optional[str] = None
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = x.shape[-1]
        h = nn.Dense(self.expand * c, param_dtype=self.param_dtype, name="expand")(x)
        h = nn.Dense(c, param_dtype=self.param_dtype, name="project")(jax.nn.relu(h))
        return x + h * self.param("scale", nn.initializers.ones, (c,), self.param_dtype).reshape(1, 1, 1, c)


def _config_with_block(block):
    config = base_config()
    config.model.update(TINY)
    config.model.block = block
    return config


def test_restoration_is_registered_and_is_the_default_block():
    assert "restoration" in registered_blocks()
    assert block_spec({}) == NAFNET_BLOCK
    assert block_spec({"name": "restoration", **dataclasses.asdict(NAFNET_BLOCK)}) == NAFNET_BLOCK
    assert block_spec(base_config().model.block) == NAFNET_BLOCK  # a ConfigDict, as config files hold it


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_published_model_spelled_as_a_config_mapping_is_the_same_model(name):
    """Same UNet (and so the same parameter tree) from the table and from a config's `model.block` mapping."""
    kwargs = dict(PUBLISHED[name])
    block = {"name": "restoration", **dataclasses.asdict(kwargs.pop("block"))}
    assert build_model({**kwargs, "block": block}) == get_model(name)


def test_unknown_block_name_is_an_error_listing_the_registered_ones():
    with pytest.raises(ValueError, match="model.block") as err:
        validate_config(_config_with_block({"name": "nafblock_typo"}))
    assert "'nafblock_typo'" in str(err.value)
    for name in registered_blocks():
        assert repr(name) in str(err.value), f"{name} missing from: {err.value}"


def test_unknown_block_option_is_an_error_naming_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"\['kernel'\].*test_scaled_residual.*\['expand'\]"):
        validate_config(_config_with_block({"name": "test_scaled_residual", "kernel": 3}))
    # The restoration block's options are BlockConfig's fields.
    with pytest.raises(ValueError, match=r"\['kernel'\]"):
        validate_config(_config_with_block({"name": "restoration", "kernel": 3}))


def test_a_registered_block_is_selected_by_one_config_line_and_built_with_its_options():
    config = _config_with_block({"name": "test_scaled_residual", "expand": 3})
    validate_config(config)
    model = build_model(config.model.to_dict())
    assert model.block == BlockSpec("test_scaled_residual", (("expand", 3),))
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    assert set(params["encoders_0_0"]) == {"expand", "project", "scale"}
    assert params["encoders_0_0"]["expand"]["kernel"].shape == (4, 12)   # width 4, expand 3
    assert params["middle_blks_0"]["expand"]["kernel"].shape == (8, 24)  # level 1: 8 channels


def test_the_unet_passes_the_contract_attributes_to_every_block():
    model = UNet(block=BlockSpec("test_scaled_residual"), tlc_train_size=(16, 16), platform="cpu",
                 depthwise_impl="xla", drop_path_rate=0.2, drop_path_schedule="constant", **TINY)
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ScaledResidualBlock) and context.method_name == "__call__":
            seen[context.module.name] = {k: getattr(context.module, k) for k in BLOCK_CONTRACT}
            assert isinstance(args[1], bool), "deterministic must reach the block as a Python bool"
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert sorted(seen) == ["decoders_0_0", "encoders_0_0", "middle_blks_0"]
    assert seen["encoders_0_0"]["tlc_kernel"] == (24, 24)
    assert seen["middle_blks_0"]["tlc_kernel"] == (12, 12)
    for attrs in seen.values():
        assert (attrs["platform"], attrs["depthwise_impl"], attrs["drop_path_rate"]) == ("cpu", "xla", 0.2)


def test_a_block_without_the_contract_attributes_is_refused_at_registration():
    class NoContract(nn.Module):
        width: int = 2

        def __call__(self, x, deterministic=True):
            return x

    with pytest.raises(TypeError, match="drop_path_rate"):
        register_block("test_no_contract")(NoContract)
    assert "test_no_contract" not in registered_blocks()


def test_a_taken_block_name_is_refused():
    class Other(ScaledResidualBlock):  # another class under an existing name
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_block("test_scaled_residual")(Other)
    with pytest.raises(ValueError, match="already registered"):
        register_block("restoration")(ScaledResidualBlock)


def test_a_module_path_name_imports_the_block_so_a_saved_config_needs_no_import(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # where examples/ lives
    name = "examples.large_kernel_block:LargeKernelNAFBlock"
    spec = block_spec({"name": name, "kernel_size": 5})
    assert spec == BlockSpec(name, (("kernel_size", 5),))
    params = jax.eval_shape(UNet(block=spec, **TINY).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert params["params"]["encoders_0_0"]["conv2"]["kernel"].shape == (5, 5, 1, 8)
    with pytest.raises(ValueError, match="cannot import module 'examples.no_such_module'"):
        block_spec("examples.no_such_module:Block")
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        block_spec("examples.large_kernel_block:Nope")


def test_block_config_values_are_still_checked():
    with pytest.raises(ValueError, match="activation"):
        block_spec({"activation": "swish"})
    assert block_spec({"activation": "gelu", "attention": "se", "dw_expand": 1}) == BlockConfig(
        "gelu", "se", True, 1, 2)


def test_the_large_kernel_example_with_kernel_3_computes_the_nafblock(monkeypatch):
    """The walkthrough's block is the restoration block but for its depthwise size."""
    monkeypatch.syspath_prepend(str(REPO))  # where examples/ lives
    from examples.large_kernel_block import LargeKernelNAFBlock
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    reference = RestorationBlock(NAFNET_BLOCK)
    rng = np.random.default_rng(0)  # random values of the init's shapes (a compiled init is slow on CPU)
    shapes = jax.eval_shape(reference.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)
    want = jax.jit(reference.apply)({"params": params}, x)
    got = jax.jit(LargeKernelNAFBlock(kernel_size=3).apply)({"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
