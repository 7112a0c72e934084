"""The augmentation operators, each on a batch with per-image random parameters.

Every operator takes a batch ``images`` (float32 NHWC in [0, 1]; uint8 is converted) and a
stateless seed, and returns a batch of the same dtype. Operators with an ``xla`` argument run
their per-pixel work in the compiled kernels of ``kernels`` (``xla=False``: plain TF).
Defaults are the paper's (``params``).
"""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.augment.draws import (
    NO_COLOR_OP,
    _bernoulli,
    _blur_draws,
    _boxes_from_draws,
    _color_seeds,
    _crop_draws,
    _jitter_draws,
    _order_draws,
    _order_from_draws,
    _seeds,
    _uniform,
)
from tf_simclr.augment.kernels import (
    _brightness,
    _contrast,
    _kernel,
    _luma_of,
    _sat_hue_kernel,
    _saturate,
    blur_kernel,
    to_float_image,
)
from tf_simclr.augment.params import (
    BLUR_P,
    BLUR_SIGMA_RANGE,
    CROP_AREA_RANGE,
    CROP_ASPECT_RANGE,
    CROP_MAX_ATTEMPTS,
    CROP_NO_RESIZE_PAD_FRACTION,
    CUTOUT_FRACTION,
    DEFAULT_COLOR_JITTER_STRENGTH,
    FLIP_P,
    GRAYSCALE_P,
    JITTER_P,
    NOISE_STDDEV,
)


def _batch(images: tf.Tensor) -> tf.Tensor:
    return tf.shape(images)[0]


def _where_images(mask: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.where(mask[:, None, None, None], a, b)


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------
def sample_crop_boxes(
    seed,
    height,
    width,
    batch_size,
    *,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
    target_aspect: float = 1.0,
    max_attempts: int = CROP_MAX_ATTEMPTS,
) -> tf.Tensor:
    """Sample integer crop boxes [B, 4] = (y0, x0, h, w) inside images of size height x width.

    Each attempt draws the area fraction uniformly in ``area_range`` and the aspect ratio (w/h)
    log-uniformly in ``aspect_range`` times ``target_aspect``; the first attempt that fits is
    kept, and after ``max_attempts`` misses the whole image is used. The offset is uniform.
    ``height``/``width`` may be scalars or [B] tensors.
    """
    draws = _crop_draws(seed, batch_size, area_range, aspect_range, target_aspect, max_attempts)
    return _boxes_from_draws(*draws, height, width)


def _resize_crop(image: tf.Tensor, box, size: tuple[int, int]) -> tf.Tensor:
    """The box (y0, x0, h, w) of one image [H, W, C], bicubically resized, float32, not clipped.

    Only the cut is converted (the source may be much larger than the crop). Converting before
    the resize gives the same values (the resize kernel computes in float32) and runs its float
    specialisation, about 30% faster than the uint8 one."""
    crop = tf.cast(image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]], tf.float32)
    return tf.image.resize(crop, size, method="bicubic")


