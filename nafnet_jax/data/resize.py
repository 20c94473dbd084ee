"""Bicubic down-sampling as MATLAB's `imresize(img, 1/s, 'bicubic')` (antialiased), in NumPy.

The original's stereo training patches (iPASSR's GenerateTrainingPatches.m) and test LR images were
made with MATLAB, so LR images made here for custom data (data.dataset='stereo_folder') and the
demo follow MATLAB's rules exactly:

  * kernel: Keys' cubic with a = -0.5, widened by 1/scale when shrinking (antialiasing):
    h(x) = scale * cubic(scale * x), support 4 / scale input pixels;
  * output pixel j (1-based) samples the input at u = j / scale + 0.5 * (1 - 1 / scale);
  * weights normalised to sum 1; positions outside the image mirrored with the edge pixel
    repeated (MATLAB's `[1:n, n:-1:1]` index table);
  * rows (dimension 1) are resized first, then columns (MATLAB resizes the dimension with the
    smaller scale first, rows on a tie);
  * a uint8 image is rounded (half away from zero) and clipped to uint8 after EACH pass, as
    MATLAB's per-dimension resize returns the input's class.

PIL's `Image.resize(..., BICUBIC)` uses the same kernel, support and sample positions but
truncates the kernel at the image border and renormalises it instead of mirroring, and runs
columns before rows. So, at x2 and x4, the two agree to float rounding (~1e-7 on float images)
everywhere except the outermost 2 output pixels on each side (differences of a few percent of
the range there), and to 1 grey level in the interior of uint8 images (per-pass rounding in a
different order). tests/test_data_stereo.py pins this down.
"""

from __future__ import annotations

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's and PIL's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def contributions(in_length: int, out_length: int, scale: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(weights, indices), (out_length, taps) each: out[j] = sum_t weights[j, t] * x[indices[j, t]].

    MATLAB's `contributions` for the bicubic kernel with antialiasing; indices are 0-based and
    already mirrored into [0, in_length). Taps whose weight is zero for every output are dropped.
    """
    width = 4.0
    if scale < 1:  # antialiasing: the kernel stretched by 1 / scale
        def kernel(x):
            return scale * cubic(scale * x)
        width = width / scale
    else:
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based, may fall outside [1, n]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    table = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])  # mirror, edge kept
    indices = table[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of doubles to uint8: round half away from zero, clip to [0, 255]."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _resize_axis(image: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    weights, indices = contributions(image.shape[axis], out_length, scale)
    moved = np.moveaxis(image, axis, 0).astype(np.float64)
    # (out, taps, ...rest) gathered rows, summed against (out, taps) weights.
    gathered = moved[indices]
    out = np.einsum('ot,ot...->o...', weights, gathered)
    out = np.moveaxis(out, 0, axis)
    return _round_uint8(out) if image.dtype == np.uint8 else out


def imresize_down(image: np.ndarray, factor: int) -> np.ndarray:
    """`image` down-sampled by the integer `factor` as MATLAB's imresize(image, 1/factor, 'bicubic')

    image: (H, W) or (H, W, C), uint8 or float; H and W must be multiples of `factor` (crop the
    HR image first: iPASSR crops to floor(H / s) * s). Returns (H / factor, W / factor[, C]):
    uint8 for uint8 input (rounded after each pass, as MATLAB), else float64.
    """
    image = np.asarray(image)
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f'factor must be a positive int, got {factor!r}')
    if image.ndim not in (2, 3):
        raise ValueError(f'image must be (H, W) or (H, W, C), got shape {image.shape}')
    height, width = image.shape[:2]
    if height % factor or width % factor:
        raise ValueError(f'image size {height}x{width} is not a multiple of the factor {factor}; '
                         'crop it first (crop_to_multiple)')
    if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f'image dtype must be uint8 or float, got {image.dtype}')
    if factor == 1:
        return image.copy()
    scale = 1.0 / factor
    out = _resize_axis(image, 0, height // factor, scale)  # rows first (MATLAB's order on a tie)
    return _resize_axis(out, 1, width // factor, scale)


def imresize_up(image: np.ndarray, factor: int) -> np.ndarray:
    """`image` up-sampled by the integer `factor` as MATLAB's imresize(image, factor, 'bicubic').

    The super-resolution literature's "bicubic" baseline: Keys' cubic (a = -0.5) at MATLAB's sample
    positions, edges mirrored (no antialiasing when enlarging). image: (H, W) or (H, W, C) float;
    returns (factor*H, factor*W[, C]) float64, not clipped.
    """
    image = np.asarray(image)
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f'factor must be a positive int, got {factor!r}')
    if image.ndim not in (2, 3) or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f'image must be a float (H, W) or (H, W, C) array, got {image.dtype} {image.shape}')
    if factor == 1:
        return image.astype(np.float64)
    out = _resize_axis(image, 0, image.shape[0] * factor, float(factor))
    return _resize_axis(out, 1, image.shape[1] * factor, float(factor))


def crop_to_multiple(image: np.ndarray, factor: int) -> np.ndarray:
    """The top-left (floor(H / factor) * factor, floor(W / factor) * factor) part, as iPASSR."""
    height, width = image.shape[:2]
    return image[:height - height % factor, :width - width % factor]
