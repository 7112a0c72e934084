"""SimCLR data augmentation in pure TensorFlow, vectorised over batches.

Every operator takes a batch ``images`` (float32 NHWC in [0, 1]) and a stateless seed (an int
tensor of shape [2]) and returns a batch of the same dtype. The same seed always gives the same
output; different operators derive their own sub-seeds, so views drawn with different seeds are
independent. Random parameters are drawn per image (one set per row of the batch), so a batch of
B images gets B independent transformations from one vectorised call. The entry points
(``augment_batch``, ``augment_image``, ``augment_single``, ``augment_single_crop``,
``leading_crop``, ``preprocess_for_eval``) also take uint8 and refuse other dtypes, other
layouts and float values outside [0, 1] (``tf_simclr.validation.check_images``, one reduction
per float input); the operators trust their input.

Operators follow the SimCLR papers (Chen et al. 2020, arXiv:2002.05709, Appendix A;
SimCLRv2, arXiv:2006.10029) and the authors' reference code:

* ``crop``: random resized crop, area U[0.08, 1], log-uniform aspect ratio in [3/4, 4/3] of the
  target aspect, up to 100 attempts then the whole image, bicubic resize (bit-for-bit the
  kernel of ``tf.image.resize(method="bicubic")``, computed as per-image separable matrices).
* ``flip``: horizontal flip with p = 0.5.
* ``color``: colour jitter (p = 0.8; brightness, contrast, saturation, hue at 0.8s/0.8s/0.8s/0.2s
  in a random order per image, clipped after each) followed by grayscale (p = 0.2).
* ``blur``: Gaussian blur with p = 0.5, sigma U[0.1, 2.0], kernel 10% of the side.
* Composition-study operators: ``rotation`` (90/180/270), ``cutout``, ``noise`` (Gaussian),
  ``sobel``, ``color_drop`` (grayscale always), ``color_jitter`` (jitter without grayscale),
  ``grayscale`` (p = 0.2 alone), ``crop_no_resize`` (random window, no rescaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf

from tf_simclr.validation import check_images

__all__ = [
    "AUGMENTATION_PRESETS",
    "AugmentationPreset",
    "OPERATORS",
    "augment_batch",
    "apply_color_ops",
    "augment_image",
    "augment_finish_batch",
    "augment_single",
    "augment_single_crop",
    "bicubic_resize_matrix",
    "blur_kernel",
    "color_distortion",
    "color_jitter",
    "color_op_order",
    "crop_and_resize",
    "crop_no_resize",
    "cutout",
    "flip",
    "gaussian_blur",
    "gaussian_noise",
    "has_crop_stage",
    "merge_sat_hue",
    "grayscale",
    "parse_augmentations",
    "preprocess_for_eval",
    "random_resized_crop",
    "resolve_augmentations",
    "rotation",
    "sample_crop_boxes",
    "sobel",
    "to_float_image",
]


class AugmentationPreset(NamedTuple):
    """A named recipe: the ordered operators and the colour-jitter strength s."""

    augmentations: tuple[str, ...]
    color_jitter_strength: float


# The ImageNet recipe of the paper and the CIFAR recipe of its Appendix B.9 (no blur, s = 0.5).
AUGMENTATION_PRESETS: dict[str, AugmentationPreset] = {
    "imagenet": AugmentationPreset(("crop", "flip", "color", "blur"), 1.0),
    "cifar": AugmentationPreset(("crop", "flip", "color"), 0.5),
    "finetune": AugmentationPreset(("crop", "flip"), 0.0),
    "none": AugmentationPreset((), 0.0),
}

# name -> one-line description (the order here is only for listing them in errors and docs).
OPERATORS: dict[str, str] = {
    "crop": "random resized crop (area 0.08-1, aspect 3/4-4/3, bicubic resize)",
    "crop_no_resize": "random image_size window of the image padded by 1/8 (no rescaling)",
    "flip": "horizontal flip, p=0.5",
    "color": "colour jitter (p=0.8) then grayscale (p=0.2)",
    "color_jitter": "colour jitter only (p=0.8)",
    "grayscale": "grayscale, p=0.2",
    "color_drop": "grayscale always (the paper's 'colour drop')",
    "blur": "Gaussian blur, p=0.5, sigma U[0.1, 2], kernel 10% of the side",
    "rotation": "rotation by 90, 180 or 270 degrees",
    "cutout": "one black square of half the side at a random centre",
    "noise": "additive Gaussian noise, stddev 0.1",
    "sobel": "Sobel edge magnitude of the grayscale image",
}

_CROP_OPS = ("crop", "crop_no_resize")


# --------------------------------------------------------------------------------------------
# Composition by name
# --------------------------------------------------------------------------------------------
def parse_augmentations(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn "crop,flip,color,blur" (or a preset name, or a list of names) into a tuple of names.

    Raises ValueError naming the unknown operator and listing the valid ones.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in AUGMENTATION_PRESETS:
            return AUGMENTATION_PRESETS[key].augmentations
        names = [s.strip().lower() for s in key.replace("+", ",").split(",")]
    else:
        names = [str(s).strip().lower() for s in spec]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in OPERATORS]
    if unknown:
        raise ValueError(
            f"Unknown augmentation(s) {unknown} in {spec!r}. Valid operators: "
            f"{', '.join(OPERATORS)}; presets: {', '.join(AUGMENTATION_PRESETS)}. "
            "Write a composition as a comma-separated list, e.g. 'crop,flip,color,blur'."
        )
    return tuple(names)


def resolve_augmentations(
    spec: str | Sequence[str] | None, color_jitter_strength: float | None = None
) -> tuple[tuple[str, ...], float]:
    """Return (operators, colour strength); a preset supplies its strength unless one is given."""
    strength = color_jitter_strength
    if isinstance(spec, str) and spec.strip().lower() in AUGMENTATION_PRESETS:
        preset = AUGMENTATION_PRESETS[spec.strip().lower()]
        if strength is None:
            strength = preset.color_jitter_strength
    if strength is None:
        strength = 1.0
    if strength < 0:
        raise ValueError(f"color_jitter_strength must be >= 0, got {strength}.")
    return parse_augmentations(spec), float(strength)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def to_float_image(images: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float inputs are cast to float32 and left as they are."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (1.0 / 255.0)
    return tf.cast(images, tf.float32)


def _seeds(seed, n: int) -> list[tf.Tensor]:
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n), num=n)


def _uniform(shape, seed, lo=0.0, hi=1.0):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=tf.float32)


def _bernoulli(batch: tf.Tensor, p: float, seed) -> tf.Tensor:
    return _uniform([batch], seed) < p


def _where_images(mask: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.where(mask[:, None, None, None], a, b)


def _gray(images: tf.Tensor) -> tf.Tensor:
    # Same luma weights as tf.image.rgb_to_grayscale.
    g = tf.tensordot(images, tf.constant([0.2989, 0.5870, 0.1140], tf.float32), axes=[[-1], [0]])
    return g[..., None]


def _batch(images: tf.Tensor) -> tf.Tensor:
    return tf.shape(images)[0]


# --------------------------------------------------------------------------------------------
# XLA kernels. Random parameters are drawn outside (plain TF stateless ops, so results do not
# depend on XLA); the deterministic per-pixel work runs in XLA-compiled functions, which fuse
# the many elementwise steps into a few loops (3-10x faster than op-by-op execution on CPU).
# Each operator is a separate compiled function so XLA never duplicates work across them.
# --------------------------------------------------------------------------------------------
def _jit(fn):
    return tf.function(fn, jit_compile=True, autograph=False)


def _f4(v):
    return v[:, None, None, None]


def _flip_kernel(x, mask):
    return tf.where(_f4(mask), tf.reverse(x, [2]), x)


def _gray_kernel(x, mask):
    g = x[..., 0:1] * 0.2989 + x[..., 1:2] * 0.5870 + x[..., 2:3] * 0.1140
    return tf.where(_f4(mask), tf.broadcast_to(g, tf.shape(x)), x)


def _channel_means(x):
    """Per-image channel means [B, 1, 1, C] of x [B, H, W, C], inside XLA kernels.

    Written as a product with a constant vector: on TF 2.21's XLA CPU this runs as a matrix
    product, while reduce_mean over H and W took about 12% of the 32 px pipeline's CPU."""
    h, w, c = x.shape[1:]
    if h is None or w is None or c is None:  # traced without static sizes
        return tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    flat = tf.reshape(x, [-1, h * w, c])
    return tf.einsum("bnc,n->bc", flat, tf.fill([h * w], 1.0 / (h * w)))[:, None, None, :]


