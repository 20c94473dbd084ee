"""PSNR/SSIM match the original's definitions (hand-worked cases, scikit-image, SciPy, loops)."""

import math

import jax
import numpy as np
import pytest
import scipy.ndimage
from skimage.metrics import structural_similarity

from nafnet_jax.evaluation import metrics

# cv2.getGaussianKernel(11, 1.5) as printed by OpenCV (the values every SSIM port quotes).
CV2_GAUSSIAN_11_15 = [0.00102838, 0.00759876, 0.03600077, 0.10936069, 0.21300554, 0.26601172,
                      0.21300554, 0.10936069, 0.03600077, 0.00759876, 0.00102838]


def _pair(shape=(19, 23, 3), seed=0, noise=12.0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(a + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return a, b


def _ssim_from_stats(mu1, mu2, s11, s22, s12, peak):
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    return ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))


def _ssim_with_scipy_nearest(a, b, peak):
    """SSIM with a Gaussian (sigma 1.5, radius 5) and edge-replicated borders in every dim."""
    def f(x):
        return scipy.ndimage.gaussian_filter(x, sigma=1.5, mode="nearest", truncate=3.5)
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = f(a), f(b)
    return _ssim_from_stats(mu1, mu2, f(a * a) - mu1 ** 2, f(b * b) - mu2 ** 2, f(a * b) - mu1 * mu2,
                            peak).mean()


# --- the Gaussian window -------------------------------------------------------------------

def test_gaussian_kernel_is_opencvs():
    np.testing.assert_allclose(metrics.gaussian_kernel_1d(11, 1.5), CV2_GAUSSIAN_11_15, atol=5e-9,
                               err_msg="window differs from cv2.getGaussianKernel(11, 1.5)")


# --- PSNR ----------------------------------------------------------------------------------

def test_psnr_hand_worked_float_peak_one():
    a = np.zeros((4, 5, 3), np.float32)
    b = np.full((4, 5, 3), 0.1, np.float32)
    # mse = 0.01 (in float64 of float32(0.1)), so 20 log10(1 / 0.1) = 20 dB.
    expected = 20 * math.log10(1 / float(np.float32(0.1)))
    assert metrics.psnr(a, b) == pytest.approx(expected, abs=1e-9)


def test_psnr_hand_worked_uint8_peak_255():
    a = np.full((3, 3, 3), 100, np.uint8)
    b = np.full((3, 3, 3), 105, np.uint8)
    assert metrics.psnr(b, a) == pytest.approx(20 * math.log10(255 / 5), abs=1e-12)


def test_psnr_default_peak_follows_the_originals_rule():
    a = np.full((3, 3, 3), 0.5)
    b = np.full((3, 3, 3), 0.4)
    # img1.max() <= 1 -> peak 1; a restored image above 1 switches the peak to 255.
    assert metrics.psnr(a, b) == pytest.approx(20.0, abs=1e-9)
    a[0, 0, 0] = 1.5
    mse = (1.1 ** 2 + 26 * 0.1 ** 2) / 27
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(255 / math.sqrt(mse)), abs=1e-9)


def test_psnr_explicit_peak_overrides_the_rule():
    a, b = np.full((2, 2, 3), 0.5), np.full((2, 2, 3), 0.4)
    assert metrics.psnr(a, b, peak=255) == pytest.approx(20 * math.log10(255 / 0.1), abs=1e-9)


def test_psnr_identical_images_is_infinite():
    a, _ = _pair()
    assert metrics.psnr(a, a.copy()) == math.inf


def test_psnr_crop_border_ignores_the_border():
    a = np.full((10, 10, 3), 50, np.uint8)
    b = a.copy()
    b[:2] = 0  # differences only in the top two rows
    b[5, 5] = 60
    cropped = metrics.psnr(a, b, crop_border=2)
    expected = 20 * math.log10(255 / math.sqrt(3 * 10 ** 2 / (6 * 6 * 3)))
    assert cropped == pytest.approx(expected, abs=1e-9)


def test_y_channel_of_white_black_and_red_is_bt601():
    img = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.float64)
    y = metrics._rgb_to_y(np, img, 255.0)
    np.testing.assert_allclose(y[..., 0], [[235.0, 16.0, 16 + 65.481]], atol=1e-9,
                               err_msg="Y of (white, black, red) is not MATLAB rgb2ycbcr's")