def crop_and_resize(
    images: tf.Tensor,
    boxes: tf.Tensor,
    size: int | tuple[int, int],
    *,
    xla: bool = True,
    flip_mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Crop each image to its box (y0, x0, h, w) and resize it bicubically to ``size``.

    Small images are done as two batched matrix products; large ones per image with
    tf.image.resize (the same arithmetic, cheaper when the side is large). Output is clipped to
    [0, 1] because bicubic interpolation overshoots. ``flip_mask`` [B] bool also mirrors the
    selected outputs horizontally.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        images = tf.cast(images, tf.float32)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = images.shape[1], images.shape[2]
    if flip_mask is None:
        flip_mask = tf.zeros(tf.shape(images)[:1], tf.bool)
    if in_h is not None and in_w is not None and max(in_h, in_w) <= 96:
        return _kernel("resize", xla)(images, tf.cast(boxes, tf.int32), flip_mask, out_h, out_w)
    images = to_float_image(images)
    out = tf.map_fn(
        lambda args: _resize_crop(args[0], args[1], (out_h, out_w)),
        (images, boxes),
        fn_output_signature=tf.TensorSpec([out_h, out_w, images.shape[-1]], tf.float32),
    )
    out = _where_images(flip_mask, tf.reverse(out, [2]), out)
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(
    images: tf.Tensor,
    seed,
    *,
    size: int,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
    max_attempts: int = CROP_MAX_ATTEMPTS,
    xla: bool = True,
    flip_mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """SimCLR's random crop + bicubic resize to size x size, one box per image."""
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    boxes = sample_crop_boxes(
        seed,
        shape[1],
        shape[2],
        shape[0],
        area_range=area_range,
        aspect_range=aspect_range,
        max_attempts=max_attempts,
    )
    return crop_and_resize(images, boxes, size, xla=xla, flip_mask=flip_mask)


def _random_resized_crop_one(image: tf.Tensor, seed, size: int) -> tf.Tensor:
    """random_resized_crop of one image [H, W, 3] of any size -> float32 [S, S, 3] in [0, 1],
    resized with tf.image.resize from the cut (the box is that of a batch of one)."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    box = sample_crop_boxes(seed, shape[0], shape[1], 1)[0]
    out = _resize_crop(image, box, (size, size))
    if image.dtype == tf.uint8:
        out = out * (1.0 / 255.0)
    return tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0), [size, size, 3])


def _pad_to_at_least(images: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(images)
    ph = tf.maximum(size - shape[1], 0)
    pw = tf.maximum(size - shape[2], 0)
    return tf.pad(images, [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]])


def crop_no_resize(
    images: tf.Tensor, seed, *, size: int, pad_fraction: float = CROP_NO_RESIZE_PAD_FRACTION
):
    """A random size x size window (no rescaling) of each image zero-padded by pad_fraction*size.

    This is the usual "random crop with padding" of supervised CIFAR training; images smaller
    than the window are padded so any source size works.
    """
    images = to_float_image(images)
    pad = int(round(pad_fraction * size))
    images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    images = _pad_to_at_least(images, size)
    shape = tf.shape(images)
    b = shape[0]
    s_y, s_x = _seeds(seed, 2)
    y0 = tf.cast(_uniform([b], s_y) * tf.cast(shape[1] - size + 1, tf.float32), tf.int32)
    x0 = tf.cast(_uniform([b], s_x) * tf.cast(shape[2] - size + 1, tf.float32), tf.int32)
    ys = y0[:, None] + tf.range(size)[None, :]
    xs = x0[:, None] + tf.range(size)[None, :]
    out = tf.gather(images, ys, axis=1, batch_dims=1)
    out = tf.gather(out, xs, axis=2, batch_dims=1)
    return tf.ensure_shape(out, [None, size, size, None])


# --------------------------------------------------------------------------------------------
# Flip, rotation, cutout, noise, sobel
# --------------------------------------------------------------------------------------------
def flip(images: tf.Tensor, seed, *, p: float = FLIP_P, xla: bool = True) -> tf.Tensor:
    """Horizontal flip of each image with probability p."""
    images = to_float_image(images)
    return _kernel("flip", xla)(images, _bernoulli(_batch(images), p, seed))


def rotation(images: tf.Tensor, seed) -> tf.Tensor:
    """Rotate each (square) image by 90, 180 or 270 degrees, chosen uniformly."""
    images = to_float_image(images)
    if images.shape[1] is not None and images.shape[2] is not None:
        if images.shape[1] != images.shape[2]:
            raise ValueError(
                f"rotation needs square images, got {images.shape[1]}x{images.shape[2]}; "
                "put 'crop' before 'rotation' in the augmentation list."
            )
    k = tf.random.stateless_uniform([_batch(images)], seed, 1, 4, dtype=tf.int32)
    r90 = tf.reverse(tf.transpose(images, [0, 2, 1, 3]), [1])  # counter-clockwise, like rot90
    r180 = tf.reverse(images, [1, 2])
    r270 = tf.reverse(tf.transpose(images, [0, 2, 1, 3]), [2])
    return _where_images(k == 1, r90, _where_images(k == 2, r180, r270))


def cutout(images: tf.Tensor, seed, *, fraction: float = CUTOUT_FRACTION) -> tf.Tensor:
    """Black out one square of side fraction*side centred uniformly in the image (clipped)."""
    images = to_float_image(images)
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    s_y, s_x = _seeds(seed, 2)
    side_h = tf.cast(tf.round(fraction * tf.cast(h, tf.float32)), tf.int32)
    side_w = tf.cast(tf.round(fraction * tf.cast(w, tf.float32)), tf.int32)
    cy = tf.cast(_uniform([b], s_y) * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(_uniform([b], s_x) * tf.cast(w, tf.float32), tf.int32)
    ys = tf.range(h)[None, :]
    xs = tf.range(w)[None, :]
    in_y = (ys >= (cy - side_h // 2)[:, None]) & (ys < (cy - side_h // 2 + side_h)[:, None])
    in_x = (xs >= (cx - side_w // 2)[:, None]) & (xs < (cx - side_w // 2 + side_w)[:, None])
    mask = in_y[:, :, None] & in_x[:, None, :]
    return tf.where(mask[..., None], 0.0, images)


def gaussian_noise(images: tf.Tensor, seed, *, stddev: float = NOISE_STDDEV) -> tf.Tensor:
    """Add N(0, stddev^2) noise per pixel and channel, clipped to [0, 1]."""
    images = to_float_image(images)
    noise = tf.random.stateless_normal(tf.shape(images), seed, stddev=stddev)
    return tf.clip_by_value(images + noise, 0.0, 1.0)


def sobel(images: tf.Tensor, seed=None) -> tf.Tensor:
    """Sobel gradient magnitude of the grayscale image, scaled so each image's max is 1."""
    del seed  # deterministic operator; the argument keeps the operator signature uniform
    images = to_float_image(images)
    edges = tf.image.sobel_edges(_luma_of(images))[..., 0, :]  # [B, H, W, 2]
    mag = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1, keepdims=True) + 1e-12)
    mag = mag / tf.maximum(tf.reduce_max(mag, axis=[1, 2, 3], keepdims=True), 1e-6)
    return tf.tile(tf.clip_by_value(mag, 0.0, 1.0), [1, 1, 1, 3])


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------
def grayscale(images: tf.Tensor, seed, *, p: float = GRAYSCALE_P, xla: bool = True) -> tf.Tensor:
    """Replace each image by its (3-channel) grayscale with probability p."""
    images = to_float_image(images)
    return _kernel("gray", xla)(images, _bernoulli(_batch(images), p, seed))


