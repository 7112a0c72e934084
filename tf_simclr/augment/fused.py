"""One image at a time (large or variable-size images): augment_single and its two stages.

crop[,flip][,color|color_jitter][,blur] takes the fused path: the draws, ``_VIEW_PARAMS``,
tf.image.resize of the cut crop, and one XLA kernel for all the pixel work
(``view_kernels``). The pipeline splits it in two, augment_single_crop per image and
augment_finish_batch per batch, so the pixel kernel runs over a whole batch in one XLA call
(the 224 px two-view pipeline ran 1.1-1.2x faster). Other compositions run operator by
operator with the same draws, skipping the work not drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tf_simclr.augment.compose import (
    _CROP_OPS,
    _apply_op,
    _resize_to,
    parse_augmentations,
    resolve_augmentations,
)
from tf_simclr.augment.draws import (
    _bernoulli,
    _blur_draws,
    _check_brightness,
    _color_seeds,
    _crop_draws,
    _jitter_draws,
    _order_draws,
    _order_from_draws,
    _seeds,
    _uniform,
)
from tf_simclr.augment.kernels import blur_kernel, to_float_image
from tf_simclr.augment.operators import _random_resized_crop_one, _resize_crop
from tf_simclr.augment.params import (
    BLUR_P,
    CROP_AREA_RANGE,
    CROP_ASPECT_RANGE,
    CROP_MAX_ATTEMPTS,
    FLIP_P,
    GRAYSCALE_P,
    JITTER_P,
)
from tf_simclr.augment.view_kernels import (
    _BLUR_IMAGE,
    _VIEW_COLOR,
    _VIEW_COLOR_BATCH,
    _VIEW_PARAMS,
)
from tf_simclr.validation import check_images

_FAST_OPS = ("crop", "flip", "color", "blur")


def _fast_plan(ops: tuple[str, ...]) -> dict | None:
    """{"flip": bool, "color": None|"color"|"color_jitter", "blur": bool} if ops is
    crop[,flip][,color|color_jitter][,blur] (the fused path), else None."""
    if not ops or ops[0] != "crop":
        return None
    plan, pos = {"flip": False, "color": None, "blur": False}, 1
    for name in ops[1:]:
        key = "color" if name in ("color", "color_jitter") else name
        if key not in _FAST_OPS[pos:]:
            return None
        pos = _FAST_OPS.index(key) + 1
        plan[key] = name if key == "color" else True
    return plan


def has_crop_stage(augmentations: str | Sequence[str]) -> bool:
    """Whether ``augmentations`` can run as augment_single_crop + augment_finish_batch: a crop
    first, then any of flip, color (or color_jitter) and blur, in that order."""
    return _fast_plan(parse_augmentations(augmentations)) is not None


def _single_setup(augmentations, color_jitter_strength, brightness):
    """Checked (ops, strength, fused plan or None) for augment_single and its crop stage."""
    _check_brightness(brightness)
    ops, strength = resolve_augmentations(augmentations, color_jitter_strength)
    return ops, strength, _fast_plan(ops)


def _fused_crop(image, seed, plan, *, image_size, strength, brightness, n_ops):
    """First half of the fused path: the draws, and the drawn crop cut from the full-size image
    and resized to [S, S, 3] float32 (source scale). Returns (resized, params): params are the
    arguments of ``_view_color_kernel`` after the image (scale, flip, order, the four jitter
    factors, grayscale, and the blur kernel and draw when the composition blurs)."""
    image = tf.convert_to_tensor(image)
    seeds = _seeds(seed, n_ops)  # the same per-operator seeds as the generic path
    names = ["crop"] + [k for k in ("flip", "color", "blur") if plan[k]]
    s = dict(zip(names, seeds, strict=False))
    frac, ratio, u_y, u_x = _crop_draws(
        s["crop"], 1, CROP_AREA_RANGE, CROP_ASPECT_RANGE, 1.0, CROP_MAX_ATTEMPTS
    )
    never = tf.ones([1])  # a draw of 1 selects nothing
    u_flip = _uniform([1], s["flip"]) if plan["flip"] else never
    u_apply, u_perm, u_gray, u_blur = never, tf.zeros([1, 4]), never, never
    fb = fc = fs = dh = tf.zeros([1])
    if plan["color"]:
        s_jit, s_gray = _color_seeds(s["color"])
        fb, fc, fs, dh, s_apply, s_perm = _jitter_draws(s_jit, 1, strength, brightness)
        u_apply, u_perm = _order_draws(1, s_apply, s_perm)
        if plan["color"] == "color":
            u_gray = _uniform([1], s_gray)
    kern = None
    if plan["blur"]:
        u_blur, sigma = _blur_draws(s["blur"], 1)
        kern = blur_kernel(sigma, image_size)[0]
    hw = tf.shape(image)[:2]
    box, flip, order, gray, blur = _VIEW_PARAMS(
        hw, frac, ratio, u_y, u_x, u_flip, u_apply, u_perm, u_gray, u_blur
    )
    x = _resize_crop(image, box, (image_size, image_size))
    x = tf.ensure_shape(x, [image_size, image_size, 3])
    scale = tf.constant(1.0 / 255.0 if image.dtype == tf.uint8 else 1.0)
    params = (scale, flip, order, fb[0], fc[0], fs[0], dh[0], gray)
    if kern is not None and kern.shape[0] > 1:
        params = (*params, kern, blur)
    return x, params


def _color_jitter_one(x, seed, *, strength, p=JITTER_P, brightness, gray=False):
    """Colour jitter of a batch of one [1, H, W, 3], then grayscale where ``gray``: the
    fused colour kernel, so only the drawn operations run."""
    f_b, f_c, f_s, d_h, s_apply, s_perm = _jitter_draws(seed, 1, strength, brightness)
    order = _order_from_draws(*_order_draws(1, s_apply, s_perm), p)[0]
    kernel = _VIEW_COLOR[brightness == "additive"]
    return kernel(x[0], 1.0, False, order, f_b[0], f_c[0], f_s[0], d_h[0], gray)[None]


def _augment_single_by_operator(image, seed, ops, *, image_size, strength, brightness):
    """augment_single for compositions the fused path does not take (same draws)."""
    x = tf.convert_to_tensor(image)
    seeds = _seeds(seed, max(len(ops), 1))
    if not any(op in _CROP_OPS for op in ops):
        x = _resize_to(to_float_image(x)[None], image_size)[0]
    x = x[None]
    for name, s in zip(ops, seeds, strict=False):
        if name == "crop":  # cuts from the source as it is, converting only the crop
            x = _random_resized_crop_one(x[0], s, image_size)[None]
            continue
        x = to_float_image(x)
        if name == "flip":
            # Only the drawn work: a flip costs one reverse for half of the images.
            x = tf.cond(_bernoulli(1, FLIP_P, s)[0], lambda x=x: tf.reverse(x, [2]), lambda x=x: x)
        elif name == "color" or name == "color_jitter":
            s_jit, s_gray = _color_seeds(s)
            gray = _bernoulli(1, GRAYSCALE_P, s_gray)[0] if name == "color" else False
            x = _color_jitter_one(x, s_jit, strength=strength, brightness=brightness, gray=gray)
        elif name == "blur":
            u_select, sigma = _blur_draws(s, 1)
            kern = blur_kernel(sigma, x.shape[1])[0]
            if kern.shape[0] > 1:
                x = tf.cond(
                    u_select[0] < BLUR_P,
                    lambda x=x, kern=kern: _BLUR_IMAGE(x[0], kern)[None],
                    lambda x=x: x,
                )
        else:
            x = _apply_op(
                name,
                x,
                s,
                image_size=image_size,
                strength=strength,
                brightness=brightness,
                blur_per_image=True,
                xla=True,
            )
        x = tf.ensure_shape(x, [1, None, None, 3])
    return tf.ensure_shape(_resize_to(x, image_size)[0], [image_size, image_size, 3])


def augment_single(
    image: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
) -> tf.Tensor:
    """Augment one image [H, W, 3] of any size -> float32 [S, S, 3], skipping work not drawn.

    Same operators and distributions as augment_batch, organised for large images inside a
    parallel tf.data map: the crop is cut and resized by tf.image.resize from the full-size
    image, colour jitter runs only the operations drawn, and blur runs only when drawn.
    crop[,flip][,color|color_jitter][,blur] takes the fused path (few XLA kernels); other
    compositions run operator by operator with the same draws. ``color_jitter_strength`` None
    is the preset's (1.0 for a list). ``blur_per_image`` has no effect here (one image, one
    sigma). Deterministic given ``seed``. ``image`` is uint8 or float32 in [0, 1]
    (``check_images``).
    """
    del blur_per_image
    image = check_images(image, name="image", rank=3)
    ops, strength, plan = _single_setup(augmentations, color_jitter_strength, brightness)
    kw = dict(image_size=image_size, strength=strength, brightness=brightness)
    if plan is None:
        return _augment_single_by_operator(image, seed, ops, **kw)
    x, params = _fused_crop(image, seed, plan, n_ops=len(ops), **kw)
    x = _VIEW_COLOR[brightness == "additive"](x, *params)
    return tf.ensure_shape(x, [image_size, image_size, 3])


def augment_single_crop(
    image: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
    """First stage of augment_single for one image: ``(resized, params)``.

    ``resized`` is the drawn crop resized to float32 [S, S, 3] (source scale, not yet clipped);
    ``params`` are the draws of the remaining operations. Batch both (e.g. with
    ``tf.data.Dataset.batch``) and call augment_finish_batch: each image ends up exactly as
    augment_single makes it from the same seed, while the per-pixel work after the crop runs
    as one XLA call per batch. Only for compositions where has_crop_stage is true.
    ``color_jitter_strength`` None is the preset's (1.0 for a list).
    """
    image = check_images(image, name="image", rank=3)
    ops, strength, plan = _single_setup(augmentations, color_jitter_strength, brightness)
    if plan is None:
        raise ValueError(
            f"augmentations {','.join(ops)!r} cannot be split into a crop stage and a batch "
            "stage (it must be crop followed by any of flip, color|color_jitter, blur in "
            "that order); use augment_single instead"
        )
    return _fused_crop(
        image,
        seed,
        plan,
        image_size=image_size,
        strength=strength,
        brightness=brightness,
        n_ops=len(ops),
    )


def augment_finish_batch(
    resized: tf.Tensor, params: Sequence[tf.Tensor], *, brightness: str = "multiplicative"
) -> tf.Tensor:
    """Second stage: a batch of augment_single_crop outputs -> float32 [B, S, S, 3] in [0, 1].

    ``brightness`` must be the one given to augment_single_crop."""
    _check_brightness(brightness)
    return _VIEW_COLOR_BATCH[brightness == "additive"](resized, *params)
