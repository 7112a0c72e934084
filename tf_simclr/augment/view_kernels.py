"""The XLA kernels of the fused path: one view's pixel work after the crop, on channel planes.

Per view the fused path runs the random draws (``draws``), ``_VIEW_PARAMS`` turning them into
the crop box and the operation choices, tf.image.resize of the cut crop, and ONE kernel for
everything pixel-wise: scale, flip, colour jitter in the drawn order, grayscale and, when
drawn, the blur as an XLA conditional on channel planes. Inside tf.data every TF op costs
~10 us and every XLA call ~100 us whatever its size, so the fewer the better. Measured dead
ends (TF 2.21, CPU): unrolled XLA conditionals for the four jitter stages compile for ~1 min
and run slower than separate kernels; an XLA gather-based bicubic crop and gather-based blur
chunks were slower than tf.image.resize and the slice-concat blur; the blur as banded matrix
products (HWC layout copies dominate), as a separate XLA call or as a tf.cond between two
colour kernels (the cond around an XLA call costs ~0.5 ms in a tf.data map), or as a sixth
stage of the jitter loop (the loop state then gets copied every stage) were all slower than
the in-kernel conditional. ``_VIEW_COLOR_BATCH`` runs the same work over a whole batch in one
XLA call (an XLA loop over the images), which cuts the per-call overhead and makes the
in-kernel blur about 3x cheaper than one call per image.
"""

from __future__ import annotations

from types import MappingProxyType

import tensorflow as tf

from tf_simclr.augment.draws import NO_COLOR_OP, _boxes_from_draws, _order_from_draws
from tf_simclr.augment.kernels import (
    _blur_planes,
    _brightness,
    _contrast,
    _hue_shift_planes,
    _jit,
    _luma,
    _saturate_planes,
)
from tf_simclr.augment.params import BLUR_P, FLIP_P, GRAYSCALE_P


def _view_params_kernel(hw, frac, ratio, u_y, u_x, u_flip, u_apply, u_perm, u_gray, u_blur):
    """Draws -> crop box, flip, colour order (NO_COLOR_OP = none), grayscale, blur, for one
    image (every draw has a leading axis of 1)."""
    box = _boxes_from_draws(frac, ratio, u_y, u_x, hw[0], hw[1])[0]
    order = _order_from_draws(u_apply, u_perm)[0]
    return box, u_flip[0] < FLIP_P, order, u_gray[0] < GRAYSCALE_P, u_blur[0] < BLUR_P


def _jitter_op_planes(rgb, op, fb, fc, fs, dh, additive):
    """One colour-jitter operation on channel planes (ids as in ``draws``), clipped. Only the
    chosen one runs (an XLA conditional), so each stage's result is materialised once."""
    r, g, b = rgb

    def bright():
        return tuple(_brightness(c, fb, additive) for c in rgb)

    def contrast():
        return tuple(_contrast(c, fc, tf.reduce_mean(c)) for c in rgb)

    return tf.switch_case(
        op,
        [
            bright,
            contrast,
            lambda: _saturate_planes(r, g, b, fs),
            lambda: _hue_shift_planes(r, g, b, dh),
            lambda: rgb,
        ],
    )


def _scale_flip(x, scale, flip):
    """Resized crop (any scale) -> [0, 1], flipped left-right if ``flip``. Works on one image
    [H, W, C] (scalar parameters) or on a batch [B, H, W, C] (parameters of shape [B])."""
    if x.shape.rank == 4:
        scale, flip = scale[:, None, None, None], flip[:, None, None, None]
    x = tf.clip_by_value(x * scale, 0.0, 1.0)
    return tf.where(flip, tf.reverse(x, [-2]), x)


