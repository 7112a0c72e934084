"""Evaluation preprocessing: the reference's central crop and resize, no randomness."""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.augment.kernels import to_float_image
from tf_simclr.augment.params import EVAL_CROP_PROPORTION, EVAL_MIN_CROP_SIDE
from tf_simclr.validation import check_images


def preprocess_for_eval(
    image: tf.Tensor, image_size: int, *, crop_proportion: float = EVAL_CROP_PROPORTION
) -> tf.Tensor:
    """Central crop keeping 87.5% (``crop_proportion``) of the shorter side, then bicubic
    resize to image_size.

    The crop is skipped for small images (image_size <= 32 or a source side <= 32), as in the
    reference. Accepts [H, W, 3] or [B, H, W, 3], uint8 or float32 in [0, 1]; returns float32
    in [0, 1].
    """
    image = to_float_image(check_images(image, name="image", rank=None))
    single = image.shape.rank == 3
    if single:
        image = image[None]
    shape = tf.shape(image)
    h, w = shape[1], shape[2]
    if image_size > EVAL_MIN_CROP_SIDE:
        short = tf.minimum(h, w)
        crop = tf.cast(tf.round(crop_proportion * tf.cast(short, tf.float32)), tf.int32)
        small = short <= EVAL_MIN_CROP_SIDE
        ch = tf.where(small, h, crop)
        cw = tf.where(small, w, crop)
        y0 = (h - ch + 1) // 2
        x0 = (w - cw + 1) // 2
        image = image[:, y0 : y0 + ch, x0 : x0 + cw]
    static = image.shape[1] == image_size and image.shape[2] == image_size
    if not static:
        image = tf.image.resize(image, (image_size, image_size), method="bicubic")
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.ensure_shape(image, [None, image_size, image_size, 3])
    return image[0] if single else image
