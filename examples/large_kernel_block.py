"""A NAFBlock whose depthwise conv is 7x7 instead of 3x3: the block of docs/extending.md.

Registered as "nafblock_large_kernel"; a config selects it with one line:

    config.model.block = {"name": "nafblock_large_kernel", "kernel_size": 7}
"""

import functools

import flax.linen as nn
import jax

from nafnet_jax.models import BlockBase, register_block
from nafnet_jax.models.layers import Conv2d, DropPath, channel_layer_norm, simple_gate, tlc_pool


@register_block("nafblock_large_kernel")
class LargeKernelNAFBlock(BlockBase):
    """NAFBlock (SimpleGate, simplified channel attention) with a kernel_size^2 depthwise conv.

    Input and output (N, H, W, c); the parameter names are NAFBlock's. With
    kernel_size=3 it computes exactly what the "restoration" block computes.
    `BlockBase` brings the contract's attributes (tlc_kernel, dtype, param_dtype,
    depthwise_impl, platform, drop_path_rate), which the U-Net sets.
    """

    kernel_size: int = 7  # this block's one option: the depthwise conv's size (odd)

    @nn.compact
    def __call__(self, inp: jax.Array, deterministic: bool = True) -> jax.Array:
        k = self.kernel_size
        if k < 1 or k % 2 == 0:
            raise ValueError(f"nafblock_large_kernel: kernel_size must be odd and positive, got {k}")
        c = inp.shape[-1]
        conv = functools.partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(channel_layer_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        # beta and gamma start at zero (skip-init): the block is the identity at initialisation.
        beta = self.param("beta", nn.initializers.zeros, (c,), self.param_dtype)
        gamma = self.param("gamma", nn.initializers.zeros, (c,), self.param_dtype)

        # Spatial branch: 1x1 expand, k x k depthwise ('same' padding), SimpleGate, SCA, 1x1.
        x = conv(2 * c, name="conv1")(norm("norm1")(inp))
        x = conv(2 * c, (k, k), padding=k // 2, groups=2 * c, depthwise_impl=self.depthwise_impl,
                 platform=self.platform, name="conv2")(x)
        x = simple_gate(x)
        x = x * conv(c, name="sca")(tlc_pool(x, self.tlc_kernel))
        x = conv(c, name="conv3")(x) * beta.astype(x.dtype).reshape(1, 1, 1, c)
        y = inp + DropPath(self.drop_path_rate)(x, deterministic)

        # Feed-forward branch: 1x1 expand, SimpleGate, 1x1.
        x = conv(2 * c, name="conv4")(norm("norm2")(y))
        x = conv(c, name="conv5")(simple_gate(x)) * gamma.astype(x.dtype).reshape(1, 1, 1, c)
        return y + DropPath(self.drop_path_rate)(x, deterministic)