def _jitter_stage_kernel(x, which, fb, fc, fs, dh, additive):
    """One stage of colour jitter: image i runs operation which[i] (4 = none).

    All candidates are computed and one is selected per image; XLA fuses this into one pass,
    which is cheaper than partitioning the batch. Saturation and hue share one HSV round trip
    (tf.image.adjust_saturation / adjust_hue are defined in HSV).
    """
    w = _f4(which)
    xb = x + _f4(fb) if additive else x * _f4(fb)
    mean = _channel_means(x)
    xc = (x - mean) * _f4(fc) + mean
    hsv = tf.image.rgb_to_hsv(x)
    h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
    s = tf.where(w == 2, tf.clip_by_value(s * _f4(fs), 0.0, 1.0), s)
    h = tf.where(w == 3, tf.math.floormod(h + _f4(dh), 1.0), h)
    xhs = tf.image.hsv_to_rgb(tf.concat([h, s, v], axis=-1))
    out = tf.where(w == 0, xb, tf.where(w == 1, xc, tf.where((w == 2) | (w == 3), xhs, x)))
    return tf.clip_by_value(out, 0.0, 1.0)


def _resize_matmul_kernel(images, boxes, flip_mask, out_h, out_w):
    """Crop + bicubic resize (+ optional horizontal flip) as two batched matrix products.

    Flipping the output is reversing the rows of the horizontal matrix, so a flip that follows
    the crop costs nothing. uint8 input is scaled to [0, 1] inside the kernel.
    """
    scale = 1.0 / 255.0 if images.dtype == tf.uint8 else 1.0
    images = tf.cast(images, tf.float32)
    my = bicubic_resize_matrix(boxes[:, 0], boxes[:, 2], images.shape[1], out_h) * scale
    mx = bicubic_resize_matrix(boxes[:, 1], boxes[:, 3], images.shape[2], out_w)
    mx = tf.where(flip_mask[:, None, None], tf.reverse(mx, [1]), mx)
    out = tf.einsum("boh,bhwc->bowc", my, images)
    out = tf.einsum("bpw,bowc->bopc", mx, out)
    return tf.clip_by_value(out, 0.0, 1.0)


def _blur_matrices(kernels, n):
    """[B, n, n] matrices applying kernels[b] along an axis of n pixels with reflect padding."""
    k = kernels.shape[1]
    r = k // 2
    idx = tf.range(n)[:, None] + tf.range(k)[None, :] - r
    idx = tf.abs(idx)
    idx = tf.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return tf.einsum("bk,okn->bon", kernels, tf.one_hot(idx, n, dtype=tf.float32))


def _blur_shift_add(x, kernels):
    """Separable blur of [B, H, W, C] as sums of shifted copies (reflect padding).

    Rows are viewed as [B, H, W*C] so every shifted read is contiguous; XLA fuses the K
    multiply-adds of each pass into one vectorised loop (cheaper than matrices at large sides).
    """
    k = kernels.shape[1]
    r = k // 2
    b, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    wk = kernels[:, :, None, None]  # [B, K, 1, 1]
    xp = tf.reshape(tf.pad(x, [[0, 0], [0, 0], [r, r], [0, 0]], mode="REFLECT"), [b, h, -1])
    y = tf.add_n([wk[:, i] * xp[:, :, c * i : c * i + w * c] for i in range(k)])
    yp = tf.pad(y, [[0, 0], [r, r], [0, 0]], mode="REFLECT")
    y = tf.add_n([wk[:, i] * yp[:, i : i + h, :] for i in range(k)])
    return tf.reshape(y, [b, h, w, c])


def _blur_kernel_matmul(x, kernels, mask):
    """Separable blur as batched matrix products (reflect padding folded into the matrices)."""
    b, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    if max(h, w) > 64:
        y = _blur_shift_add(x, kernels)
    else:
        my = _blur_matrices(kernels, h)
        mx = _blur_matrices(kernels, w) if w != h else my
        y = tf.reshape(tf.matmul(my, tf.reshape(x, [b, h, w * c])), [b, h, w, c])
        y = tf.einsum("bpw,bhwc->bhpc", mx, y)
    return tf.where(_f4(mask), tf.clip_by_value(y, 0.0, 1.0), x)


def _brightness_kernel(x, f, additive):
    return tf.clip_by_value(x + _f4(f) if additive else x * _f4(f), 0.0, 1.0)


def _contrast_kernel(x, f):
    mean = _channel_means(x)
    return tf.clip_by_value((x - mean) * _f4(f) + mean, 0.0, 1.0)