def test_psnr_on_y_channel_hand_worked():
    a = np.full((4, 4, 3), 100, np.uint8)
    b = np.full((4, 4, 3), 110, np.uint8)
    # a grey step of 10 moves Y by 10 * (65.481 + 128.553 + 24.966) / 255 = 10 * 219 / 255.
    expected = 20 * math.log10(255 / (10 * 219 / 255))
    assert metrics.psnr(a, b, test_y_channel=True) == pytest.approx(expected, abs=1e-9)


def test_psnr_rejects_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


# --- SSIM ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", metrics.SSIM_KINDS)
def test_ssim_of_constant_images_is_the_luminance_term(kind):
    p, q = 100.0, 140.0
    a = np.full((12, 13, 3), p)
    b = np.full((12, 13, 3), q)
    if kind == "y":  # Y of a grey level g is 16 + g * 219 / 255
        p, q = 16 + p * 219 / 255, 16 + q * 219 / 255
    c1 = (0.01 * 255) ** 2
    expected = (2 * p * q + c1) / (p * p + q * q + c1)
    assert metrics.ssim(a, b, kind=kind) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", metrics.SSIM_KINDS)
def test_ssim_of_an_image_with_itself_is_one(kind):
    a, _ = _pair()
    assert metrics.ssim(a, a, kind=kind) == pytest.approx(1.0, abs=1e-12)


def test_ssim_3d_matches_a_direct_triple_loop():
    """The 11x11x11 window applied by brute force on a replicate-padded tiny volume."""
    rng = np.random.default_rng(1)
    a = rng.random((5, 6, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    k = metrics.gaussian_kernel_1d()
    window = k[:, None, None] * k[None, :, None] * k[None, None, :]
    pa, pb = np.pad(a, 5, mode="edge"), np.pad(b, 5, mode="edge")
    total = 0.0
    for i in range(5):
        for j in range(6):
            for c in range(3):
                wa, wb = pa[i:i + 11, j:j + 11, c:c + 11], pb[i:i + 11, j:j + 11, c:c + 11]
                mu1, mu2 = (window * wa).sum(), (window * wb).sum()
                s11 = (window * wa * wa).sum() - mu1 ** 2
                s22 = (window * wb * wb).sum() - mu2 ** 2
                s12 = (window * wa * wb).sum() - mu1 * mu2
                total += _ssim_from_stats(mu1, mu2, s11, s22, s12, 1.0)
    expected = total / (5 * 6 * 3)
    assert metrics.ssim(a, b, kind="3d", peak=1.0) == pytest.approx(expected, abs=1e-12)


def test_ssim_3d_matches_scipy_gaussian_with_nearest_borders():
    a, b = _pair((21, 17, 3))
    expected = _ssim_with_scipy_nearest(a, b, 255.0)
    assert metrics.ssim(a, b, kind="3d") == pytest.approx(expected, abs=1e-12)


def test_ssim_standard_equals_scikit_image_gaussian_ssim_uint8():
    a, b = _pair((24, 27, 3))
    expected = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=-1)
    assert metrics.ssim(a, b, kind="standard") == pytest.approx(expected, abs=1e-12)


def test_ssim_standard_equals_scikit_image_on_floats_with_peak_one():
    a, b = _pair((16, 20, 3), seed=3)
    a, b = a / 255.0, b / 255.0
    expected = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1)
    assert metrics.ssim(a, b, kind="standard", peak=1.0) == pytest.approx(expected, abs=1e-12)


def test_ssim_y_is_the_2d_replicate_gaussian_on_the_y_channel():
    """The original's test_y_channel SSIM (`_ssim_cly`): Y, 2D window, replicated borders, full map."""
    a, b = _pair((15, 18, 3), seed=4)
    ya = 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255
    yb = 16 + (65.481 * b[..., 0] + 128.553 * b[..., 1] + 24.966 * b[..., 2]) / 255
    expected = _ssim_with_scipy_nearest(ya, yb, 255.0)
    assert metrics.ssim(a, b, kind="y") == pytest.approx(expected, abs=1e-12)