def color_jitter(
    images: tf.Tensor,
    seed,
    *,
    strength: float = DEFAULT_COLOR_JITTER_STRENGTH,
    p: float = JITTER_P,
    brightness: str = "multiplicative",
    random_order: bool = True,
    xla: bool = True,
) -> tf.Tensor:
    """With probability p per image: brightness, contrast, saturation and hue jitter.

    Factors U[1 - 0.8s, 1 + 0.8s] for brightness, contrast and saturation, hue shift
    U[-0.2s, 0.2s] (``params.JITTER_MAGNITUDE``, ``params.HUE_MAGNITUDE``). The four operations
    run in a random order per image (the reference's ``random_order``), clipping to [0, 1]
    after each. ``brightness="multiplicative"`` (SimCLRv2, default) scales by the factor;
    ``"additive"`` (SimCLRv1) adds U[-0.8s, 0.8s].
    """
    images = to_float_image(images)
    b = _batch(images)
    f_b, f_c, f_s, d_h, s_apply, s_perm = _jitter_draws(seed, b, strength, brightness)
    order = color_op_order(b, s_apply, s_perm, p=p, random_order=random_order)
    additive = brightness == "additive"
    if not xla:
        return apply_color_ops(images, order, f_b, f_c, f_s, d_h, additive=additive)
    stage = _kernel("jitter_stage", True)
    for k in range(4):
        images = stage(images, order[:, k], f_b, f_c, f_s, d_h, additive)
    return images


def color_op_order(batch, seed_apply, seed_perm, *, p: float = JITTER_P, random_order: bool = True):
    """[B, 4] operation ids per stage: a uniform random permutation of 0..3 (brightness,
    contrast, saturation, hue) for images jittered with probability p, else all 4 (nothing)."""
    u_apply, u_perm = _order_draws(batch, seed_apply, seed_perm)
    return _order_from_draws(u_apply, u_perm if random_order else None, p)


def apply_color_ops(
    images: tf.Tensor,
    order: tf.Tensor,
    brightness: tf.Tensor,
    contrast: tf.Tensor,
    saturation: tf.Tensor,
    hue: tf.Tensor,
    *,
    additive: bool = False,
) -> tf.Tensor:
    """Apply the colour operations with given per-image parameters in a per-image order.

    ``order`` [B, 4]: operation ids per stage (0 brightness, 1 contrast, 2 saturation, 3 hue,
    4 nothing); the other arguments are [B] factors (hue: delta). Clips after each operation.
    Plain TF that runs only each image's operation per stage (the reference for the kernels).
    """
    images = to_float_image(images)
    b = _batch(images)

    def factors(values, ids):
        return tf.gather(values, ids)[:, None, None, None]

    ops = (
        lambda x, i: _brightness(x, factors(brightness, i), additive),
        lambda x, i: _contrast(x, factors(contrast, i), tf.reduce_mean(x, [1, 2], keepdims=True)),
        lambda x, i: _saturate(x, factors(saturation, i)),
        lambda x, i: _sat_hue_kernel(x, tf.ones_like(i, tf.float32), tf.gather(hue, i)),
    )
    idx = tf.range(b)
    for stage in range(4):
        # Each image runs exactly one operation per stage: partition the batch by operation.
        which = tf.cast(order[:, stage], tf.int32)
        parts = tf.dynamic_partition(images, which, NO_COLOR_OP + 1)
        ids = tf.dynamic_partition(idx, which, NO_COLOR_OP + 1)
        outs = [op(parts[k], ids[k]) for k, op in enumerate(ops)] + [parts[NO_COLOR_OP]]
        images = tf.dynamic_stitch(ids, outs)
    return tf.ensure_shape(images, [None, None, None, 3])


