"""The PyTorch original of NAFNet / Baseline: the one reference for the parity tests and `nafnet-bench`.

    from nafnet_jax import torch_reference as ref
    net = ref.build_torch_model(flax_unet)          # PyTorch twin of a nafnet_jax UNet (any block, TLC)
    net = ref.Baseline(width=32, enc_blk_nums=[1, 1, 1, 28], ...)   # the original's constructors
    net = ref.make_local(net, (1, 3, 256, 256))     # NAFNetLocal / BaselineLocal (TLC)
    orig = ref.spandrel_nafnet(width=32, ...)       # spandrel's copy of the original NAFNet file
    ssr = ref.build_torch_nafssr(flax_nafssr)       # PyTorch twin of a nafnet_jax NAFSSR (stereo.py)

The model code (`original.py`, and `stereo.py` for NAFSSR) is written from NAFNET.md section 1; spandrel's
copy of NAFNet_arch.py is a second, independent reference the tests compare it
with. Importing this package does not import torch: the torch names below are
loaded on first use, so `nafnet_jax` works where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from nafnet_jax.torch_reference.torchvision_stub import install_torchvision_stub, is_stub

# Names defined in `original.py` (which imports torch), re-exported on first access.
_TORCH_NAMES = ("AvgPool2d", "Baseline", "LayerNorm2d", "LayerNormFunction", "NAFNet", "RestorationBlock",
                "UNet", "build_torch_model", "make_local", "perturb_identity_params_", "replace_layers",
                "tlc_pool_kernels")
# Names defined in `stereo.py` (the original NAFSSR), re-exported the same way.
_STEREO_NAMES = ("DropPath", "MySequential", "NAFBlockSR", "NAFNetSR", "NAFSSR", "SCAM", "build_torch_nafssr")

__all__ = ["install_torchvision_stub", "is_stub", "spandrel_nafnet", *_TORCH_NAMES, *_STEREO_NAMES]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module("nafnet_jax.torch_reference.original"), name)
    if name in _STEREO_NAMES:
        return getattr(importlib.import_module("nafnet_jax.torch_reference.stereo"), name)
    raise AttributeError(f"module 'nafnet_jax.torch_reference' has no attribute {name!r}")


def spandrel_nafnet(**kwargs: Any) -> Any:
    """spandrel's copy of the original `NAFNet` file (keyword arguments as the original's)."""
    install_torchvision_stub()
    from spandrel.architectures.NAFNet.__arch.NAFNet_arch import NAFNet  # noqa: E402
    return NAFNet(**kwargs)
