"""Per-pixel arithmetic shared by every path, and the batched XLA kernels built from it.

Random parameters are drawn outside (``draws``: plain TF stateless ops, so results do not
depend on XLA); the deterministic per-pixel work runs in XLA-compiled functions, which fuse
the many elementwise steps into a few loops (3-10x faster than op-by-op execution on CPU).
Each batched operator is a separate compiled function so XLA never duplicates work across
them; ``_kernel(name, xla=False)`` gives the same function uncompiled.

Colour operations come in two layouts with the same arithmetic where it can be shared:
stacked channels [..., 3] (batches) and channel planes (the fused one-image kernels, where XLA
handles per-pixel arithmetic across three planes far better than reductions over a size-3
axis). Each clips its result to [0, 1], as the paper's colour jitter does after every step.
"""

from __future__ import annotations

from types import MappingProxyType

import tensorflow as tf

from tf_simclr.augment.draws import BRIGHTNESS, CONTRAST, HUE, SATURATION
from tf_simclr.augment.params import BLUR_KERNEL_FRACTION

# The luma weights of tf.image.rgb_to_grayscale.
_LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _jit(fn):
    return tf.function(fn, jit_compile=True, autograph=False)


def _f4(v):
    """Per-image values [B] broadcast against images [B, H, W, C]."""
    return v[:, None, None, None]


def to_float_image(images: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float inputs are cast to float32 and left as they are."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) * (1.0 / 255.0)
    return tf.cast(images, tf.float32)


# --------------------------------------------------------------------------------------------
# Colour arithmetic
# --------------------------------------------------------------------------------------------
def _luma(r, g, b):
    """Grayscale of channels (planes or [..., 1] slices)."""
    return r * _LUMA_WEIGHTS[0] + g * _LUMA_WEIGHTS[1] + b * _LUMA_WEIGHTS[2]


def _luma_of(images: tf.Tensor) -> tf.Tensor:
    """Grayscale [..., 1] of images [..., 3]."""
    return _luma(images[..., 0:1], images[..., 1:2], images[..., 2:3])


def _channel_means(x):
    """Per-image channel means [B, 1, 1, C] of x [B, H, W, C], inside XLA kernels.

    Written as a product with a constant vector: on TF 2.21's XLA CPU this runs as a matrix
    product, while reduce_mean over H and W took about 12% of the 32 px pipeline's CPU."""
    h, w, c = x.shape[1:]
    if h is None or w is None or c is None:  # traced without static sizes
        return tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    flat = tf.reshape(x, [-1, h * w, c])
    return tf.einsum("bnc,n->bc", flat, tf.fill([h * w], 1.0 / (h * w)))[:, None, None, :]


def _brightness(x, factor, additive: bool):
    """Brightness: x * factor (SimCLRv2) or x + factor (SimCLRv1); factor broadcasts."""
    return tf.clip_by_value(x + factor if additive else x * factor, 0.0, 1.0)


def _contrast(x, factor, mean):
    """Contrast about ``mean`` (the channel mean of the image x belongs to)."""
    return tf.clip_by_value((x - mean) * factor + mean, 0.0, 1.0)


def _saturate_planes(r, g, b, factor):
    """tf.image.adjust_saturation in closed form (no HSV round trip) on channel planes.

    In HSV every channel is v * (1 - s * k(hue)), so scaling s by ``factor`` (clipped at 1)
    while keeping hue and value moves each channel c to v - (v - c) * min(factor, 1 / s).
    """
    v = tf.maximum(tf.maximum(r, g), b)
    lo = tf.minimum(tf.minimum(r, g), b)
    scale = tf.minimum(factor, tf.math.divide_no_nan(1.0, tf.math.divide_no_nan(v - lo, v)))
    return tuple(tf.clip_by_value(v - (v - c) * scale, 0.0, 1.0) for c in (r, g, b))


def _saturate(x, factor):
    """_saturate_planes on images [..., 3]; ``factor`` broadcasts against x."""
    return tf.concat(_saturate_planes(x[..., 0:1], x[..., 1:2], x[..., 2:3], factor), axis=-1)


def _sat_hue_kernel(x, fs, dh):
    """Saturation factors fs [B] and hue shifts dh [B] of images [B, H, W, 3] in one HSV round
    trip (they act on separate HSV coordinates, so the result is that of either order)."""
    hsv = tf.image.rgb_to_hsv(x)
    h = tf.math.floormod(hsv[..., 0:1] + _f4(dh), 1.0)
    s = tf.clip_by_value(hsv[..., 1:2] * _f4(fs), 0.0, 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.concat([h, s, hsv[..., 2:3]], -1)), 0.0, 1.0)


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