def _sat_hue_kernel(x, fs, dh):
    """Saturation factor fs and hue shift dh in one HSV round trip (they commute in HSV)."""
    hsv = tf.image.rgb_to_hsv(x)
    h = tf.math.floormod(hsv[..., 0:1] + _f4(dh), 1.0)
    s = tf.clip_by_value(hsv[..., 1:2] * _f4(fs), 0.0, 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([h, s, hsv[..., 2:3]], -1)), 0.0, 1.0)


_KERNELS = {
    "flip": _flip_kernel,
    "gray": _gray_kernel,
    "jitter_stage": _jitter_stage_kernel,
    "resize": _resize_matmul_kernel,
    "blur": _blur_kernel_matmul,
    "brightness": _brightness_kernel,
    "contrast": _contrast_kernel,
    "sat_hue": _sat_hue_kernel,
}
_JIT_KERNELS = {name: _jit(fn) for name, fn in _KERNELS.items()}


def _kernel(name: str, xla: bool):
    return _JIT_KERNELS[name] if xla else _KERNELS[name]


# --------------------------------------------------------------------------------------------
# Random resized crop
# --------------------------------------------------------------------------------------------
def sample_crop_boxes(
    seed,
    height,
    width,
    batch_size,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    target_aspect: float = 1.0,
    max_attempts: int = 100,
) -> tf.Tensor:
    """Sample integer crop boxes [B, 4] = (y0, x0, h, w) inside images of size height x width.

    Each attempt draws the area fraction uniformly in ``area_range`` and the aspect ratio (w/h)
    log-uniformly in ``aspect_range`` times ``target_aspect``; the first attempt that fits is
    kept, and after ``max_attempts`` misses the whole image is used. The offset is uniform.
    ``height``/``width`` may be scalars or [B] tensors.
    """
    draws = _crop_draws(seed, batch_size, area_range, aspect_range, target_aspect, max_attempts)
    return _boxes_from_draws(*draws, height, width)


def _crop_draws(seed, b, area_range, aspect_range, target_aspect, max_attempts):
    """The random numbers of sample_crop_boxes: area fractions, aspect ratios, offsets."""
    s_area, s_ratio, s_y, s_x = _seeds(seed, 4)
    frac = _uniform([b, max_attempts], s_area, area_range[0], area_range[1])
    log_lo = math.log(aspect_range[0] * target_aspect)
    log_hi = math.log(aspect_range[1] * target_aspect)
    ratio = tf.exp(_uniform([b, max_attempts], s_ratio, log_lo, log_hi))
    return frac, ratio, _uniform([b], s_y), _uniform([b], s_x)


def _boxes_from_draws(frac, ratio, u_y, u_x, height, width):
    # Plain arithmetic on the draws, so it gives the same boxes inside XLA kernels.
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


def _keys_cubic(t: tf.Tensor, a: float = -0.5) -> tf.Tensor:
    t = tf.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return tf.where(t <= 1.0, near, tf.where(t < 2.0, far, tf.zeros_like(t)))


def bicubic_resize_matrix(start, length, in_size: int, out_size: int) -> tf.Tensor:
    """Per-image interpolation matrices [B, out_size, in_size] for a 1-D crop-and-resize.

    Row i holds the weights that ``tf.image.resize(crop, method="bicubic")`` gives the input
    pixels (half-pixel centres, Keys cubic a=-0.5 quantised to 1/1024 pixel as in TF's kernel,
    taps outside the crop dropped and the rest renormalised), for the crop
    [start, start+length) of an axis of ``in_size`` pixels. ``start``/``length``: [B] ints.
    """
    start = tf.cast(start, tf.float32)[:, None]
    length = tf.cast(length, tf.float32)[:, None]
    i = tf.range(out_size, dtype=tf.float32)[None, :]
    src = (i + 0.5) * (length / float(out_size)) - 0.5  # [B, out], relative to the crop
    base = tf.floor(src)
    # TF's kernel looks the weights up in a 1024-entry table.
    delta = tf.round((src - base) * 1024.0) / 1024.0
    taps = base[..., None] + tf.constant([-1.0, 0.0, 1.0, 2.0])  # [B, out, 4]
    w = _keys_cubic(delta[..., None] - tf.constant([-1.0, 0.0, 1.0, 2.0]))
    inside = (taps >= 0.0) & (taps <= length[..., None] - 1.0)
    w = tf.where(inside, w, 0.0)
    w = w / tf.reduce_sum(w, axis=-1, keepdims=True)
    idx = tf.cast(tf.clip_by_value(taps, 0.0, length[..., None] - 1.0) + start[..., None], tf.int32)
    onehot = tf.one_hot(idx, in_size, dtype=tf.float32)  # [B, out, 4, in]
    return tf.einsum("bok,boki->boi", w, onehot)


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

    def one(args):
        img, box = args
        crop = img[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        return tf.image.resize(crop, (out_h, out_w), method="bicubic")

    out = tf.map_fn(
        one,
        (images, boxes),
        fn_output_signature=tf.TensorSpec([out_h, out_w, images.shape[-1]], tf.float32),
    )
    out = tf.where(flip_mask[:, None, None, None], tf.reverse(out, [2]), out)
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(
    images: tf.Tensor,
    seed,
    *,
    size: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    max_attempts: int = 100,
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


def _pad_to_at_least(images: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.shape(images)
    ph = tf.maximum(size - shape[1], 0)
    pw = tf.maximum(size - shape[2], 0)
    return tf.pad(images, [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]])


def crop_no_resize(images: tf.Tensor, seed, *, size: int, pad_fraction: float = 0.125):
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
def flip(images: tf.Tensor, seed, *, p: float = 0.5, xla: bool = True) -> tf.Tensor:
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


def cutout(images: tf.Tensor, seed, *, fraction: float = 0.5) -> tf.Tensor:
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


def gaussian_noise(images: tf.Tensor, seed, *, stddev: float = 0.1) -> tf.Tensor:
    """Add N(0, stddev^2) noise per pixel and channel, clipped to [0, 1]."""
    images = to_float_image(images)
    noise = tf.random.stateless_normal(tf.shape(images), seed, stddev=stddev)
    return tf.clip_by_value(images + noise, 0.0, 1.0)


def sobel(images: tf.Tensor, seed=None) -> tf.Tensor:
    """Sobel gradient magnitude of the grayscale image, scaled so each image's max is 1."""
    del seed  # deterministic operator; the argument keeps the operator signature uniform
    images = to_float_image(images)
    edges = tf.image.sobel_edges(_gray(images))[..., 0, :]  # [B, H, W, 2]
    mag = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1, keepdims=True) + 1e-12)
    mag = mag / tf.maximum(tf.reduce_max(mag, axis=[1, 2, 3], keepdims=True), 1e-6)
    return tf.tile(tf.clip_by_value(mag, 0.0, 1.0), [1, 1, 1, 3])


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------
def grayscale(images: tf.Tensor, seed, *, p: float = 0.2, xla: bool = True) -> tf.Tensor:
    """Replace each image by its (3-channel) grayscale with probability p."""
    images = to_float_image(images)
    return _kernel("gray", xla)(images, _bernoulli(_batch(images), p, seed))


