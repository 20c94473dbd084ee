"""Synthetic degradations: kernels, filters, noise, JPEG, seeding and config validation."""

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from nafnet_jax.data import degradations
from nafnet_jax.data.degradations import parse_degradation


def _seed(i):
    return tf.constant([7, i], tf.int64)


def test_horizontal_motion_kernel_is_a_flat_line_of_length_plus_one_taps():
    k = degradations.motion_kernel(6.0, 0.0, 11).numpy()
    expected = np.zeros((11, 11), np.float32)
    expected[5, 2:9] = 1 / 7  # the segment x in [-3, 3] covers 7 pixel centres
    np.testing.assert_allclose(k, expected, atol=1e-6)


def test_vertical_motion_kernel_is_the_transpose_of_the_horizontal_one():
    k0 = degradations.motion_kernel(6.0, 0.0, 11).numpy()
    k90 = degradations.motion_kernel(6.0, np.pi / 2, 11).numpy()
    np.testing.assert_allclose(k90, k0.T, atol=1e-6)


@pytest.mark.parametrize('angle', [0.3, 1.1, 2.5])
def test_motion_kernel_is_normalised_and_point_symmetric(angle):
    k = degradations.motion_kernel(9.0, angle, 13).numpy()
    assert abs(k.sum() - 1) < 1e-5
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-6)


def test_defocus_kernel_is_a_normalised_disc():
    k = degradations.defocus_kernel(2.0, 9).numpy()
    y, x = np.mgrid[-4:5, -4:5]
    d = np.hypot(y, x)
    assert abs(k.sum() - 1) < 1e-5
    assert np.all(k[d >= 2.5] == 0), 'weight outside radius + 0.5'
    inner = k[d <= 1.5]
    np.testing.assert_allclose(inner, inner.max(), err_msg='taps inside the disc differ')
    np.testing.assert_allclose(k, k.T, atol=1e-7)


def test_blur_equals_scipy_correlate_with_mirror_borders():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (9, 11, 3)).astype(np.float32)
    kernel = degradations.motion_kernel(4.0, 0.6, 5).numpy()
    got = degradations.blur(tf.constant(image), tf.constant(kernel)).numpy()
    expected = np.stack([scipy.ndimage.correlate(image[..., c].astype(np.float64), kernel,
                                                 mode='mirror') for c in range(3)], -1)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_gaussian_noise_has_the_requested_sigma_and_zero_mean():
    image = tf.fill([64, 64, 3], 128.0)
    noisy = degradations.gaussian_noise(image, 25.0, _seed(0)).numpy() - 128
    assert abs(noisy.mean()) < 1.0, noisy.mean()
    assert abs(noisy.std() - 25) < 1.0, noisy.std()


def test_jpeg_error_grows_as_quality_drops():
    rng = np.random.default_rng(2)
    image = tf.constant(rng.uniform(0, 255, (32, 32, 3)).astype(np.float32))
    err = {q: float(tf.reduce_mean(tf.abs(degradations.jpeg(image, q) - image)))
           for q in (95, 30, 5)}
    assert err[95] < err[30] < err[5], err


def test_degrade_is_a_function_of_the_seed():
    spec = parse_degradation({'blur': {}, 'noise': {'sigma': (0, 50)}, 'jpeg': {}})
    image = tf.constant(np.random.default_rng(3).uniform(0, 255, (24, 24, 3)).astype(np.float32))
    a = degradations.degrade(image, spec, _seed(5)).numpy()
    b = degradations.degrade(image, spec, _seed(5)).numpy()
    c = degradations.degrade(image, spec, _seed(6)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), 'different seeds gave the same degradation'


def test_quantized_output_is_8bit_valued():
    spec = parse_degradation({'noise': {'sigma': 80.0}})
    out = degradations.degrade(tf.fill([8, 8, 3], 250.0), spec, _seed(0)).numpy()
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))


def test_unquantized_noise_is_left_unclipped():
    spec = parse_degradation({'noise': {'sigma': 80.0}, 'quantize': False})
    out = degradations.degrade(tf.fill([8, 8, 3], 250.0), spec, _seed(0)).numpy()
    assert out.max() > 255


def test_step_with_prob_zero_is_never_applied():
    spec = parse_degradation({'noise': {'sigma': 30.0, 'prob': 0.0}})
    image = tf.fill([8, 8, 3], 100.0)
    for i in range(5):
        np.testing.assert_array_equal(degradations.degrade(image, spec, _seed(i)).numpy(), 100.0)


def test_step_with_prob_half_is_applied_to_some_and_not_others():
    spec = parse_degradation({'noise': {'sigma': 30.0, 'prob': 0.5}})
    image = tf.fill([8, 8, 3], 100.0)
    applied = [not np.all(degradations.degrade(image, spec, _seed(i)).numpy() == 100)
               for i in range(40)]
    assert 5 < sum(applied) < 35, sum(applied)


def test_blur_margin_is_the_kernel_radius():
    assert parse_degradation({'blur': {'kernel_size': 15, 'motion_length': (3, 9),
                                       'defocus_radius': (1, 3)}}).margin == 7
    assert parse_degradation({'noise': {'sigma': 5}}).margin == 0


def test_empty_or_none_config_means_no_degradation():
    assert parse_degradation(None) is None
    assert parse_degradation({}) is None
    assert parse_degradation({'noise': None}) is None


@pytest.mark.parametrize('config,key', [
    ({'nosie': {'sigma': 1}}, r"data.degradation: unknown key\(s\) \['nosie'\]"),
    ({'noise': {}}, 'data.degradation.noise.sigma is required'),
    ({'noise': {'sigma': (5, 1)}}, 'data.degradation.noise.sigma: low 5.0 > high 1.0'),
    ({'noise': {'sigma': -1}}, 'data.degradation.noise.sigma must be >= 0'),
    ({'blur': {'kernel_size': 4}}, 'data.degradation.blur.kernel_size must be an odd int'),
    ({'blur': {'kinds': ('gauss',)}}, 'data.degradation.blur.kinds'),
    ({'blur': {'kernel_size': 7}}, 'data.degradation.blur.motion_length must lie in'),
    ({'jpeg': {'quality': (0, 90)}}, r'data.degradation.jpeg.quality must lie in \[1, 100\]'),
    ({'jpeg': {}, 'noise': {'sigma': 1}, 'order': ('noise',)}, 'leaves out enabled step'),
    ({'noise': {'sigma': 1, 'prob': 2}}, 'data.degradation.noise.prob must be in'),
    ({'noise': {'sigma': 1}, 'source': 'clean'}, 'data.degradation.source'),
])
def test_bad_degradation_config_names_the_key(config, key):
    with pytest.raises(ValueError, match=key):
        parse_degradation(config)
