"""A stand-in `torchvision` so that spandrel imports where the real one does not.

spandrel imports torchvision when its package is imported, but only two
architectures nafnet_jax never uses call it (LaMa: `rotate`, `InterpolationMode`;
RestoreFormer: `normalize`); NAFNet's architecture file needs nothing from it.
Some environments have a torchvision that fails to import (this project's: a
build mismatch with torch 2.13, "operator torchvision::nms does not exist").

Call `install_torchvision_stub()` before the first `import spandrel`. The fake
functions raise if anything calls them, so nothing can silently run through the
stand-in.
"""

from __future__ import annotations

import enum
import importlib.machinery
import sys
import types

_STUB_MARKER = "__nafnet_jax_stub__"


def _unavailable(name: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision.transforms.functional.{name} is a stand-in (nafnet_jax.torch_reference); "
            "the real torchvision is not importable in this environment")

    fn.__name__ = name
    return fn


class InterpolationMode(enum.Enum):
    """The names spandrel's LaMa refers to at import time (values as torchvision's)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    # A spec, so importlib.util.find_spec() on the name does not raise.
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []
    setattr(module, _STUB_MARKER, True)
    return module


def install_torchvision_stub() -> None:
    """Puts fake `torchvision`, `.transforms`, `.transforms.functional` in sys.modules.

    Idempotent. Does nothing if some `torchvision` module is already imported
    (a working real one, or this stand-in).
    """
    if "torchvision" in sys.modules:
        return
    torchvision = _module("torchvision")
    transforms = _module("torchvision.transforms")
    functional = _module("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode
    functional.normalize = _unavailable("normalize")
    functional.rotate = _unavailable("rotate")
    transforms.functional = functional
    transforms.InterpolationMode = InterpolationMode
    torchvision.transforms = transforms
    sys.modules.update({
        "torchvision": torchvision,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    })


def is_stub(module: types.ModuleType) -> bool:
    """Whether a module object is this file's stand-in."""
    return bool(getattr(module, _STUB_MARKER, False))
