"""PSNR and SSIM as the original NAFNet code computes them (basicsr/metrics/psnr_ssim.py).

Every metric exists twice with one implementation: a NumPy version computed in
float64 on the host (`psnr`, `ssim`) and a jit-able JAX version (`psnr_jax`,
`ssim_jax`) computed in the input's dtype (float32 unless x64 is enabled; the
original's 3D SSIM itself ran in float32 on CUDA). Both are written once over
an array namespace `xp`, so they cannot drift apart.

Conventions:
  * images are (H, W, C), channel last, **RGB** (the original's arrays are BGR;
    only the Y conversion cares, and its coefficients are reordered to match);
  * values are on the scale of `peak`: [0, 255] (uint8 protocol) or [0, 1]
    (float protocol);
  * `peak=None` applies the original's rule `1 if img1.max() <= 1 else 255`
    (img1 = the restored image). Note the rule misfires on a nearly black uint8
    image, so the evaluation protocols below pass the peak explicitly.

SSIM kinds:
  * '3d' (default, the published numbers): one 11x11x11 Gaussian window (sigma
    1.5, separable, the values of cv2.getGaussianKernel(11, 1.5)) over H, W and
    C, edge-replicated padding of 5 in all three dims, mean over the full map;
  * 'standard': Wang et al.'s SSIM per channel (11x11 Gaussian, only the 'valid'
    region where the window fits; basicsr's `_ssim`), mean over channels; equal
    to scikit-image's SSIM with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False;
  * 'y': the original's `test_y_channel` SSIM (`_ssim_cly`): the Y channel, a
    2D Gaussian with replicated borders, mean over the full map. It equals
    '3d' on the one-channel Y image (the channel window sums to one over
    replicated values), which is how it is computed here.

The two evaluation protocols (`prepare`):
  * 'uint8' (GoPro, REDS): clip to [0, 1], x255, round, as uint8 (tensor2img),
    peak 255;
  * 'float' (SIDD): the clipped float image, peak 1.

Stereo SR (NAFSSR, NAFNET.md 2.4) has its own fixed protocol on 6-channel
(H, W, 6) images, channels 0..2 the left view and 3..5 the right one, both
quantised to uint8 first (`measure_stereo`):
  * `stereo_psnr`: the mean of the left and right views' PSNRs (basicsr's
    `calculate_psnr` on a 6-channel image);
  * `stereo_ssim`: scikit-image's SSIM on the whole 6-channel image
    (`calculate_skimage_ssim`: 7x7 uniform window, per channel, mean over the
    6 channels), data_range 255.
Both are invariant to the channel order within a view (RGB or BGR alike).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SSIM_KINDS = ("3d", "standard", "y")
PROTOCOLS = ("uint8", "float")
GAUSSIAN_SIZE = 11
GAUSSIAN_SIGMA = 1.5
# ITU-R BT.601 luma (MATLAB rgb2ycbcr): Y = 16 + (65.481 R + 128.553 G + 24.966 B), R,G,B in [0, 1].
Y_COEFFS_RGB = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0


def gaussian_kernel_1d(size: int = GAUSSIAN_SIZE, sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """The normalised 1D Gaussian, as cv2.getGaussianKernel(size, sigma) (float64, (size,))."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


# ---------------------------------------------------------------------------
# Shared implementation over an array namespace (numpy or jax.numpy).
# ---------------------------------------------------------------------------

def _filter_axis(xp: Any, x: Any, kernel: np.ndarray, axis: int, replicate: bool) -> Any:
    """Correlates `x` with a symmetric 1D kernel along `axis`.

    replicate=True: edge-replicated padding, output the size of the input;
    replicate=False: 'valid' region only (size - len(kernel) + 1).
    """
    radius = len(kernel) // 2
    if replicate:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        x = xp.pad(x, pad, mode="edge")
    n = x.shape[axis] - 2 * radius
    index = [slice(None)] * x.ndim
    out = 0
    for i, weight in enumerate(kernel):
        index[axis] = slice(i, i + n)
        out = out + float(weight) * x[tuple(index)]
    return out


def _gaussian_filter(xp: Any, x: Any, axes: Tuple[int, ...], replicate: bool) -> Any:
    kernel = gaussian_kernel_1d()
    for axis in axes:
        x = _filter_axis(xp, x, kernel, axis, replicate)
    return x


