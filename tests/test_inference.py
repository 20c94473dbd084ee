"""Inference: exact/bucketed/tiled restoration, blending geometry, x8 self-ensemble."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nafnet_jax.evaluation import inference, metrics
from tiny_models import tiny_model_and_params

ALIGN = 2  # the tiny models have one encoder level: 2 ** 1


def _pointwise(params, x):
    return x * params["scale"] + 0.25


def _box_blur(params, x):
    """A 3x3 mean with replicated borders: commutes with every dihedral transform."""
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _scene(h, w, seed=0):
    """A smooth colour scene with a dark left half (so local and global means differ) + noise."""
    yy, xx = np.mgrid[0:h, 0:w] / 20.0
    gt = np.stack([0.5 + 0.4 * np.sin(yy + xx), 0.5 + 0.4 * np.cos(1.3 * yy), 0.5 + 0.3 * np.sin(0.7 * xx)], -1)
    gt[:, : w // 2] *= 0.3
    lq = gt + np.random.default_rng(seed).normal(0, 0.08, gt.shape)
    return gt.astype(np.float32), np.clip(lq, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def tlc_model():
    """A tiny NAFNetLocal (TLC kernels 24/12) with non-trivial beta/gamma, and its params."""
    model, params, _ = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    return model, params


@pytest.fixture(scope="module")
def scene_and_full(tlc_model):
    """A 64x58 scene (not multiples of 16; TLC local at both levels) and its whole-image restoration."""
    model, params = tlc_model
    gt, lq = _scene(64, 58)
    full = inference.Restorer(inference.model_apply_fn(model), params)(lq)
    return gt, lq, full


# --- exact and bucketed whole-image restoration ---------------------------------------------

def test_exact_mode_equals_the_model_on_the_whole_image(tlc_model):
    model, params = tlc_model
    x = _image(21, 30)
    got = inference.Restorer(inference.model_apply_fn(model), params)(x)
    want = np.asarray(jax.jit(model.apply)({"params": params}, x[None]))[0]
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg="exact mode differs from model.apply")


def test_exact_mode_compiles_once_per_shape():
    r = inference.Restorer(_pointwise, {"scale": 2.0})
    for h, w in [(9, 12), (9, 12), (10, 12)]:
        r(_image(h, w))
    assert r.trace_count == 2, f"expected 2 compilations for 2 shapes, got {r.trace_count}"


def test_bucket_compiles_once_for_all_sizes_within_it():
    r = inference.Restorer(_pointwise, {"scale": 2.0}, bucket=32)
    for h, w in [(17, 20), (30, 31), (32, 32), (25, 9)]:
        out = r(_image(h, w, seed=h))
        assert out.shape == (h, w, 3)
    assert r.trace_count == 1, f"4 sizes in one 32x32 bucket compiled {r.trace_count} times"


def test_bucket_mode_crops_back_the_right_pixels():
    x = _image(19, 27)
    got = inference.Restorer(_pointwise, {"scale": 2.0}, bucket=16)(x)
    np.testing.assert_allclose(got, x * 2.0 + 0.25, atol=1e-6)


def test_bucket_padding_keeps_the_models_own_zero_band():
    x = np.ones((5, 6, 1), np.float32)
    padded = inference.pad_bottom_right(x, 12, 12, mode="reflect", align=8)
    assert np.all(padded[5:8, :8] == 0) and np.all(padded[:8, 6:8] == 0), "zero band up to align"
    assert np.all(padded[8:, :] == 1) and np.all(padded[:, 8:] == 1), "reflected beyond the band"


# --- tiles -----------------------------------------------------------------------------------

def test_tile_starts_cover_align_and_overlap():
    starts = inference.tile_starts(112, 48, 16, align=16)
    assert starts == [0, 32, 64], starts
    assert all(s % 16 == 0 for s in starts) and starts[-1] + 48 == 112
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(48 - g >= 16 for g in gaps), f"overlaps {[48 - g for g in gaps]} below 16"


def test_tile_starts_reject_an_overlap_leaving_no_stride():
    with pytest.raises(ValueError, match="stride"):
        inference.tile_starts(64, 32, 20, align=16)


def test_blend_ramps_of_neighbouring_tiles_sum_to_one():
    ramp = inference.blend_ramp(40, 16, ramp_start=True, ramp_end=True)
    assert np.all(ramp > 0) and np.all(ramp[16:24] == 1)
    np.testing.assert_allclose(ramp[:16] + ramp[-16:], 1.0, atol=1e-6,
                               err_msg="falling and rising raised-cosine ramps are not complementary")


def test_tiled_pointwise_op_is_exact_everywhere():
    x = _image(50, 37)
    r = inference.Restorer(_pointwise, {"scale": 3.0}, tile=16, overlap=4, align=4, tile_batch=3)
    np.testing.assert_allclose(r(x), x * 3.0 + 0.25, atol=1e-5, err_msg="blend weights do not normalise")


def test_tiled_model_sees_only_tile_batches():
    """Device memory is bounded by the tile batch: the model never gets the whole image."""
    seen = []

    def spy(params, x):
        seen.append(x.shape)
        return x

    r = inference.Restorer(spy, {}, tile=16, overlap=4, align=4, tile_batch=2)
    r(_image(40, 70))
    r(_image(23, 18))
    assert seen == [(2, 16, 16, 3)], f"model calls were traced with shapes {seen}"


def test_tiled_tlc_model_is_within_005_db_of_whole_image(tlc_model, scene_and_full):
    model, params = tlc_model
    gt, lq, full = scene_and_full
    plain_model, _, _ = tiny_model_and_params(levels=1, tlc_train_size=None)
    plain = inference.Restorer(inference.model_apply_fn(plain_model), params)(lq)
    assert np.abs(full - plain).max() > 1e-3, "TLC should change this model's output"
    tiled = inference.Restorer(inference.model_apply_fn(model), params, tile=32, overlap=12, align=ALIGN)(lq)
    p_full = metrics.psnr(np.clip(full, 0, 1), gt, peak=1.0)
    p_tiled = metrics.psnr(np.clip(tiled, 0, 1), gt, peak=1.0)
    assert abs(p_tiled - p_full) < 0.05, f"tiled {p_tiled:.4f} dB vs whole image {p_full:.4f} dB"


def test_tiles_must_sit_at_the_models_phase(tlc_model, scene_and_full):
    """Aligned tiles reproduce the whole image closely; tiles at an odd offset do not (stride-2 convs)."""
    model, params = tlc_model
    _, lq, full = scene_and_full
    apply_fn = inference.model_apply_fn(model)
    aligned = inference.Restorer(apply_fn, params, tile=32, overlap=13, align=ALIGN)(lq)  # stride 18
    misaligned = inference.Restorer(apply_fn, params, tile=32, overlap=13, align=1)(lq)  # stride 19
    p_aligned = metrics.psnr(aligned, full, peak=1.0)
    p_misaligned = metrics.psnr(misaligned, full, peak=1.0)
    assert p_aligned > 50, f"aligned tiles only {p_aligned:.1f} dB from the whole-image output"
    assert p_misaligned < p_aligned - 10, f"misaligned {p_misaligned:.1f} vs aligned {p_aligned:.1f} dB"


# --- x8 self-ensemble ------------------------------------------------------------------------

def test_dihedral_transforms_are_eight_distinct_invertible_maps():
    x = _image(3, 5)
    outs = [inference.dihedral(x, t) for t in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    for t, o in enumerate(outs):
        np.testing.assert_array_equal(inference.dihedral_inverse(o, t), x, err_msg=f"transform {t}")


def test_ensemble_of_an_equivariant_op_equals_the_op():
    x = _image(11, 14)
    plain = inference.Restorer(_box_blur, {})(x)
    ensembled = inference.Restorer(_box_blur, {}, ensemble=True)(x)
    np.testing.assert_allclose(ensembled, plain, atol=1e-6)


def test_ensemble_averages_a_non_equivariant_op_over_the_group():
    def shift_right(params, x):
        return jnp.roll(x, 1, axis=2)

    x = _image(6, 6)
    got = inference.Restorer(shift_right, {}, ensemble=True)(x)
    # the group average of a one-pixel roll: the mean of the four axis-aligned neighbours.
    want = sum(np.roll(x, s, axis=a) for a in (0, 1) for s in (1, -1)) / 4
    np.testing.assert_allclose(got, want, atol=1e-6)


# --- several devices -------------------------------------------------------------------------

@pytest.mark.slow
def test_batches_split_over_simulated_devices_match_one_device(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import numpy as np, jax
        from nafnet_jax.evaluation import inference
        from tiny_models import tiny_model_and_params
        assert jax.local_device_count() == 4
        model, params, _ = tiny_model_and_params(levels=1, tlc_train_size=None)
        fn = inference.model_apply_fn(model)
        images = [np.random.default_rng(i).random((20, 26, 3)).astype(np.float32) for i in range(3)]
        one = [inference.Restorer(fn, params)(im) for im in images]
        many = inference.Restorer(fn, params, devices=jax.local_devices()).restore_many(images)
        tiled1 = inference.Restorer(fn, params, tile=16, overlap=4, align=2)(images[0])
        tiled4 = inference.Restorer(fn, params, tile=16, overlap=4, align=2, tile_batch=3,
                                    devices=jax.local_devices())(images[0])
        for a, b in zip(one, many):
            np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(tiled1, tiled4, atol=1e-5)
        print("OK")
    """ % os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_tile_must_be_a_multiple_of_the_models_downsampling():
    with pytest.raises(ValueError, match="multiple of the model's downsampling factor 16"):
        inference.Restorer(_pointwise, {"scale": 1.0}, tile=100, align=16)
