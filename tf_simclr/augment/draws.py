"""The random numbers of every operator, and the arithmetic that turns them into choices.

Each code path (per-operator, batched XLA, fused single-image, crop stage + batch stage) draws
through these functions, so a seed gives the same crop, flip, jitter and blur whichever path
runs. The draws are plain TF stateless ops (results do not depend on XLA); the functions named
``*_from_draws`` are plain arithmetic, so they give the same choices inside XLA kernels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from tf_simclr.augment.params import (
    BLUR_SIGMA_RANGE,
    HUE_MAGNITUDE,
    JITTER_MAGNITUDE,
    JITTER_P,
)
from tf_simclr.choices import BRIGHTNESS_MODES

# Colour-jitter operation ids of one stage; NO_COLOR_OP means the stage does nothing.
BRIGHTNESS, CONTRAST, SATURATION, HUE, NO_COLOR_OP = range(5)


def _seeds(seed, n: int) -> list[tf.Tensor]:
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n), num=n)


def _uniform(shape, seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=tf.float32)


def _bernoulli(batch, p: float, seed) -> tf.Tensor:
    """[batch] bools, true with probability p: ``_uniform([batch], seed) < p``. The fused path
    draws the uniforms outside its XLA kernels and compares them inside."""
    return _uniform([batch], seed) < p


def _crop_draws(seed, b, area_range, aspect_range, target_aspect, max_attempts):
    """The random numbers of sample_crop_boxes: area fractions, aspect ratios, offsets."""
    s_area, s_ratio, s_y, s_x = _seeds(seed, 4)
    frac = _uniform([b, max_attempts], s_area, area_range[0], area_range[1])
    log_lo = math.log(aspect_range[0] * target_aspect)
    log_hi = math.log(aspect_range[1] * target_aspect)
    ratio = tf.exp(_uniform([b, max_attempts], s_ratio, log_lo, log_hi))
    return frac, ratio, _uniform([b], s_y), _uniform([b], s_x)


def _boxes_from_draws(frac, ratio, u_y, u_x, height, width):
    """Integer boxes [B, 4] = (y0, x0, h, w): the first attempt that fits, else the image."""
    b = tf.shape(frac)[0]
    hf = tf.broadcast_to(tf.cast(height, tf.float32), [b])
    wf = tf.broadcast_to(tf.cast(width, tf.float32), [b])
    area = (hf * wf)[:, None]
    cw = tf.round(tf.sqrt(frac * area * ratio))
    ch = tf.round(tf.sqrt(frac * area / ratio))
    ok = (cw <= wf[:, None]) & (ch <= hf[:, None]) & (cw >= 1.0) & (ch >= 1.0)
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(ok, axis=1)
    cw = tf.where(found, tf.gather(cw, first, batch_dims=1), wf)
    ch = tf.where(found, tf.gather(ch, first, batch_dims=1), hf)
    y0 = tf.floor(u_y * (hf - ch + 1.0))
    x0 = tf.floor(u_x * (wf - cw + 1.0))
    y0 = tf.minimum(y0, hf - ch)
    x0 = tf.minimum(x0, wf - cw)
    return tf.cast(tf.stack([y0, x0, ch, cw], axis=1), tf.int32)


def _check_brightness(brightness: str) -> None:
    if brightness not in BRIGHTNESS_MODES:
        raise ValueError(
            f"brightness must be 'multiplicative' (SimCLRv2) or 'additive' (SimCLRv1), "
            f"got {brightness!r}."
        )


class JitterDraws(NamedTuple):
    """Per-image colour-jitter factors [B] and the seeds of the apply and order draws."""

    brightness: tf.Tensor
    contrast: tf.Tensor
    saturation: tf.Tensor
    hue: tf.Tensor
    seed_apply: tf.Tensor
    seed_perm: tf.Tensor


def _jitter_draws(seed, batch, strength: float, brightness: str) -> JitterDraws:
    """The random factors of colour jitter with strength s for ``batch`` images."""
    _check_brightness(brightness)
    s_apply, s_b, s_c, s_s, s_h, s_perm = _seeds(seed, 6)
    mag = JITTER_MAGNITUDE * strength
    if brightness == "additive":
        f_b = _uniform([batch], s_b, -mag, mag)
    else:
        f_b = _uniform([batch], s_b, max(0.0, 1.0 - mag), 1.0 + mag)
    f_c = _uniform([batch], s_c, max(0.0, 1.0 - mag), 1.0 + mag)
    f_s = _uniform([batch], s_s, max(0.0, 1.0 - mag), 1.0 + mag)
    hue = HUE_MAGNITUDE * strength
    d_h = _uniform([batch], s_h, -hue, hue)
    return JitterDraws(f_b, f_c, f_s, d_h, s_apply, s_perm)


def _order_draws(batch, seed_apply, seed_perm) -> tuple[tf.Tensor, tf.Tensor]:
    """Uniforms [B] deciding whether each image is jittered, and [B, 4] keys of its order."""
    return _uniform([batch], seed_apply), _uniform([batch, 4], seed_perm)


def _order_from_draws(u_apply, u_perm, p: float = JITTER_P) -> tf.Tensor:
    """[B, 4] operation ids per stage: the permutation that sorts the keys ``u_perm`` (a
    uniformly random one) where ``u_apply < p``, else NO_COLOR_OP everywhere. ``u_perm`` None
    keeps the fixed order brightness, contrast, saturation, hue."""
    if u_perm is None:
        order = tf.tile(tf.range(4)[None, :], [tf.shape(u_apply)[0], 1])
    else:
        order = tf.cast(tf.argsort(u_perm, axis=1), tf.int32)
    return tf.where(u_apply[:, None] < p, order, NO_COLOR_OP)


def _color_seeds(seed) -> list[tf.Tensor]:
    """The colour distortion's seeds: (jitter, grayscale)."""
    return _seeds(seed, 2)


def _blur_draws(seed, batch, *, per_image: bool = True, sigma_range=BLUR_SIGMA_RANGE):
    """Uniforms [B] selecting the images to blur (``< p``) and their sigmas [B]; with
    ``per_image=False`` one sigma for the whole batch (the reference code's behaviour)."""
    s_select, s_sigma = _seeds(seed, 2)
    if per_image:
        sigma = _uniform([batch], s_sigma, sigma_range[0], sigma_range[1])
    else:
        sigma = tf.fill([batch], _uniform([], s_sigma, sigma_range[0], sigma_range[1]))
    return _uniform([batch], s_select), sigma