def color_distortion(
    images: tf.Tensor,
    seed,
    *,
    strength: float = DEFAULT_COLOR_JITTER_STRENGTH,
    brightness: str = "multiplicative",
    jitter_p: float = JITTER_P,
    grayscale_p: float = GRAYSCALE_P,
    xla: bool = True,
) -> tf.Tensor:
    """SimCLR's colour distortion: colour jitter then, independently, grayscale."""
    s_jit, s_gray = _color_seeds(seed)
    x = color_jitter(images, s_jit, strength=strength, p=jitter_p, brightness=brightness, xla=xla)
    return grayscale(x, s_gray, p=grayscale_p, xla=xla)


def merge_sat_hue(order: tf.Tensor) -> tf.Tensor:
    """Where saturation (2) and hue (3) are adjacent in an image's order, run them as one
    HSV round trip: the earlier stage becomes 5 (both) and the later one 4 (nothing).

    They act on separate HSV coordinates, so adjacent they commute and the result is the same
    (``_sat_hue_kernel`` applies both).
    """
    pos = tf.range(4)[None, :]
    ps = tf.argmax(tf.cast(order == 2, tf.int32), axis=1, output_type=tf.int32)[:, None]
    ph = tf.argmax(tf.cast(order == 3, tf.int32), axis=1, output_type=tf.int32)[:, None]
    adjacent = (tf.abs(ps - ph) == 1) & tf.reduce_any(order == 2, axis=1, keepdims=True)
    order = tf.where(adjacent & (pos == tf.minimum(ps, ph)), 5, order)
    return tf.where(adjacent & (pos == tf.maximum(ps, ph)), 4, order)


# --------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------
def _separable_blur(images: tf.Tensor, kernels: tf.Tensor) -> tf.Tensor:
    """Blur image b with the separable kernel kernels[b] ([B, K]), reflect padding."""
    k = kernels.shape[1]
    r = k // 2
    if r == 0:
        return images
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    c = images.shape[-1] or 3
    # Put the batch into channels so one depthwise convolution applies a different kernel to
    # every image.
    x = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, h, w, b * c])
    kern = tf.reshape(tf.repeat(kernels, c, axis=0), [-1, k])  # [B*C, K] channel-major
    kern = tf.transpose(kern)  # [K, B*C]
    x = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    x = tf.nn.depthwise_conv2d(x, kern[:, None, :, None], [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, kern[None, :, :, None], [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(x, [h, w, b, c]), [2, 0, 1, 3])


def gaussian_blur(
    images: tf.Tensor,
    seed,
    *,
    p: float = BLUR_P,
    sigma_range: tuple[float, float] = BLUR_SIGMA_RANGE,
    per_image: bool = True,
    xla: bool = True,
) -> tf.Tensor:
    """Gaussian blur with probability p per image; sigma ~ U[sigma_range], kernel 10% of the side.

    ``per_image=True`` (the paper) draws one sigma per image; ``per_image=False`` draws one
    sigma for the whole batch as the reference code does (images are still selected with p).
    Padding reflects the border so blurred edges do not darken. The side must be static.
    """
    images = to_float_image(images)
    side = images.shape[1]
    if side is None:
        raise ValueError("gaussian_blur needs a static image height (batch the images first).")
    b = _batch(images)
    u_select, sigma = _blur_draws(seed, b, per_image=per_image, sigma_range=sigma_range)
    kernels = blur_kernel(sigma, side)
    if kernels.shape[1] == 1:
        return images
    sel = u_select < p
    if xla:
        return _kernel("blur", True)(images, kernels, sel)
    if p >= 1.0:
        return tf.clip_by_value(_separable_blur(images, kernels), 0.0, 1.0)
    # Blur only the selected images (about half): partition, blur, stitch back.
    which = tf.cast(sel, tf.int32)
    idx = tf.range(b)
    parts = tf.dynamic_partition(images, which, 2)
    ids = tf.dynamic_partition(idx, which, 2)
    # MirrorPad rejects empty tensors: blur one extra dummy image so the batch is never empty.
    sel_images = tf.concat([parts[1], tf.zeros_like(images[:1])], axis=0)
    sel_kernels = tf.concat([tf.gather(kernels, ids[1]), kernels[:1]], axis=0)
    blurred = _separable_blur(sel_images, sel_kernels)[:-1]
    out = tf.dynamic_stitch(ids, [parts[0], tf.clip_by_value(blurred, 0.0, 1.0)])
    return tf.ensure_shape(out, images.shape)