def _ssim_mean(xp: Any, a: Any, b: Any, peak: Any, filt: Callable[[Any], Any]) -> Any:
    """Mean SSIM map (Wang et al. 2004, K1=0.01, K2=0.03).

    `filt` computes local means of a stack (5, H, W, C) along its image axes.
    """
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    # One filter pass over the five stacked maps (a small graph: jit compiles it quickly).
    mu1, mu2, e11, e22, e12 = filt(xp.stack([a, b, a * a, b * b, a * b]))
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = e11 - mu1_sq
    sigma2_sq = e22 - mu2_sq
    sigma12 = e12 - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return xp.mean(ssim_map)


def _rgb_to_y(xp: Any, img: Any, peak: Any) -> Any:
    """(H, W, 3) RGB on the scale of `peak` -> (H, W, 1) BT.601 luma on the same scale."""
    r, g, b = img[..., 0:1], img[..., 1:2], img[..., 2:3]
    weighted = Y_COEFFS_RGB[0] * r + Y_COEFFS_RGB[1] * g + Y_COEFFS_RGB[2] * b
    return (Y_OFFSET * peak + weighted) / 255.0


def _check_pair(img1: Any, img2: Any) -> None:
    if img1.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img1.shape} vs {img2.shape}")
    if img1.ndim != 3:
        raise ValueError(f"expected (H, W, C) images, got shape {img1.shape}")


def _crop(img: Any, crop_border: int) -> Any:
    if crop_border == 0:
        return img
    return img[crop_border:-crop_border, crop_border:-crop_border, :]


def _to_y_if(xp: Any, img: Any, peak: Any, test_y_channel: bool) -> Any:
    if not test_y_channel:
        return img
    if img.shape[-1] != 3:
        raise ValueError(f"test_y_channel needs 3-channel RGB images, got shape {img.shape}")
    return _rgb_to_y(xp, img, peak)


def _psnr_impl(xp: Any, img1: Any, img2: Any, peak: Any, crop_border: int, test_y_channel: bool) -> Any:
    img1, img2 = _crop(img1, crop_border), _crop(img2, crop_border)
    img1, img2 = _to_y_if(xp, img1, peak, test_y_channel), _to_y_if(xp, img2, peak, test_y_channel)
    diff = img1 - img2
    mse = xp.mean(diff * diff)
    return 20.0 * xp.log10(peak / xp.sqrt(mse))


def _ssim_impl(xp: Any, img1: Any, img2: Any, peak: Any, kind: str, crop_border: int,
               test_y_channel: bool) -> Any:
    if kind not in SSIM_KINDS:
        raise ValueError(f"ssim kind {kind!r}; expected one of {SSIM_KINDS}")
    img1, img2 = _crop(img1, crop_border), _crop(img2, crop_border)
    if kind == "y":
        kind, test_y_channel = "3d", True
    img1, img2 = _to_y_if(xp, img1, peak, test_y_channel), _to_y_if(xp, img2, peak, test_y_channel)
    if kind == "3d":
        def filt(x):
            return _gaussian_filter(xp, x, (1, 2, 3), replicate=True)
    else:
        if min(img1.shape[:2]) < GAUSSIAN_SIZE:
            raise ValueError(f"standard SSIM needs H, W >= {GAUSSIAN_SIZE} (valid region), "
                             f"got {img1.shape[:2]} after cropping")

        def filt(x):
            return _gaussian_filter(xp, x, (1, 2), replicate=False)
    return _ssim_mean(xp, img1, img2, peak, filt)


# ---------------------------------------------------------------------------
# NumPy (float64, host) API.
# ---------------------------------------------------------------------------

def default_peak(img1: Any) -> float:
    """The original's peak rule: 1 if the (restored) image's max is <= 1, else 255."""
    return 1.0 if float(np.max(img1)) <= 1 else 255.0


def psnr(img1: Any, img2: Any, *, peak: Optional[float] = None, crop_border: int = 0,
         test_y_channel: bool = False) -> float:
    """PSNR in dB, computed in float64 over all pixels and channels.

    Args:
      img1: (H, W, C) restored image (RGB), any real dtype.
      img2: (H, W, C) reference image, same shape.
      peak: the maximum value (1 or 255); None applies `default_peak(img1)`.
      crop_border: pixels dropped at each edge before measuring.
      test_y_channel: measure the BT.601 Y channel only (needs C = 3).
    Returns:
      the PSNR; inf for identical images.
    """
    _check_pair(img1, img2)
    peak = default_peak(img1) if peak is None else float(peak)
    a, b = np.asarray(img1, np.float64), np.asarray(img2, np.float64)
    with np.errstate(divide="ignore"):  # mse == 0 (identical images) -> inf, as the original
        return float(_psnr_impl(np, a, b, peak, crop_border, test_y_channel))


