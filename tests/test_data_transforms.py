"""Paired crop / padding / dihedral flips: lq and gt stay aligned, windows are where they say."""

import numpy as np
import pytest
import tensorflow as tf

from nafnet_jax.data import degradations, transforms
from nafnet_jax.data.testing import coordinate_image


def _seed(i):
    return tf.constant([1234, i], tf.int64)


def _dihedral_variants(window):
    """The 8 images the original's augment() can make of `window`, keyed by (hflip, vflip, rot)."""
    out = {}
    for h in (0, 1):
        for v in (0, 1):
            for r in (0, 1):
                x = window
                x = x[:, ::-1] if h else x
                x = x[::-1] if v else x
                x = x.transpose(1, 0, 2) if r else x
                out[(h, v, r)] = x
    return out


@pytest.mark.parametrize('symmetric,np_mode', [(True, 'symmetric'), (False, 'reflect')])
def test_mirror_indices_match_numpy_pad_far_outside(symmetric, np_mode):
    n, far = 4, 11
    expected = np.pad(np.arange(n), far, mode=np_mode)
    got = transforms.mirror_indices(tf.range(-far, n + far), n, symmetric).numpy()
    np.testing.assert_array_equal(got, expected)


def test_paired_crop_takes_the_same_window_of_lq_and_gt():
    gt = coordinate_image(20, 30)
    lq = 255 - gt
    for i in range(10):
        lq_c, gt_c = (t.numpy() for t in transforms.paired_random_crop(
            tf.constant(lq), tf.constant(gt), 8, _seed(i)))
        top, left = gt_c[0, 0, 0], gt_c[0, 0, 1]
        np.testing.assert_array_equal(gt_c, gt[top:top + 8, left:left + 8],
                                      err_msg=f'seed {i}: gt crop is not a window')
        np.testing.assert_array_equal(lq_c, 255 - gt_c, err_msg=f'seed {i}: lq window differs')


def test_paired_crop_reaches_every_top_left_position():
    gt = coordinate_image(6, 5)
    corners = set()
    for i in range(40):
        _, gt_c = transforms.paired_random_crop(tf.constant(gt), tf.constant(gt), 4, _seed(i))
        corners.add((int(gt_c[0, 0, 0]), int(gt_c[0, 0, 1])))
    assert corners == {(t, l) for t in range(3) for l in range(2)}, corners


@pytest.mark.parametrize('height,width', [(3, 5), (7, 2), (2, 9)])
def test_paired_crop_pads_images_smaller_than_the_crop_at_the_bottom_right(height, width):
    # The original's padding(): cv2.BORDER_REFLECT (numpy 'symmetric'), even past twice the size.
    gt = coordinate_image(height, width)
    size = 8
    lq_c, gt_c = transforms.paired_random_crop(tf.constant(255 - gt), tf.constant(gt), size,
                                               _seed(0))
    padded = np.pad(gt, ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0)),
                    mode='symmetric')
    top, left = np.argwhere(np.all(padded[:, :, :2] == gt_c.numpy()[0, 0, :2], axis=-1))[0]
    np.testing.assert_array_equal(gt_c.numpy(), padded[top:top + size, left:left + size])
    np.testing.assert_array_equal(lq_c.numpy(), 255 - gt_c.numpy())


def test_crop_with_margin_is_the_same_window_widened():
    # Without margin the window is sliced, with one it is gathered: both must agree.
    gt = coordinate_image(20, 30)
    for i in range(10):
        _, plain = transforms.paired_random_crop(tf.constant(gt), tf.constant(gt), 8, _seed(i))
        _, wide = transforms.paired_random_crop(tf.constant(gt), tf.constant(gt), 8, _seed(i),
                                                margin=2)
        np.testing.assert_array_equal(wide.numpy()[2:-2, 2:-2], plain.numpy(),
                                      err_msg=f'seed {i}: the margin moved the window')


def test_crop_with_margin_then_blur_equals_blurring_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (14, 17, 3)).astype(np.float32)
    kernel = degradations.motion_kernel(5.0, 0.7, 7)
    whole = degradations.blur(tf.constant(image), kernel).numpy()
    for i in range(6):
        _, plain = transforms.paired_random_crop(tf.constant(image), tf.constant(image), 6,
                                                 _seed(i))
        _, wide = transforms.paired_random_crop(tf.constant(image), tf.constant(image), 6,
                                                _seed(i), margin=3)
        top, left = np.argwhere(np.all(image == plain.numpy()[0, 0], axis=-1))[0]
        got = transforms.center_crop(degradations.blur(wide, kernel), 3).numpy()
        np.testing.assert_allclose(got, whole[top:top + 6, left:left + 6], atol=1e-3,
                                   err_msg=f'seed {i}: window at ({top}, {left})')


@pytest.mark.parametrize('use_flip,use_rot,expected_count', [(True, True, 8), (True, False, 2),
                                                             (False, True, 4), (False, False, 1)])
def test_dihedral_flips_are_shared_by_the_pair_and_cover_the_group(use_flip, use_rot,
                                                                   expected_count):
    gt = coordinate_image(6, 6)
    variants = _dihedral_variants(gt)
    seen = set()
    for i in range(48):
        lq_t, gt_t = (t.numpy() for t in transforms.paired_dihedral(
            tf.constant(255 - gt), tf.constant(gt), _seed(i), use_flip, use_rot))
        np.testing.assert_array_equal(lq_t, 255 - gt_t, err_msg=f'seed {i}: pair misaligned')
        matches = [k for k, v in variants.items() if np.array_equal(v, gt_t)]
        assert len(matches) == 1, f'seed {i}: not a dihedral transform'
        seen.add(matches[0])
    assert len(seen) == expected_count, sorted(seen)
    if not use_flip:
        assert all(h == 0 for h, _, _ in seen), 'hflip used with use_flip=False'
    if not use_rot:
        assert all(v == 0 and r == 0 for _, v, r in seen), 'vflip/transpose used with use_rot=False'
