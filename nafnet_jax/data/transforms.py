"""Paired geometric transforms (TensorFlow ops, stateless): padding, random crop, dihedral flips.

lq and gt always get the same window and the same flips, so a pair stays pixel-aligned. Images are
(H, W, C) tensors of any dtype; seeds are int64 [2] (see tf.random.stateless_*).
"""

from __future__ import annotations

import tensorflow as tf


def mirror_indices(indices: tf.Tensor, n, symmetric: bool) -> tf.Tensor:
    """Maps any integer positions into [0, n) by mirroring at the borders, however far out.

    symmetric=True repeats the edge pixel (cv2.BORDER_REFLECT, tf 'SYMMETRIC': ..ba|abcd|dc..);
    symmetric=False does not (cv2.BORDER_REFLECT_101, tf 'REFLECT': ..cb|abcd|cb..).
    """
    indices = tf.cast(indices, tf.int32)
    n = tf.cast(n, tf.int32)
    if symmetric:
        period = 2 * n
        j = tf.math.floormod(indices, period)
        return tf.where(j < n, j, period - 1 - j)
    period = tf.maximum(2 * (n - 1), 1)
    j = tf.math.floormod(indices, period)
    return tf.where(j < n, j, period - j)


def _window_indices(start, span: int, padded, n) -> tf.Tensor:
    """Source positions of a window of the padded image, without building the padded image.

    The padded image P (length `padded` >= n) repeats the image mirrored at its end, edge pixel
    repeated (P[i] = I[symmetric(i, n)], the original's cv2.BORDER_REFLECT padding); positions of
    the window outside P are mirrored at P's borders without repeating the edge ('REFLECT').
    """
    in_padded = mirror_indices(start + tf.range(span), padded, symmetric=False)
    return mirror_indices(in_padded, n, symmetric=True)


def paired_random_crop(lq: tf.Tensor, gt: tf.Tensor, size: int, seed: tf.Tensor,
                       margin: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """The same uniformly placed size x size window of lq and gt.

    An image smaller than the crop is first padded at the bottom/right by mirroring (edge pixel
    repeated), as the original's `padding()`. With `margin` > 0 the window is widened by `margin`
    pixels on every side (mirrored, tf 'REFLECT' style, outside the image), so that a filter of
    radius `margin` applied to it and then cropped back equals filtering the whole image with
    reflect padding. The top-left corner is uniform over all positions of the size x size window.
    Only the window is gathered: the cost does not grow with the image size.
    """
    shape = tf.shape(gt)
    height, width = tf.maximum(shape[0], size), tf.maximum(shape[1], size)  # after padding
    top = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 0),
                                      0, height - size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1),
                                       0, width - size + 1, dtype=tf.int32)
    span = size + 2 * margin

    def gather_window():
        rows = _window_indices(top - margin, span, height, shape[0])
        cols = _window_indices(left - margin, span, width, shape[1])
        return tuple(tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)
                     for image in (lq, gt))

    if margin:
        return gather_window()

    def slice_window():  # the same window, without building and gathering through index vectors
        return tuple(tf.slice(image, [top, left, 0], [size, size, -1]) for image in (lq, gt))

    fits = tf.logical_and(shape[0] >= size, shape[1] >= size)  # no padding needed
    return tf.cond(fits, slice_window, gather_window)


def center_crop(image: tf.Tensor, margin: int) -> tf.Tensor:
    """Removes `margin` pixels from every side."""
    if margin == 0:
        return image
    return image[margin:-margin, margin:-margin]


def paired_dihedral(lq: tf.Tensor, gt: tf.Tensor, seed: tf.Tensor, use_flip: bool = True,
                    use_rot: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """The original's `augment`: hflip (if use_flip), then vflip and transpose (if use_rot).

    Each is decided with p=0.5 from `seed` and applied to both images: 8 dihedral variants.
    """
    ops = []
    if use_flip:
        ops.append(lambda x: tf.reverse(x, [1]))  # horizontal flip
    if use_rot:
        ops.append(lambda x: tf.reverse(x, [0]))  # vertical flip
        ops.append(lambda x: tf.transpose(x, [1, 0, 2]))  # the original's "rot90"
    salts = {0: 0, 1: 1, 2: 2} if use_flip else {0: 1, 1: 2}  # a decision keeps its seed
    for i, op in enumerate(ops):
        coin = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seed, salts[i]))
        lq, gt = tf.cond(coin < 0.5, lambda o=op, a=lq, b=gt: (o(a), o(b)),
                         lambda a=lq, b=gt: (a, b))
    return lq, gt
