"""Tiny random NAFNets for inference/eval/CLI tests, built without compiling an initialiser.

`model.init` compiles one program per parameter shape on CPU (tens of seconds on
a loaded machine); these tests only need *some* fixed weights, so they take the
parameter shapes from `jax.eval_shape` and fill them from a NumPy generator.
"""

from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nafnet_jax.models import build_model


def tiny_config(levels: int = 1, tlc_train_size: Optional[Sequence[int]] = (16, 16)) -> Dict[str, Any]:
    """A `build_model` mapping: width 8, one block per level, optional TLC."""
    return {"name": None, "width": 8, "enc_blk_nums": [1] * levels, "middle_blk_num": 1,
            "dec_blk_nums": [1] * levels,
            "tlc_train_size": None if tlc_train_size is None else list(tlc_train_size)}


def random_params(model: Any, seed: int = 0, beta_gamma_std: float = 1.0) -> Any:
    """Fan-in-scaled normal weights, and non-trivial beta/gamma (the original starts them at 0)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, model.img_channel)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        shape = leaf.shape
        if "beta" in name or "gamma" in name:
            value = rng.normal(0, beta_gamma_std, shape)
        elif name.endswith("['kernel']"):
            value = rng.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[:-1]))  # torch default bound
        elif name.endswith("['scale']"):
            value = 1 + rng.normal(0, 0.1, shape)
        else:
            value = rng.normal(0, 0.05, shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def tiny_model_and_params(levels: int = 1, tlc_train_size=(16, 16), seed: int = 0):
    config = tiny_config(levels, tlc_train_size)
    model = build_model(config)
    return model, random_params(model, seed), config


ACTIVATION_SCALE = 300.0  # block inputs reach |x| ~ 200, as in a trained NAFNet's bottleneck


def large_activation_params(params: Any, scale: float = ACTIVATION_SCALE) -> Any:
    """The intro conv scaled up (block inputs |x| ~ 200) and the ending conv scaled back down.

    At that scale a float16 sum of squares over the channels overflows (65504), so a
    half-precision LayerNorm that does not accumulate in float32 fails.
    """
    params = jax.tree.map(np.asarray, params)
    params["intro"] = {k: v * scale for k, v in params["intro"].items()}
    params["ending"] = {k: v / scale for k, v in params["ending"].items()}
    return params
