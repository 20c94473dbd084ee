"""Synthetic degradations (TensorFlow ops, stateless, seeded) turning a clean image into an lq one.

The config (`data.degradation`) is a mapping whose keys name the steps to apply; a step that is
absent (or None) is off, so an empty mapping means no degradation:

    degradation = {
        'blur':  {'kinds': ('motion', 'defocus'), 'kernel_size': 21,
                  'motion_length': (3.0, 15.0),    # pixels, line length (uniform in range)
                  'defocus_radius': (1.0, 4.0),    # pixels, disc radius (uniform in range)
                  'prob': 1.0},
        'noise': {'sigma': 25.0,                   # 0-255 units; a number or a (low, high) range
                  'prob': 1.0},
        'jpeg':  {'quality': (30, 95),             # an int or an inclusive (low, high) range
                  'prob': 1.0},
        'order': ('blur', 'noise', 'jpeg'),        # optional; the physical order by default
        'source': 'gt',                            # degrade gt (default) or the dataset's own lq
        'quantize': True,                          # round+clip lq to 8-bit like a saved file
    }

Every random choice comes from a stateless seed (int64 shape [2]), so the same seed gives the same
lq whatever the threading, and a resumed pipeline re-creates it exactly. Images are float32 in
0-255 units, (H, W, 3).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import tensorflow as tf

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


# ---------------------------------------------------------------------------------------------
# Kernels and ops.


def _grid(size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pixel-centre coordinates (y, x) of a size x size kernel, origin at the centre."""
    r = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    return tf.meshgrid(r, r, indexing='ij')


def motion_kernel(length, angle, size: int) -> tf.Tensor:
    """Normalised (size, size) kernel of a straight motion of `length` px at `angle` radians.

    Each tap's weight is max(0, 1 - distance to the segment), an anti-aliased 1-px-wide line
    centred on the kernel; the kernel is point-symmetric, so correlation equals convolution.
    """
    y, x = _grid(size)
    dy, dx = tf.sin(angle), tf.cos(angle)
    half = tf.cast(length, tf.float32) / 2.0
    t = tf.clip_by_value(x * dx + y * dy, -half, half)  # projection onto the segment
    dist = tf.sqrt((x - t * dx) ** 2 + (y - t * dy) ** 2)
    k = tf.nn.relu(1.0 - dist)
    return k / tf.reduce_sum(k)


def defocus_kernel(radius, size: int) -> tf.Tensor:
    """Normalised (size, size) disc ("pillbox") of `radius` px with a 1-px anti-aliased rim."""
    y, x = _grid(size)
    k = tf.clip_by_value(tf.cast(radius, tf.float32) + 0.5 - tf.sqrt(x * x + y * y), 0.0, 1.0)
    return k / tf.reduce_sum(k)


def random_blur_kernel(spec: BlurSpec, seed: tf.Tensor) -> tf.Tensor:
    """A kernel of a kind drawn uniformly from `spec.kinds`, with uniformly drawn parameters."""
    s_kind, s_len, s_ang, s_rad = [tf.random.experimental.stateless_fold_in(seed, i)
                                   for i in range(4)]
    kernels = []
    for kind in spec.kinds:
        if kind == 'motion':
            length = tf.random.stateless_uniform([], s_len, *spec.motion_length)
            angle = tf.random.stateless_uniform([], s_ang, 0.0, math.pi)
            kernels.append(motion_kernel(length, angle, spec.kernel_size))
        else:
            radius = tf.random.stateless_uniform([], s_rad, *spec.defocus_radius)
            kernels.append(defocus_kernel(radius, spec.kernel_size))
    choice = tf.random.stateless_uniform([], s_kind, 0, len(kernels), dtype=tf.int32)
    return tf.gather(tf.stack(kernels), choice)


def blur(image: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Filters (H, W, C) `image` with a (k, k) kernel per channel, reflect-padded (same size)."""
    k = tf.shape(kernel)[0]
    r = k // 2
    padded = tf.pad(image, [[r, r], [r, r], [0, 0]], mode='REFLECT')
    channels = tf.shape(image)[-1]
    filt = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(padded[None], filt, [1, 1, 1, 1], 'VALID')[0]


def gaussian_noise(image: tf.Tensor, sigma, seed: tf.Tensor) -> tf.Tensor:
    """Adds i.i.d. N(0, sigma^2) noise (0-255 units) to every pixel and channel."""
    return image + sigma * tf.random.stateless_normal(tf.shape(image), seed)


def jpeg(image: tf.Tensor, quality) -> tf.Tensor:
    """JPEG round trip at `quality` (1-100) of a 0-255 image (clipped and rounded to 8 bits)."""
    u8 = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return tf.cast(tf.image.adjust_jpeg_quality(u8, quality), tf.float32)


def _apply_step(name: str, spec, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    s_param, s_data = (tf.random.experimental.stateless_fold_in(seed, i) for i in (1, 2))
    if name == 'blur':
        return blur(image, random_blur_kernel(spec, s_param))
    if name == 'noise':
        sigma = tf.random.stateless_uniform([], s_param, spec.sigma[0], spec.sigma[1])
        return gaussian_noise(image, sigma, s_data)
    low, high = spec.quality
    quality = tf.random.stateless_uniform([], s_param, low, high + 1, dtype=tf.int32)
    return jpeg(image, quality)


def degrade(image: tf.Tensor, spec: DegradationSpec, seed: tf.Tensor) -> tf.Tensor:
    """Applies `spec`'s steps to float32 (H, W, 3) 0-255 `image`; returns float32 0-255.

    `seed`: int64 [2]. Each step is applied with its `prob` (drawn from the seed). With
    `spec.quantize` the result is clipped to [0, 255] and rounded, like an 8-bit file.
    """
    image = tf.cast(image, tf.float32)
    for name, step in spec.steps:
        step_seed = tf.random.experimental.stateless_fold_in(seed, _STEP_SALT[name])
        if step.prob < 1.0:
            coin = tf.random.stateless_uniform(
                [], tf.random.experimental.stateless_fold_in(step_seed, 0))
            image = tf.cond(coin < step.prob,
                            lambda n=name, s=step, x=image, sd=step_seed: _apply_step(n, s, x, sd),
                            lambda x=image: x)
        else:
            image = _apply_step(name, step, image, step_seed)
    if spec.quantize:
        image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
    return image