def _drawn_color_kernel(x, order, fb, fc, fs, dh, gray, kern=None, blur=None, *, additive):
    """Colour jitter, grayscale and, when ``kern`` [K] is given, a Gaussian blur if ``blur``,
    for one image in [0, 1].

    ``order`` [4]: the operation of each jitter stage. The stages run in an XLA loop around
    one conditional, so only the drawn operations run and each is compiled once. The blur is
    an XLA conditional inside this kernel: measured in a tf.data map, a tf.cond around a
    second XLA call costs more than the blur itself."""
    rgb = (x[..., 0], x[..., 1], x[..., 2])

    def body(k, r, g, b):
        out = _jitter_op_planes((r, g, b), order[k], fb, fc, fs, dh, additive)
        return (k + 1, *out)

    def more(k, *_):  # order is a permutation (jitter drawn) or all NO_COLOR_OP (not drawn)
        return (k < 4) & (tf.gather(order, tf.minimum(k, 3)) < NO_COLOR_OP)

    rgb = tf.while_loop(more, body, (tf.constant(0), *rgb))[1:]
    g = _luma(*rgb)
    if kern is None:
        return tf.stack([tf.where(gray, g, c) for c in rgb], axis=-1)
    p = tf.stack([tf.where(gray, g, c) for c in rgb], axis=0)
    p = tf.cond(blur, lambda: tf.clip_by_value(_blur_planes(p, kern), 0.0, 1.0), lambda: p)
    return tf.transpose(p, [1, 2, 0])  # one interleave to HWC, blurred or not


def _view_color_kernel(x, scale, flip, *drawn_params, additive):
    """Everything after the crop for one image: _scale_flip, then _drawn_color_kernel with
    ``drawn_params`` (order, the four jitter factors, grayscale[, blur kernel, blur])."""
    return _drawn_color_kernel(_scale_flip(x, scale, flip), *drawn_params, additive=additive)


def _blur_image_kernel(x, kern):
    """Separable Gaussian blur of one image [H, W, C] (reflect padding), clipped to [0, 1].

    The fused path blurs inside ``_drawn_color_kernel``; this HWC form is for direct use."""
    y = _blur_planes(tf.transpose(x, [2, 0, 1]), kern)
    return tf.clip_by_value(tf.transpose(y, [1, 2, 0]), 0.0, 1.0)


def _view_color_batch_kernel(
    x, scale, flip, order, fb, fc, fs, dh, gray, kern=None, blur=None, *, additive
):
    """_view_color_kernel over a batch [B, S, S, 3] with per-image parameters (leading axis B).

    The work every image gets (scale, clip, flip) runs vectorised over the batch in one pass.
    Then an XLA loop visits the images and, only for those with jitter, grayscale or blur
    drawn, runs _drawn_color_kernel on that image and writes it back in place: each image still
    runs only its drawn operations, and a batch is one kernel launch. Moving the shared work
    out of the per-image loop made crop+flip batches ~1.35x and the ImageNet recipe ~1.1x
    cheaper per CPU-second than looping over every image (bench/bench_pipeline.py)."""
    y = _scale_flip(x, scale, flip)
    drawn = (order[:, 0] < NO_COLOR_OP) | gray
    if kern is not None:
        drawn = drawn | blur

    def visit(i, y):
        def finish_image():
            args = (order[i], fb[i], fc[i], fs[i], dh[i], gray[i])
            if kern is not None:
                args = (*args, kern[i], blur[i])
            out = _drawn_color_kernel(y[i], *args, additive=additive)
            return tf.tensor_scatter_nd_update(y, [[i]], out[None])

        return i + 1, tf.cond(drawn[i], finish_image, lambda: y)

    return tf.while_loop(lambda i, _: i < tf.shape(y)[0], visit, (tf.constant(0), y))[1]


def _by_brightness_mode(kernel):
    """The kernel compiled once per brightness mode, looked up by ``additive``."""
    return MappingProxyType(
        {
            additive: _jit(lambda *args, additive=additive: kernel(*args, additive=additive))
            for additive in (False, True)
        }
    )


_VIEW_PARAMS = _jit(_view_params_kernel)
_BLUR_IMAGE = _jit(_blur_image_kernel)
_VIEW_COLOR = _by_brightness_mode(_view_color_kernel)
_VIEW_COLOR_BATCH = _by_brightness_mode(_view_color_batch_kernel)
