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

import math

import tensorflow as tf

from nafnet_jax.data.degradation_spec import (  # noqa: F401  (re-exported)
    _STEP_SALT, BLUR_KINDS, STEP_NAMES, BlurSpec, DegradationSpec, JpegSpec, NoiseSpec, parse_degradation)


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