def _adjust_brightness(x, factor, additive):
    if additive:
        return tf.clip_by_value(x + factor[:, None, None, None], 0.0, 1.0)
    return tf.clip_by_value(x * factor[:, None, None, None], 0.0, 1.0)


def _adjust_contrast(x, factor):
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((x - mean) * factor[:, None, None, None] + mean, 0.0, 1.0)


def _saturate(x, factor):
    """tf.image.adjust_saturation in closed form (no HSV round trip), clipped to [0, 1].

    In HSV every channel is v * (1 - s * k(hue)), so scaling s by ``factor`` (clipped at 1)
    while keeping hue and value moves each channel c to v - (v - c) * min(factor, 1 / s).
    ``factor`` broadcasts against x [..., 3].
    """
    v = tf.reduce_max(x, axis=-1, keepdims=True)
    lo = tf.reduce_min(x, axis=-1, keepdims=True)
    s = tf.math.divide_no_nan(v - lo, v)
    scale = tf.minimum(factor, tf.math.divide_no_nan(1.0, s))
    return tf.clip_by_value(v - (v - x) * scale, 0.0, 1.0)


def _adjust_saturation(x, factor):
    return _saturate(x, factor[:, None, None, None])


def _adjust_hue(x, delta):
    hsv = tf.image.rgb_to_hsv(x)
    h = tf.math.floormod(hsv[..., :1] + delta[:, None, None, None], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([h, hsv[..., 1:]], -1)), 0.0, 1.0)


def _check_brightness(brightness: str) -> None:
    if brightness not in ("multiplicative", "additive"):
        raise ValueError(
            f"brightness must be 'multiplicative' (SimCLRv2) or 'additive' (SimCLRv1), "
            f"got {brightness!r}."
        )


def _jitter_draws(seed, batch, strength: float, brightness: str):
    """The random factors of colour jitter for `batch` images, shared by every jitter path so
    that a seed gives the same jitter whichever path runs: (brightness, contrast, saturation
    factors, hue shift, seed of the apply draw, seed of the order draw)."""
    _check_brightness(brightness)
    s_apply, s_b, s_c, s_s, s_h, s_perm = _seeds(seed, 6)
    mag = 0.8 * strength
    if brightness == "additive":
        f_b = _uniform([batch], s_b, -mag, mag)
    else:
        f_b = _uniform([batch], s_b, max(0.0, 1.0 - mag), 1.0 + mag)
    f_c = _uniform([batch], s_c, max(0.0, 1.0 - mag), 1.0 + mag)
    f_s = _uniform([batch], s_s, max(0.0, 1.0 - mag), 1.0 + mag)
    d_h = _uniform([batch], s_h, -0.2 * strength, 0.2 * strength)
    return f_b, f_c, f_s, d_h, s_apply, s_perm


def color_jitter(
    images: tf.Tensor,
    seed,
    *,
    strength: float = 1.0,
    p: float = 0.8,
    brightness: str = "multiplicative",
    random_order: bool = True,
    xla: bool = True,
) -> tf.Tensor:
    """With probability p per image: brightness, contrast, saturation (0.8s) and hue (0.2s).

    The four operations run in a random order per image (the reference's ``random_order``),
    clipping to [0, 1] after each. ``brightness="multiplicative"`` (SimCLRv2, default) scales by
    U[1-0.8s, 1+0.8s]; ``"additive"`` (SimCLRv1) adds U[-0.8s, 0.8s].
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


def color_op_order(batch, seed_apply, seed_perm, *, p: float = 0.8, random_order: bool = True):
    """[B, 4] operation ids per stage: a uniform random permutation of 0..3 (brightness,
    contrast, saturation, hue) for images jittered with probability p, else all 4 (nothing)."""
    apply = _bernoulli(batch, p, seed_apply)
    if random_order:
        # argsort of i.i.d. uniform keys is a uniformly random permutation.
        order = tf.cast(tf.argsort(_uniform([batch, 4], seed_perm), axis=1), tf.int32)
    else:
        order = tf.tile(tf.range(4)[None, :], [batch, 1])
    return tf.where(apply[:, None], order, 4)


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
    """
    images = to_float_image(images)
    b = _batch(images)
    ops = (
        lambda x, i: _adjust_brightness(x, tf.gather(brightness, i), additive),
        lambda x, i: _adjust_contrast(x, tf.gather(contrast, i)),
        lambda x, i: _adjust_saturation(x, tf.gather(saturation, i)),
        lambda x, i: _adjust_hue(x, tf.gather(hue, i)),
    )
    idx = tf.range(b)
    for stage in range(4):
        # Each image runs exactly one operation per stage: partition the batch by operation.
        which = tf.cast(order[:, stage], tf.int32)
        parts = tf.dynamic_partition(images, which, 5)
        ids = tf.dynamic_partition(idx, which, 5)
        outs = [op(parts[k], ids[k]) for k, op in enumerate(ops)] + [parts[4]]
        images = tf.dynamic_stitch(ids, outs)
    return tf.ensure_shape(images, [None, None, None, 3])


def color_distortion(
    images: tf.Tensor,
    seed,
    *,
    strength: float = 1.0,
    brightness: str = "multiplicative",
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    xla: bool = True,
) -> tf.Tensor:
    """SimCLR's colour distortion: colour jitter (p=0.8) then, independently, grayscale (p=0.2)."""
    s_jit, s_gray = _seeds(seed, 2)
    x = color_jitter(images, s_jit, strength=strength, p=jitter_p, brightness=brightness, xla=xla)
    return grayscale(x, s_gray, p=grayscale_p, xla=xla)