def test_ssim_3d_mixes_channels_unlike_per_channel_ssim():
    """Noise in the red channel only: the 3D window spreads it into the other channels' statistics."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
    b = a.copy()
    b[..., 0] = np.clip(a[..., 0] + rng.normal(0, 40, (24, 24)), 0, 255)
    three_d, standard = metrics.ssim(a, b, kind="3d"), metrics.ssim(a, b, kind="standard")
    assert standard - three_d > 3e-3, f"3d {three_d} should be clearly below standard {standard}"


def test_ssim_standard_needs_a_window_sized_image():
    a, b = _pair((10, 30, 3))
    with pytest.raises(ValueError, match="H, W >= 11"):
        metrics.ssim(a, b, kind="standard")


# --- protocols -----------------------------------------------------------------------------

def test_uint8_protocol_clips_scales_and_rounds():
    img = np.array([[[-0.3, 0.2, 1.7], [0.002, 0.999, 0.5]]], np.float32)
    q, peak = metrics.prepare(img, "uint8")
    assert q.dtype == np.uint8 and peak == 255.0
    np.testing.assert_array_equal(q, [[[0, 51, 255], [1, 255, 128]]])


def test_float_protocol_clips_and_keeps_floats():
    img = np.array([[[-0.3, 0.2, 1.7]]], np.float32)
    f, peak = metrics.prepare(img, "float")
    assert peak == 1.0
    np.testing.assert_array_equal(f, [[[0.0, np.float32(0.2), 1.0]]])


def test_measure_uint8_protocol_is_psnr_of_the_quantised_images():
    rng = np.random.default_rng(6)
    gt = rng.random((12, 12, 3)).astype(np.float32)
    out = gt + rng.normal(0, 0.02, gt.shape).astype(np.float32)
    qa = np.round(np.clip(out, 0, 1) * np.float32(255)).astype(np.float64)
    qb = np.round(gt * np.float32(255)).astype(np.float64)
    expected = 20 * math.log10(255 / math.sqrt(np.mean((qa - qb) ** 2)))
    got = metrics.measure(out, gt, protocol="uint8")
    assert got["psnr"] == pytest.approx(expected, abs=1e-9)
    assert got["psnr"] != pytest.approx(metrics.measure(out, gt, protocol="float")["psnr"], abs=1e-3)


# --- JAX agrees with NumPy -----------------------------------------------------------------

@pytest.mark.parametrize("test_y_channel", [False, True])
def test_psnr_jax_under_jit_agrees_with_numpy(test_y_channel):
    a, b = _pair((13, 17, 3))
    fn = jax.jit(metrics.psnr_jax, static_argnames=("crop_border", "test_y_channel"))
    got = float(fn(a, b, 255.0, crop_border=1, test_y_channel=test_y_channel))
    want = metrics.psnr(a, b, peak=255.0, crop_border=1, test_y_channel=test_y_channel)
    assert got == pytest.approx(want, abs=1e-4), f"jax {got} vs numpy {want}"


def test_psnr_jax_applies_the_default_peak_rule_when_traced():
    a, b = _pair((8, 8, 3))
    a, b = a / 255.0, b / 255.0
    got = float(jax.jit(metrics.psnr_jax)(a, b))
    assert got == pytest.approx(metrics.psnr(a, b), abs=1e-4)


@pytest.mark.parametrize("kind", metrics.SSIM_KINDS)
def test_ssim_jax_under_jit_agrees_with_numpy(kind):
    a, b = _pair((16, 19, 3), seed=7)
    fn = jax.jit(metrics.ssim_jax, static_argnames=("kind", "crop_border", "test_y_channel"))
    got = float(fn(a, b, kind=kind, peak=255.0))
    want = metrics.ssim(a, b, kind=kind, peak=255.0)
    assert got == pytest.approx(want, abs=2e-6), f"{kind}: jax {got} vs numpy {want}"


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_measure_jax_agrees_with_numpy(protocol):
    rng = np.random.default_rng(8)
    gt = rng.random((14, 15, 3)).astype(np.float32)
    out = gt + rng.normal(0, 0.05, gt.shape).astype(np.float32)
    got = jax.jit(metrics.measure_jax, static_argnames=("protocol", "ssim_kind", "crop_border",
                                                        "test_y_channel"))(out, gt, protocol=protocol)
    want = metrics.measure(out, gt, protocol=protocol)
    assert float(got["psnr"]) == pytest.approx(want["psnr"], abs=1e-4)
    assert float(got["ssim"]) == pytest.approx(want["ssim"], abs=2e-6)