def ssim(img1: Any, img2: Any, *, kind: str = "3d", peak: Optional[float] = None, crop_border: int = 0,
         test_y_channel: bool = False) -> float:
    """SSIM in float64 (see the module docstring for the kinds).

    Args:
      img1: (H, W, C) restored image (RGB).
      img2: (H, W, C) reference image, same shape.
      kind: '3d' (published), 'standard' (per channel, valid region) or 'y'.
      peak: the maximum value; None applies `default_peak(img1)`.
      crop_border: pixels dropped at each edge before measuring.
      test_y_channel: measure on the Y channel (kind 'y' implies it).
    Returns:
      the mean SSIM, at most 1.
    """
    _check_pair(img1, img2)
    peak = default_peak(img1) if peak is None else float(peak)
    a, b = np.asarray(img1, np.float64), np.asarray(img2, np.float64)
    return float(_ssim_impl(np, a, b, peak, kind, crop_border, test_y_channel))


def prepare(img: Any, protocol: str) -> Tuple[np.ndarray, float]:
    """Puts a float image in [0, 1]-ish range into a protocol's measuring form.

    Args:
      img: (H, W, C) float image (a model output, not yet clipped).
      protocol: 'uint8' -> (uint8 array: clip, x255, round half to even, as the
        original's tensor2img in float32), peak 255; 'float' -> (the clipped
        float32 image), peak 1.
    Returns:
      (image, peak).
    """
    img = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
    if protocol == "uint8":
        return np.round(img * np.float32(255.0)).astype(np.uint8), 255.0
    if protocol == "float":
        return img, 1.0
    raise ValueError(f"protocol {protocol!r}; expected one of {PROTOCOLS}")


def measure(restored: Any, target: Any, *, protocol: str = "uint8", ssim_kind: str = "3d",
            crop_border: int = 0, test_y_channel: bool = False) -> Dict[str, float]:
    """PSNR and SSIM of one image pair under an evaluation protocol (host, float64).

    Args:
      restored, target: (H, W, C) float images, [0, 1] range (restored may overshoot).
    Returns:
      {'psnr': dB, 'ssim': mean SSIM}.
    """
    a, peak = prepare(restored, protocol)
    b, _ = prepare(target, protocol)
    return {"psnr": psnr(a, b, peak=peak, crop_border=crop_border, test_y_channel=test_y_channel),
            "ssim": ssim(a, b, kind=ssim_kind, peak=peak, crop_border=crop_border,
                         test_y_channel=test_y_channel)}


# ---------------------------------------------------------------------------
# Stereo SR (NAFSSR): 6-channel left/right pairs, host NumPy/scikit-image.
# ---------------------------------------------------------------------------

STEREO_CHANNELS = 6
SKIMAGE_SSIM_WINDOW = 7  # scikit-image's default win_size (uniform window)


def _check_stereo_pair(sr: Any, hr: Any) -> None:
    if np.shape(sr) != np.shape(hr):
        raise ValueError(f"stereo image shapes differ: {np.shape(sr)} vs {np.shape(hr)}")
    if np.ndim(sr) != 3 or np.shape(sr)[-1] != STEREO_CHANNELS:
        raise ValueError(f"expected (H, W, 6) stereo images (left view in channels 0..2, right in 3..5), "
                         f"got shape {np.shape(sr)}")


def stereo_psnr(sr: Any, hr: Any, *, peak: Optional[float] = 255.0, crop_border: int = 0) -> float:
    """Stereo PSNR: the mean of the left and right views' PSNRs (float64, dB).

    Args:
      sr: (H, W, 6) restored pair, on the scale of `peak` (uint8 values for the NAFSSR protocol).
      hr: (H, W, 6) reference pair, same shape.
      peak: the maximum value; None applies the original's rule (`default_peak`) to each view.
      crop_border: pixels dropped at each edge before measuring.
    Returns:
      (PSNR_left + PSNR_right) / 2; inf if either view is identical to its reference.
    """
    _check_stereo_pair(sr, hr)
    sr, hr = np.asarray(sr), np.asarray(hr)
    return (psnr(sr[..., :3], hr[..., :3], peak=peak, crop_border=crop_border)
            + psnr(sr[..., 3:], hr[..., 3:], peak=peak, crop_border=crop_border)) / 2.0