# --------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------
def blur_kernel(sigma: tf.Tensor, side: int) -> tf.Tensor:
    """Normalised 1-D Gaussian kernels [B, K] for sigmas [B]; K = 2*((side//10)//2)+1.

    Same size rule as the reference: kernel 10% of the side, made odd.
    """
    radius = (side // 10) // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    sigma = tf.cast(sigma, tf.float32)[:, None]
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
    return k / tf.reduce_sum(k, axis=1, keepdims=True)


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
    p: float = 0.5,
    sigma_range: tuple[float, float] = (0.1, 2.0),
    per_image: bool = True,
    xla: bool = True,
) -> tf.Tensor:
    """Gaussian blur with probability p per image; sigma ~ U[0.1, 2.0], kernel 10% of the side.

    ``per_image=True`` (the paper) draws one sigma per image; ``per_image=False`` draws one
    sigma for the whole batch as the reference code does (images are still selected with p).
    Padding reflects the border so blurred edges do not darken. The side must be static.
    """
    images = to_float_image(images)
    side = images.shape[1]
    if side is None:
        raise ValueError("gaussian_blur needs a static image height (batch the images first).")
    b = _batch(images)
    s_sel, s_sig = _seeds(seed, 2)
    if per_image:
        sigma = _uniform([b], s_sig, sigma_range[0], sigma_range[1])
    else:
        sigma = tf.fill([b], _uniform([], s_sig, sigma_range[0], sigma_range[1]))
    kernels = blur_kernel(sigma, side)
    if kernels.shape[1] == 1:
        return images
    sel = _bernoulli(b, p, s_sel)
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


# --------------------------------------------------------------------------------------------
# Compositions
# --------------------------------------------------------------------------------------------
def _resize_to(images: tf.Tensor, size: int) -> tf.Tensor:
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return tf.clip_by_value(tf.image.resize(images, (size, size), method="bicubic"), 0.0, 1.0)


def _apply_op(name, images, seed, *, image_size, strength, brightness, blur_per_image, xla):
    if name == "crop":
        return random_resized_crop(images, seed, size=image_size, xla=xla)
    if name == "crop_no_resize":
        return crop_no_resize(images, seed, size=image_size)
    if name == "flip":
        return flip(images, seed, xla=xla)
    if name == "color":
        return color_distortion(images, seed, strength=strength, brightness=brightness, xla=xla)
    if name == "color_jitter":
        return color_jitter(images, seed, strength=strength, brightness=brightness, xla=xla)
    if name == "grayscale":
        return grayscale(images, seed, p=0.2, xla=xla)
    if name == "color_drop":
        return grayscale(images, seed, p=1.0, xla=xla)
    if name == "blur":
        return gaussian_blur(images, seed, per_image=blur_per_image, xla=xla)
    if name == "rotation":
        return rotation(images, seed)
    if name == "cutout":
        return cutout(images, seed)
    if name == "noise":
        return gaussian_noise(images, seed)
    if name == "sobel":
        return sobel(images, seed)
    raise ValueError(f"Unknown augmentation {name!r}; valid: {', '.join(OPERATORS)}.")


def augment_batch(
    images: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = 1.0,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    skip_leading_crop: bool = False,
    xla: bool = True,
) -> tf.Tensor:
    """Augment a batch [B, H, W, 3] (uint8 or float in [0, 1]) -> float32 [B, S, S, 3] in [0, 1].

    Operators run in the order given (e.g. "crop,flip,color,blur" or a preset name). If the
    composition contains no crop, images are resized (bicubic) to image_size first. ``seed``
    is a shape-[2] int tensor: the same seed gives the same output. ``skip_leading_crop`` is
    for pipelines that already cropped each image (variable-size sources). ``xla`` runs the
    per-pixel work in XLA-compiled kernels (same results to ~1e-6, several times faster).
    Other dtypes, shapes or float values outside [0, 1] are refused (``check_images``).
    """
    return _augment_batch(
        check_images(images, name="images", rank=4),
        seed,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
        skip_leading_crop=skip_leading_crop,
        xla=xla,
    )


def _augment_batch(
    images: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations,
    color_jitter_strength,
    brightness,
    blur_per_image,
    skip_leading_crop,
    xla,
) -> tf.Tensor:
    ops = parse_augmentations(augmentations)
    if color_jitter_strength is None:
        _, color_jitter_strength = resolve_augmentations(augmentations)
    if skip_leading_crop and ops and ops[0] in _CROP_OPS:
        ops = ops[1:]
    elif not any(op in _CROP_OPS for op in ops):
        images = _resize_to(to_float_image(images), image_size)
    if not ops or ops[0] != "crop":
        images = to_float_image(images)  # the crop kernel converts uint8 itself
    seeds = _seeds(seed, max(len(ops), 1))
    i = 0
    while i < len(ops):
        name, s = ops[i], seeds[i]
        if name == "crop" and i + 1 < len(ops) and ops[i + 1] == "flip":
            # A flip right after the crop is folded into the crop's resize matrices (free);
            # its draw is exactly the one flip() would make with its own seed.
            mask = _bernoulli(_batch(images), 0.5, seeds[i + 1])
            images = random_resized_crop(images, s, size=image_size, xla=xla, flip_mask=mask)
            i += 2
            continue
        images = _apply_op(
            name,
            images,
            s,
            image_size=image_size,
            strength=color_jitter_strength,
            brightness=brightness,
            blur_per_image=blur_per_image,
            xla=xla,
        )
        i += 1
    images = _resize_to(images, image_size)
    return tf.ensure_shape(images, [None, image_size, image_size, 3])


def augment_image(
    image: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = 1.0,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    skip_leading_crop: bool = False,
    xla: bool = True,
) -> tf.Tensor:
    """augment_batch for one image [H, W, 3] (e.g. inside a per-example tf.data map)."""
    image = check_images(image, name="image", rank=3)
    return _augment_batch(
        image[None],
        seed,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
        skip_leading_crop=skip_leading_crop,
        xla=xla,
    )[0]


def leading_crop(
    image: tf.Tensor, seed, *, image_size: int, augmentations: str | Sequence[str]
) -> tf.Tensor:
    """Apply only the first operator if it is a crop, else resize: for variable-size images.

    Used per example in tf.data before batching; ``augment_batch(..., skip_leading_crop=True)``
    then applies the rest to whole batches.
    """
    image = check_images(image, name="image", rank=3)
    return _leading_crop(image, seed, image_size=image_size, augmentations=augmentations)


def _leading_crop(image, seed, *, image_size, augmentations):
    ops = parse_augmentations(augmentations)
    if ops and ops[0] == "crop":
        # Cut the crop first and convert only it: the source may be much larger than the crop.
        image = tf.convert_to_tensor(image)
        shape = tf.shape(image)
        box = sample_crop_boxes(seed, shape[0], shape[1], 1)[0]
        crop = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        out = tf.image.resize(crop, (image_size, image_size), method="bicubic")
        if image.dtype == tf.uint8:
            out = out * (1.0 / 255.0)
        return tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0), [image_size, image_size, 3])
    image = to_float_image(image)[None]
    if ops and ops[0] == "crop_no_resize":
        return tf.ensure_shape(
            crop_no_resize(image, seed, size=image_size)[0], [image_size] * 2 + [3]
        )
    return tf.ensure_shape(_resize_to_dynamic(image, image_size)[0], [image_size, image_size, 3])