# --------------------------------------------------------------------------------------------
# Blur arithmetic
# --------------------------------------------------------------------------------------------
def blur_kernel(sigma: tf.Tensor, side: int) -> tf.Tensor:
    """Normalised 1-D Gaussian kernels [B, K] for sigmas [B].

    Same size rule as the reference: 10% of the side (``BLUR_KERNEL_FRACTION``) made odd,
    K = 2 * ((side // 10) // 2) + 1.
    """
    radius = int(side * BLUR_KERNEL_FRACTION) // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    sigma = tf.cast(sigma, tf.float32)[:, None]
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
    return k / tf.reduce_sum(k, axis=1, keepdims=True)


def _blur_planes(p: tf.Tensor, kern: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur of channel planes [..., H, W] (reflect padding), not clipped.

    ``kern`` is one kernel [K], or one per image [B, K] for planes [B, C, H, W]. Each pass is
    a sum of shifted copies of the padded planes, pairing the taps of the symmetric kernel
    (k[j] = k[K-1-j]) so each pair costs one multiply. On planes every shifted read is
    contiguous along W, which XLA fuses into one vectorised loop per pass; the banded matrix
    products this replaced (with their HWC layout copies) cost 2-4x more at 224 px."""
    k = kern.shape[-1]
    r = k // 2
    taps = tf.unstack(kern, axis=-1)
    if kern.shape.rank == 2:
        taps = [_f4(t) for t in taps]

    def one_pass(x, axis):
        n = x.shape[axis]
        pads = [[0, 0]] * x.shape.rank
        pads[axis] = [r, r]
        xp = tf.pad(x, pads, mode="REFLECT")
        tap = (lambda i: xp[..., i : i + n, :]) if axis == -2 else (lambda i: xp[..., i : i + n])
        acc = taps[r] * tap(r)
        for j in range(r):
            acc = acc + taps[j] * (tap(j) + tap(k - 1 - j))
        return acc

    return one_pass(one_pass(p, -2), -1)


def _blur_matrices(kernels, n):
    """[B, n, n] matrices applying kernels[b] along an axis of n pixels with reflect padding."""
    k = kernels.shape[1]
    r = k // 2
    idx = tf.range(n)[:, None] + tf.range(k)[None, :] - r
    idx = tf.abs(idx)
    idx = tf.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return tf.einsum("bk,okn->bon", kernels, tf.one_hot(idx, n, dtype=tf.float32))


# --------------------------------------------------------------------------------------------
# Resize arithmetic
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Batched kernels: images [B, H, W, 3] in [0, 1] and per-image parameters [B]
# --------------------------------------------------------------------------------------------
def _flip_kernel(x, mask):
    return tf.where(_f4(mask), tf.reverse(x, [2]), x)


def _gray_kernel(x, mask):
    return tf.where(_f4(mask), tf.broadcast_to(_luma_of(x), tf.shape(x)), x)


def _jitter_stage_kernel(x, which, fb, fc, fs, dh, additive):
    """One stage of colour jitter: image i runs operation which[i] (NO_COLOR_OP = none).

    All candidates are computed and one is selected per image; XLA fuses this into one pass,
    which is cheaper than partitioning the batch. Saturation and hue share one HSV round trip
    (tf.image.adjust_saturation / adjust_hue are defined in HSV), the other one neutral.
    """
    w = _f4(which)
    bright = _brightness(x, _f4(fb), additive)
    contrast = _contrast(x, _f4(fc), _channel_means(x))
    sat_hue = _sat_hue_kernel(
        x, tf.where(which == SATURATION, fs, 1.0), tf.where(which == HUE, dh, 0.0)
    )
    return tf.where(
        w == BRIGHTNESS,
        bright,
        tf.where(w == CONTRAST, contrast, tf.where((w == SATURATION) | (w == HUE), sat_hue, x)),
    )


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


def _blur_batch_kernel(x, kernels, mask):
    """Separable blur of the images where ``mask``, one kernel [K] per image (reflect padding):
    banded matrix products at small sides, the planar shifted sums at large ones."""
    b, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], x.shape[3]
    if max(h, w) > 64:
        y = tf.transpose(_blur_planes(tf.transpose(x, [0, 3, 1, 2]), kernels), [0, 2, 3, 1])
    else:
        my = _blur_matrices(kernels, h)
        mx = _blur_matrices(kernels, w) if w != h else my
        y = tf.reshape(tf.matmul(my, tf.reshape(x, [b, h, w * c])), [b, h, w, c])
        y = tf.einsum("bpw,bhwc->bhpc", mx, y)
    return tf.where(_f4(mask), tf.clip_by_value(y, 0.0, 1.0), x)


_KERNELS = MappingProxyType(
    {
        "flip": _flip_kernel,
        "gray": _gray_kernel,
        "jitter_stage": _jitter_stage_kernel,
        "resize": _resize_matmul_kernel,
        "blur": _blur_batch_kernel,
    }
)
_JIT_KERNELS = MappingProxyType({name: _jit(fn) for name, fn in _KERNELS.items()})


def _kernel(name: str, xla: bool):
    return _JIT_KERNELS[name] if xla else _KERNELS[name]