def stereo_ssim(sr: Any, hr: Any, *, data_range: float = 255.0) -> float:
    """Stereo SSIM: scikit-image's `structural_similarity` on the whole (H, W, 6) image.

    scikit-image defaults otherwise (7x7 uniform window, sample covariance), i.e. the mean
    over the six channels of each channel's SSIM, as the original's `calculate_skimage_ssim`
    (its `multichannel=True` is today's `channel_axis=-1`).

    Args:
      sr, hr: (H, W, 6) pairs on the scale of `data_range`; H, W >= 7.
    """
    _check_stereo_pair(sr, hr)
    if min(np.shape(sr)[:2]) < SKIMAGE_SSIM_WINDOW:
        raise ValueError(f"stereo SSIM needs H, W >= {SKIMAGE_SSIM_WINDOW} (scikit-image's window), "
                         f"got {np.shape(sr)[:2]}")
    from skimage.metrics import structural_similarity
    return float(structural_similarity(np.asarray(sr), np.asarray(hr), channel_axis=-1,
                                       data_range=float(data_range)))


def measure_stereo(restored: Any, target: Any, *, crop_border: int = 0) -> Dict[str, float]:
    """PSNR and SSIM of one stereo pair under the NAFSSR protocol.

    Both images are quantised as the original's tensor2img (`prepare(., 'uint8')`: clip to
    [0, 1], x255, round), then scored with `stereo_psnr` (peak 255) and `stereo_ssim`.

    Args:
      restored, target: (H, W, 6) float pairs in [0, 1] (restored may overshoot).
      crop_border: pixels dropped at each edge (PSNR and SSIM; the published numbers use 0).
    Returns:
      {'psnr': dB, 'ssim': mean SSIM}.
    """
    _check_stereo_pair(restored, target)
    a, peak = prepare(restored, "uint8")
    b, _ = prepare(target, "uint8")
    a, b = _crop(a, crop_border), _crop(b, crop_border)
    return {"psnr": stereo_psnr(a, b, peak=peak), "ssim": stereo_ssim(a, b, data_range=peak)}


# ---------------------------------------------------------------------------
# JAX (jit-able) API: same definitions, computed in the input dtype.
# ---------------------------------------------------------------------------

def default_peak_jax(img1: jax.Array) -> jax.Array:
    """`default_peak` as a traced value."""
    return jnp.where(jnp.max(img1) <= 1, 1.0, 255.0).astype(jnp.result_type(float))


def _as_float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def psnr_jax(img1: Any, img2: Any, peak: Optional[Any] = None, crop_border: int = 0,
             test_y_channel: bool = False) -> jax.Array:
    """`psnr` for jit (crop_border and test_y_channel static); inf for identical images."""
    _check_pair(img1, img2)
    a, b = _as_float(img1), _as_float(img2)
    peak = default_peak_jax(a) if peak is None else peak
    return _psnr_impl(jnp, a, b, peak, crop_border, test_y_channel)


def ssim_jax(img1: Any, img2: Any, kind: str = "3d", peak: Optional[Any] = None, crop_border: int = 0,
             test_y_channel: bool = False) -> jax.Array:
    """`ssim` for jit (kind, crop_border and test_y_channel static)."""
    _check_pair(img1, img2)
    a, b = _as_float(img1), _as_float(img2)
    peak = default_peak_jax(a) if peak is None else peak
    return _ssim_impl(jnp, a, b, peak, kind, crop_border, test_y_channel)


def prepare_jax(img: Any, protocol: str) -> Tuple[jax.Array, float]:
    """`prepare` for jit: the uint8 protocol returns the rounded values as floats."""
    img = jnp.clip(jnp.asarray(img, jnp.float32), 0.0, 1.0)
    if protocol == "uint8":
        return jnp.round(img * 255.0), 255.0
    if protocol == "float":
        return img, 1.0
    raise ValueError(f"protocol {protocol!r}; expected one of {PROTOCOLS}")


def measure_jax(restored: Any, target: Any, protocol: str = "uint8", ssim_kind: str = "3d",
                crop_border: int = 0, test_y_channel: bool = False) -> Dict[str, jax.Array]:
    """`measure` for jit (every argument after the images static)."""
    a, peak = prepare_jax(restored, protocol)
    b, _ = prepare_jax(target, protocol)
    return {"psnr": psnr_jax(a, b, peak, crop_border, test_y_channel),
            "ssim": ssim_jax(a, b, ssim_kind, peak, crop_border, test_y_channel)}