def _resize_to_dynamic(images: tf.Tensor, size: int) -> tf.Tensor:
    return tf.clip_by_value(tf.image.resize(images, (size, size), method="bicubic"), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# One image at a time (large or variable-size images)
# --------------------------------------------------------------------------------------------
def merge_sat_hue(order: tf.Tensor) -> tf.Tensor:
    """Where saturation (2) and hue (3) are adjacent in an image's order, run them as one
    HSV round trip: the earlier stage becomes 5 (both) and the later one 4 (nothing).

    They act on separate HSV coordinates, so adjacent they commute and the result is the same.
    """
    pos = tf.range(4)[None, :]
    ps = tf.argmax(tf.cast(order == 2, tf.int32), axis=1, output_type=tf.int32)[:, None]
    ph = tf.argmax(tf.cast(order == 3, tf.int32), axis=1, output_type=tf.int32)[:, None]
    adjacent = (tf.abs(ps - ph) == 1) & tf.reduce_any(order == 2, axis=1, keepdims=True)
    order = tf.where(adjacent & (pos == tf.minimum(ps, ph)), 5, order)
    return tf.where(adjacent & (pos == tf.maximum(ps, ph)), 4, order)


def _color_jitter_one(x, seed, *, strength, p, brightness):
    """color_jitter for a batch of one: only the drawn operations run (tf.switch_case)."""
    f_b, f_c, f_s, d_h, s_apply, s_perm = _jitter_draws(seed, 1, strength, brightness)
    additive = brightness == "additive"
    order = merge_sat_hue(color_op_order(1, s_apply, s_perm, p=p))[0]
    bright, contrast, sat_hue = (_kernel(n, True) for n in ("brightness", "contrast", "sat_hue"))
    one, zero = tf.ones([1]), tf.zeros([1])
    for k in range(4):
        x = tf.switch_case(
            order[k],
            [
                lambda x=x: bright(x, f_b, additive),
                lambda x=x: contrast(x, f_c),
                lambda x=x: sat_hue(x, f_s, zero),
                lambda x=x: sat_hue(x, one, d_h),
                lambda x=x: x,
                lambda x=x: sat_hue(x, f_s, d_h),
            ],
        )
    return x


# The fused single-image path. Per view it runs: the random draws (plain TF stateless ops,
# exactly the draws of the per-operator path, so a seed gives the same view as before), one
# small XLA kernel turning them into the crop box and the operation choices, tf.image.resize
# of the cut crop, and ONE XLA kernel for everything pixel-wise (scale, flip, colour jitter
# in the drawn order, grayscale and, when drawn, the blur as an XLA conditional on channel
# planes). Inside tf.data every TF op costs ~10 us and every XLA call ~100 us whatever its
# size, so the fewer the better. Measured dead ends (TF 2.21, CPU): unrolled XLA conditionals
# for the four jitter stages compile for ~1 min and run slower than separate kernels; an XLA
# gather-based bicubic crop and gather-based blur chunks were slower than tf.image.resize and
# the slice-concat blur; the blur as banded matrix products (HWC layout copies dominate), as
# a separate XLA call or as a tf.cond between two colour kernels (the cond around an XLA call
# costs ~0.5 ms in a tf.data map), or as a sixth stage of the jitter loop (the loop state
# then gets copied every stage) were all slower than the in-kernel conditional.
# The pipeline splits this path in two (augment_single_crop per image, augment_finish_batch per
# batch): the pixel-wise kernel then runs over a whole batch in one XLA call (an XLA loop over
# the images), which cuts the per-call overhead and makes the in-kernel blur about 3x cheaper
# than one call per image; the 224 px two-view pipeline ran 1.1-1.2x faster.
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


def _view_params_kernel(hw, frac, ratio, u_y, u_x, u_flip, u_apply, u_perm, u_gray, u_blur):
    """Draws -> crop box, flip, colour order (4 = none), grayscale, blur, for one image."""
    box = _boxes_from_draws(frac, ratio, u_y, u_x, hw[0], hw[1])[0]
    order = tf.cast(tf.argsort(u_perm[0]), tf.int32)  # as color_op_order
    order = tf.where(u_apply[0] < 0.8, order, 4)
    return box, u_flip[0] < 0.5, order, u_gray[0] < 0.2, u_blur < 0.5


def _hue_shift_planes(r, g, b, dh):
    """adjust_hue on channel planes: the RGB -> HSV -> RGB arithmetic of TF's XLA kernels."""
    v = tf.maximum(tf.maximum(r, g), b)
    rng = v - tf.minimum(tf.minimum(r, g), b)
    sat = tf.where(v > 0.0, rng / v, 0.0)
    norm = 1.0 / (6.0 * rng)
    h = tf.where(g == v, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
    h = tf.where(r == v, norm * (g - b), h)
    h = tf.where(rng > 0.0, h, 0.0)
    h = tf.where(h < 0.0, h + 1.0, h)
    h6 = tf.math.floormod(h + dh, 1.0) * 6.0
    dr = tf.clip_by_value(tf.abs(h6 - 3.0) - 1.0, 0.0, 1.0)
    dg = tf.clip_by_value(2.0 - tf.abs(h6 - 2.0), 0.0, 1.0)
    db = tf.clip_by_value(2.0 - tf.abs(h6 - 4.0), 0.0, 1.0)
    one_minus_s = 1.0 - sat
    return tuple(tf.clip_by_value(v * (one_minus_s + sat * d), 0.0, 1.0) for d in (dr, dg, db))


def _jitter_op_planes(rgb, op, fb, fc, fs, dh, additive):
    """One colour-jitter operation on channel planes, clipped: op 0 brightness, 1 contrast,
    2 saturation (closed form), 3 hue, 4 nothing. Only the chosen one runs (an XLA
    conditional), so each stage's result is materialised once."""
    r, g, b = rgb

    def bright():
        return tuple(tf.clip_by_value(c + fb if additive else c * fb, 0.0, 1.0) for c in rgb)

    def contrast():
        return tuple(
            tf.clip_by_value((c - tf.reduce_mean(c)) * fc + tf.reduce_mean(c), 0.0, 1.0)
            for c in rgb
        )

    def saturation():
        v = tf.maximum(tf.maximum(r, g), b)
        lo = tf.minimum(tf.minimum(r, g), b)
        scale = tf.minimum(fs, tf.math.divide_no_nan(1.0, tf.math.divide_no_nan(v - lo, v)))
        return tuple(tf.clip_by_value(v - (v - c) * scale, 0.0, 1.0) for c in rgb)

    return tf.switch_case(
        op,
        [bright, contrast, saturation, lambda: _hue_shift_planes(r, g, b, dh), lambda: rgb],
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

    ``order`` [4]: the operation of each jitter stage (4 = none). The stages run in an XLA
    loop around one conditional, so only the drawn operations run and each is compiled once.
    Works on the channel planes: XLA handles per-pixel arithmetic across three planes far
    better than reductions over a size-3 axis, and the blur's shifted reads are contiguous
    there. The blur is an XLA conditional inside this kernel: measured in a tf.data map, a
    tf.cond around a second XLA call costs more than the blur itself."""
    rgb = (x[..., 0], x[..., 1], x[..., 2])

    def body(k, r, g, b):
        out = _jitter_op_planes((r, g, b), order[k], fb, fc, fs, dh, additive)
        return (k + 1, *out)

    def more(k, *_):  # order is a permutation (jitter drawn) or all 4 (not drawn)
        return (k < 4) & (tf.gather(order, tf.minimum(k, 3)) < 4)

    rgb = tf.while_loop(more, body, (tf.constant(0), *rgb))[1:]
    g = rgb[0] * 0.2989 + rgb[1] * 0.5870 + rgb[2] * 0.1140
    if kern is None:
        return tf.stack([tf.where(gray, g, c) for c in rgb], axis=-1)
    p = tf.stack([tf.where(gray, g, c) for c in rgb], axis=0)
    p = tf.cond(blur, lambda: tf.clip_by_value(_blur_planes(p, kern), 0.0, 1.0), lambda: p)
    return tf.transpose(p, [1, 2, 0])  # one interleave to HWC, blurred or not


def _view_color_kernel(x, scale, flip, *drawn_params, additive):
    """Everything after the crop for one image: _scale_flip, then _drawn_color_kernel with
    ``drawn_params`` (order, the four jitter factors, grayscale[, blur kernel, blur])."""
    return _drawn_color_kernel(_scale_flip(x, scale, flip), *drawn_params, additive=additive)


def _blur_planes(p: tf.Tensor, kern: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur of channel planes [C, H, W] (reflect padding), not clipped.

    Each pass is a sum of shifted copies of the padded planes, pairing the taps of the
    symmetric kernel (k[j] = k[K-1-j]) so each pair costs one multiply. On planes every
    shifted read is contiguous along W, which XLA fuses into one vectorised loop per pass;
    the banded matrix products this replaced (with their HWC layout copies) cost 2-4x
    more at 224 px."""
    k = kern.shape[0]
    r = k // 2

    def one_pass(x, axis):
        n = x.shape[axis]
        pads = [[0, 0], [0, 0], [0, 0]]
        pads[axis] = [r, r]
        xp = tf.pad(x, pads, mode="REFLECT")
        tap = (lambda i: xp[:, i : i + n]) if axis == 1 else (lambda i: xp[:, :, i : i + n])
        acc = kern[r] * tap(r)
        for j in range(r):
            acc = acc + kern[j] * (tap(j) + tap(k - 1 - j))
        return acc

    return one_pass(one_pass(p, 1), 2)


def _blur_image_kernel(x, kern):
    """Separable Gaussian blur of one image [H, W, C] (reflect padding), clipped to [0, 1].

    The fused path blurs inside ``_drawn_color_kernel``; this HWC form is for direct use."""
    y = _blur_planes(tf.transpose(x, [2, 0, 1]), kern)
    return tf.clip_by_value(tf.transpose(y, [1, 2, 0]), 0.0, 1.0)


_VIEW_PARAMS = _jit(_view_params_kernel)
_BLUR_IMAGE = _jit(_blur_image_kernel)
_VIEW_COLOR = {
    additive: _jit(lambda *args, additive=additive: _view_color_kernel(*args, additive=additive))
    for additive in (False, True)
}


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
    drawn = (order[:, 0] < 4) | gray  # order[:, 0] == 4: jitter not drawn
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


_VIEW_COLOR_BATCH = {
    additive: _jit(lambda *a, additive=additive: _view_color_batch_kernel(*a, additive=additive))
    for additive in (False, True)
}


def _fused_crop(image, seed, plan, *, image_size, strength, brightness, n_ops):
    """First half of the fused path: the draws, and the drawn crop cut from the full-size image
    and resized to [S, S, 3] float32 (source scale). Returns (resized, params): params are the
    arguments of ``_view_color_kernel`` after the image (scale, flip, order, the four jitter
    factors, grayscale, and the blur kernel and draw when the composition blurs)."""
    image = tf.convert_to_tensor(image)
    seeds = _seeds(seed, n_ops)  # the same per-operator seeds as the generic path
    names = ["crop"] + [k for k in ("flip", "color", "blur") if plan[k]]
    s = dict(zip(names, seeds, strict=False))
    frac, ratio, u_y, u_x = _crop_draws(s["crop"], 1, (0.08, 1.0), (0.75, 4.0 / 3.0), 1.0, 100)
    never = tf.ones([1])  # a draw of 1 selects nothing
    u_flip = _uniform([1], s["flip"]) if plan["flip"] else never
    u_apply, u_perm, u_gray, u_blur = never, tf.zeros([1, 4]), never, never[0]
    fb = fc = fs = dh = tf.zeros([1])
    if plan["color"]:
        s_jit, s_gray = _seeds(s["color"], 2)
        fb, fc, fs, dh, s_apply, s_perm = _jitter_draws(s_jit, 1, strength, brightness)
        u_apply, u_perm = _uniform([1], s_apply), _uniform([1, 4], s_perm)
        if plan["color"] == "color":
            u_gray = _uniform([1], s_gray)
    kern = None
    if plan["blur"]:
        s_sel, s_sig = _seeds(s["blur"], 2)
        kern = blur_kernel(_uniform([1], s_sig, 0.1, 2.0), image_size)[0]
        u_blur = _uniform([], s_sel)
    hw = tf.shape(image)[:2]
    box, flip, order, gray, blur = _VIEW_PARAMS(
        hw, frac, ratio, u_y, u_x, u_flip, u_apply, u_perm, u_gray, u_blur
    )
    # Cut the crop first and convert only it: the source may be much larger than the crop.
    # Converting to float before the resize gives the same values (the resize kernel computes
    # in float32) and runs its float specialisation, about 30% faster than the uint8 one.
    crop = tf.cast(image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]], tf.float32)
    x = tf.image.resize(crop, (image_size, image_size), method="bicubic")
    x = tf.ensure_shape(x, [image_size, image_size, 3])
    scale = tf.constant(1.0 / 255.0 if image.dtype == tf.uint8 else 1.0)
    params = (scale, flip, order, fb[0], fc[0], fs[0], dh[0], gray)
    if kern is not None and kern.shape[0] > 1:
        params = (*params, kern, blur)
    return x, params


def _augment_view_fused(image, seed, plan, *, image_size, strength, brightness, n_ops):
    """augment_single for crop[,flip][,color|color_jitter][,blur] (see the comment above)."""
    x, params = _fused_crop(
        image,
        seed,
        plan,
        image_size=image_size,
        strength=strength,
        brightness=brightness,
        n_ops=n_ops,
    )
    x = _VIEW_COLOR[brightness == "additive"](x, *params)
    return tf.ensure_shape(x, [image_size, image_size, 3])


def _single_setup(augmentations, color_jitter_strength, brightness):
    """Checked (ops, strength, fused plan or None) for augment_single and its crop stage."""
    _check_brightness(brightness)
    ops = parse_augmentations(augmentations)
    if color_jitter_strength is None:
        _, color_jitter_strength = resolve_augmentations(augmentations)
    return ops, color_jitter_strength, _fast_plan(ops)


def augment_single(
    image: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = 1.0,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
) -> tf.Tensor:
    """Augment one image [H, W, 3] of any size -> float32 [S, S, 3], skipping work not drawn.

    Same operators and distributions as augment_batch, organised for large images inside a
    parallel tf.data map: the crop is cut and resized by tf.image.resize from the full-size
    image, colour jitter runs only the operations drawn, and blur runs only when drawn.
    crop[,flip][,color|color_jitter][,blur] takes a fused path (few XLA kernels, see the
    comment above ``_FAST_OPS``); other compositions run operator by operator with the same
    draws. ``blur_per_image`` has no effect here (one image, one sigma). Deterministic given
    ``seed``. ``image`` is uint8 or float32 in [0, 1] (``check_images``).
    """
    del blur_per_image
    image = check_images(image, name="image", rank=3)
    ops, color_jitter_strength, plan = _single_setup(
        augmentations, color_jitter_strength, brightness
    )
    if plan is not None:
        return _augment_view_fused(
            image,
            seed,
            plan,
            image_size=image_size,
            strength=color_jitter_strength,
            brightness=brightness,
            n_ops=len(ops),
        )
    x = tf.convert_to_tensor(image)
    seeds = _seeds(seed, max(len(ops), 1))
    if not any(op in _CROP_OPS for op in ops):
        x = _resize_to_dynamic(to_float_image(x)[None], image_size)[0]
    x = x[None]
    for i, (name, s) in enumerate(zip(ops, seeds, strict=False)):
        if name == "crop" and i == 0:
            x = _leading_crop(x[0], s, image_size=image_size, augmentations="crop")[None]
            continue
        x = to_float_image(x)
        if name == "crop":
            x = _leading_crop(x[0], s, image_size=image_size, augmentations="crop")[None]
        elif name == "flip":
            # Only the drawn work: a flip costs one reverse for half of the images.
            x = tf.cond(_bernoulli(1, 0.5, s)[0], lambda x=x: tf.reverse(x, [2]), lambda x=x: x)
        elif name == "color" or name == "color_jitter":
            s_jit, s_gray = _seeds(s, 2)
            x = _color_jitter_one(
                x, s_jit, strength=color_jitter_strength, p=0.8, brightness=brightness
            )
            if name == "color":
                x = tf.cond(
                    _bernoulli(1, 0.2, s_gray)[0],
                    lambda x=x: tf.tile(_gray(x), [1, 1, 1, 3]),
                    lambda x=x: x,
                )
        elif name == "blur":
            s_sel, s_sig = _seeds(s, 2)
            side = x.shape[1]
            kern = blur_kernel(_uniform([1], s_sig, 0.1, 2.0), side)
            if kern.shape[1] > 1:
                blur = _kernel("blur", True)
                x = tf.cond(
                    _uniform([], s_sel) < 0.5,
                    lambda x=x, kern=kern, blur=blur: blur(x, kern, tf.ones([1], tf.bool)),
                    lambda x=x: x,
                )
        else:
            x = _apply_op(
                name,
                x,
                s,
                image_size=image_size,
                strength=color_jitter_strength,
                brightness=brightness,
                blur_per_image=True,
                xla=True,
            )
        x = tf.ensure_shape(x, [1, None, None, 3])
    x = _resize_to(x, image_size) if x.shape[1] is not None else _resize_to_dynamic(x, image_size)
    return tf.ensure_shape(x[0], [image_size, image_size, 3])


def has_crop_stage(augmentations: str | Sequence[str]) -> bool:
    """Whether ``augmentations`` can run as augment_single_crop + augment_finish_batch: a crop
    first, then any of flip, color (or color_jitter) and blur, in that order."""
    return _fast_plan(parse_augmentations(augmentations)) is not None


def augment_single_crop(
    image: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = 1.0,
    brightness: str = "multiplicative",
) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
    """First stage of augment_single for one image: ``(resized, params)``.

    ``resized`` is the drawn crop resized to float32 [S, S, 3] (source scale, not yet clipped);
    ``params`` are the draws of the remaining operations. Batch both (e.g. with
    ``tf.data.Dataset.batch``) and call augment_finish_batch: each image ends up exactly as
    augment_single makes it from the same seed, while the per-pixel work after the crop runs
    as one XLA call per batch. Only for compositions where has_crop_stage is true.
    """
    image = check_images(image, name="image", rank=3)
    ops, color_jitter_strength, plan = _single_setup(
        augmentations, color_jitter_strength, brightness
    )
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
        strength=color_jitter_strength,
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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def preprocess_for_eval(
    image: tf.Tensor, image_size: int, *, crop_proportion: float = 0.875
) -> tf.Tensor:
    """Central crop keeping 87.5% of the shorter side, then bicubic resize to image_size.

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
    if image_size > 32:
        short = tf.minimum(h, w)
        crop = tf.cast(tf.round(crop_proportion * tf.cast(short, tf.float32)), tf.int32)
        crop = tf.where(short <= 32, short, crop)
        ch = tf.where(short <= 32, h, crop)
        cw = tf.where(short <= 32, w, crop)
        y0 = (h - ch + 1) // 2
        x0 = (w - cw + 1) // 2
        image = image[:, y0 : y0 + ch, x0 : x0 + cw]
    static = image.shape[1] == image_size and image.shape[2] == image_size
    if not static:
        image = tf.image.resize(image, (image_size, image_size), method="bicubic")
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = tf.ensure_shape(image, [None, image_size, image_size, 3])
    return image[0] if single else image
