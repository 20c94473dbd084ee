"""The degradation config's schema: validated, immutable specs (no TensorFlow here).

`nafnet_jax.data.degradations` applies these specs with seeded tf ops; this module only parses
and checks `config.data.degradation`, so configs can be validated without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

STEP_NAMES = ('blur', 'noise', 'jpeg')
BLUR_KINDS = ('motion', 'defocus')
_STEP_SALT = {'blur': 1, 'noise': 2, 'jpeg': 3}  # folded into the seed: steps draw independently


@dataclasses.dataclass(frozen=True)
class BlurSpec:
    kinds: tuple[str, ...] = BLUR_KINDS
    kernel_size: int = 21
    motion_length: tuple[float, float] = (3.0, 15.0)
    defocus_radius: tuple[float, float] = (1.0, 4.0)
    prob: float = 1.0


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    sigma: tuple[float, float] = (25.0, 25.0)
    prob: float = 1.0


@dataclasses.dataclass(frozen=True)
class JpegSpec:
    quality: tuple[int, int] = (30, 95)
    prob: float = 1.0


@dataclasses.dataclass(frozen=True)
class DegradationSpec:
    """A validated degradation config: the steps in the order they are applied."""
    steps: tuple[tuple[str, Any], ...]
    source: str = 'gt'
    quantize: bool = True

    @property
    def margin(self) -> int:
        """Pixels of context a step reads beyond an output pixel (the blur kernel radius)."""
        return max([spec.kernel_size // 2 for name, spec in self.steps if name == 'blur'] + [0])


def _as_range(value, key: str, kind=float) -> tuple:
    """A number or a (low, high) pair, as a (low, high) tuple of `kind`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = value
    else:
        raise ValueError(f'{key} must be a number or a (low, high) pair, got {value!r}')
    try:
        low, high = kind(low), kind(high)
    except (TypeError, ValueError):
        raise ValueError(f'{key} must hold numbers, got {value!r}') from None
    if low > high:
        raise ValueError(f'{key}: low {low} > high {high}')
    return low, high


def _check_keys(mapping: Mapping, allowed, key: str) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ValueError(f'{key}: unknown key(s) {unknown}; allowed: {sorted(allowed)}')


def _prob(mapping: Mapping, key: str) -> float:
    p = mapping.get('prob', 1.0)
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f'{key}.prob must be in [0, 1], got {p!r}')
    return float(p)


def _parse_blur(m: Mapping, key: str) -> BlurSpec:
    _check_keys(m, ('kinds', 'kernel_size', 'motion_length', 'defocus_radius', 'prob'), key)
    d = BlurSpec()
    kinds = m.get('kinds', d.kinds)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in BLUR_KINDS for k in kinds):
        raise ValueError(f'{key}.kinds must be a non-empty subset of {BLUR_KINDS}, got {kinds!r}')
    size = m.get('kernel_size', d.kernel_size)
    if not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f'{key}.kernel_size must be an odd int >= 3, got {size!r}')
    length = _as_range(m.get('motion_length', d.motion_length), f'{key}.motion_length')
    radius = _as_range(m.get('defocus_radius', d.defocus_radius), f'{key}.defocus_radius')
    if length[0] < 1 or length[1] > size:
        raise ValueError(f'{key}.motion_length must lie in [1, kernel_size={size}], got {length}')
    if radius[0] < 0.5 or radius[1] > size // 2:
        raise ValueError(f'{key}.defocus_radius must lie in [0.5, kernel_size//2={size // 2}], '
                         f'got {radius}')
    return BlurSpec(kinds, size, length, radius, _prob(m, key))


def _parse_noise(m: Mapping, key: str) -> NoiseSpec:
    _check_keys(m, ('sigma', 'prob'), key)
    if 'sigma' not in m:
        raise ValueError(f'{key}.sigma is required (0-255 units, a number or a (low, high) range)')
    sigma = _as_range(m['sigma'], f'{key}.sigma')
    if sigma[0] < 0:
        raise ValueError(f'{key}.sigma must be >= 0, got {sigma}')
    return NoiseSpec(sigma, _prob(m, key))


def _parse_jpeg(m: Mapping, key: str) -> JpegSpec:
    _check_keys(m, ('quality', 'prob'), key)
    quality = _as_range(m.get('quality', JpegSpec.quality), f'{key}.quality', kind=int)
    if quality[0] < 1 or quality[1] > 100:
        raise ValueError(f'{key}.quality must lie in [1, 100], got {quality}')
    return JpegSpec(quality, _prob(m, key))


_PARSERS = {'blur': _parse_blur, 'noise': _parse_noise, 'jpeg': _parse_jpeg}


def parse_degradation(config: Mapping | None, key: str = 'data.degradation'
                      ) -> DegradationSpec | None:
    """Validates a degradation mapping (module doc); None when it enables no step.

    Raises ValueError naming the offending key, e.g. 'data.degradation.noise.sigma'.
    """
    if config is None:
        return None
    config = dict(config)
    _check_keys(config, STEP_NAMES + ('order', 'source', 'quantize'), key)
    order = tuple(config.get('order', STEP_NAMES))
    if sorted(order) != sorted(set(order)) or any(s not in STEP_NAMES for s in order):
        raise ValueError(f'{key}.order must list distinct steps from {STEP_NAMES}, got {order!r}')
    enabled = [s for s in STEP_NAMES if config.get(s) is not None]
    missing = [s for s in enabled if s not in order]
    if missing:
        raise ValueError(f'{key}.order {order!r} leaves out enabled step(s) {missing}')
    source = config.get('source', 'gt')
    if source not in ('gt', 'lq'):
        raise ValueError(f"{key}.source must be 'gt' or 'lq', got {source!r}")
    quantize = config.get('quantize', True)
    if not isinstance(quantize, bool):
        raise ValueError(f'{key}.quantize must be a bool, got {quantize!r}')
    steps = []
    for name in order:
        sub = config.get(name)
        if sub is None:
            continue
        if not isinstance(sub, Mapping) and not hasattr(sub, 'items'):
            raise ValueError(f'{key}.{name} must be a mapping or None, got {sub!r}')
        steps.append((name, _PARSERS[name](dict(sub), f'{key}.{name}')))
    if not steps:
        return None
    if not quantize and any(name == 'jpeg' for name, _ in steps):
        raise ValueError(f'{key}.quantize=False conflicts with the jpeg step (JPEG is 8-bit)')
    return DegradationSpec(tuple(steps), source, quantize)
