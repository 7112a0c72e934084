"""Tests of tf_simclr.augment against the operators' definitions and independent references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import augment as A
from tf_simclr.augment import draws, fused, kernels, view_kernels

SEED = tf.constant([3, 7], tf.int64)


def _rand_images(n, h, w=None, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.random((n, h, w or h, 3)), tf.float32)


def _binomial_ok(k, n, p, sigmas=5.0):
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------------------------------
# Composition by name
# ------------------------------------------------------------------------------------------
def test_parse_presets_and_lists():
    assert A.parse_augmentations("imagenet") == ("crop", "flip", "color", "blur")
    assert A.parse_augmentations("cifar") == ("crop", "flip", "color")
    assert A.parse_augmentations(" crop , Flip,color ") == ("crop", "flip", "color")
    assert A.parse_augmentations(["rotation", "sobel"]) == ("rotation", "sobel")
    assert A.resolve_augmentations("cifar") == (("crop", "flip", "color"), 0.5)
    assert A.resolve_augmentations("imagenet") == (("crop", "flip", "color", "blur"), 1.0)
    assert A.resolve_augmentations("cifar", 0.8)[1] == 0.8


def test_unknown_augmentation_names_it_and_lists_valid():
    with pytest.raises(ValueError, match=r"colour.*Valid operators: crop"):
        A.parse_augmentations("crop,colour")
    with pytest.raises(ValueError, match="brightness"):
        A.color_jitter(_rand_images(1, 8), SEED, brightness="sideways")


# ------------------------------------------------------------------------------------------
# Random resized crop
# ------------------------------------------------------------------------------------------
def test_crop_boxes_area_and_aspect_in_bounds_and_spread():
    n, h, w = 20000, 200, 200
    boxes = A.sample_crop_boxes(SEED, h, w, n).numpy()
    y0, x0, ch, cw = boxes.T
    assert (y0 >= 0).all() and (x0 >= 0).all()
    assert (y0 + ch <= h).all() and (x0 + cw <= w).all()
    area = ch * cw / (h * w)
    aspect = cw / ch
    # Integer rounding of the sides moves area/aspect by at most ~1 px relative to a 200 px side.
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= (4 / 3) * 1.03
    # Spread: every fifth of the area range and of the log-aspect range is populated.
    hist, _ = np.histogram(area, bins=5, range=(0.08, 1.0))
    assert (hist > 0.05 * n).all(), hist
    hist, _ = np.histogram(np.log(aspect), bins=5, range=(math.log(0.75), math.log(4 / 3)))
    assert (hist > 0.08 * n).all(), hist
    # log-uniform aspect is symmetric around 1; offsets cover the free range.
    assert abs(np.median(np.log(aspect))) < 0.02
    free = h - ch
    rel = y0[free > 20] / free[free > 20]
    assert 0.4 < rel.mean() < 0.6 and rel.min() < 0.05 and rel.max() > 0.95


def test_crop_falls_back_to_whole_image():
    boxes = A.sample_crop_boxes(SEED, 30, 40, 5, area_range=(1.5, 2.0)).numpy()
    assert (boxes == [0, 0, 30, 40]).all()


@pytest.mark.parametrize("side", [32, 120])  # matrix path and per-image path
def test_crop_and_resize_matches_tf_bicubic(side):
    x = _rand_images(4, side, side + 8)
    rng = np.random.default_rng(1)
    boxes = [[0, 0, side, side + 8]]
    for _ in range(3):
        ch, cw = rng.integers(1, side + 1), rng.integers(1, side + 9)
        boxes.append([rng.integers(0, side - ch + 1), rng.integers(0, side + 8 - cw + 1), ch, cw])
    boxes = tf.constant(boxes, tf.int32)
    out = A.crop_and_resize(x, boxes, 24).numpy()
    for i, (y0, x0, ch, cw) in enumerate(boxes.numpy()):
        crop = x[i, y0 : y0 + ch, x0 : x0 + cw]
        ref = tf.clip_by_value(tf.image.resize(crop, (24, 24), method="bicubic"), 0, 1)
        np.testing.assert_allclose(out[i], ref.numpy(), atol=2e-5)


def test_random_resized_crop_is_the_bicubic_resize_of_its_sampled_box():
    """Each image's crop is tf.image.resize (bicubic, clipped) of the box sample_crop_boxes
    draws for it with the same seed."""
    x = _rand_images(5, 40, 50)
    out = A.random_resized_crop(x, SEED, size=16)
    assert out.shape == (5, 16, 16, 3) and out.dtype == tf.float32
    boxes = A.sample_crop_boxes(SEED, 40, 50, 5).numpy()
    assert len({tuple(b) for b in boxes}) == 5  # five different boxes
    for i, (y0, x0, ch, cw) in enumerate(boxes):
        crop = x[i : i + 1, y0 : y0 + ch, x0 : x0 + cw]
        ref = tf.clip_by_value(tf.image.resize(crop, (16, 16), method="bicubic"), 0, 1)[0]
        np.testing.assert_allclose(out[i], ref.numpy(), atol=2e-5)


def test_crop_no_resize_is_a_window_of_the_padded_image():
    x = _rand_images(6, 20)
    out = A.crop_no_resize(x, SEED, size=16).numpy()
    pad = 2  # round(0.125 * 16)
    padded = np.pad(x.numpy(), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    for i in range(6):
        found = any(
            np.array_equal(out[i], padded[i, y : y + 16, xx : xx + 16])
            for y in range(padded.shape[1] - 15)
            for xx in range(padded.shape[2] - 15)
        )
        assert found
    small = A.crop_no_resize(_rand_images(2, 8), SEED, size=16)  # smaller than the window
    assert small.shape == (2, 16, 16, 3)


# ------------------------------------------------------------------------------------------
# Flip, rotation, cutout, noise, sobel
# ------------------------------------------------------------------------------------------
def test_flip_rate_and_content():
    x = _rand_images(2000, 4)
    out = A.flip(x, SEED).numpy()
    xn = x.numpy()
    same = np.all(out == xn, axis=(1, 2, 3))
    mirrored = np.all(out == xn[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert _binomial_ok(mirrored.sum(), 2000, 0.5)


def test_rotation_is_a_quarter_turn_of_90_180_270():
    x = _rand_images(600, 6)
    out = A.rotation(x, SEED).numpy()
    counts = {1: 0, 2: 0, 3: 0}
    for i in range(600):
        ks = [k for k in (1, 2, 3) if np.array_equal(out[i], np.rot90(x[i].numpy(), k))]
        assert len(ks) == 1
        counts[ks[0]] += 1
    for k in counts:
        assert _binomial_ok(counts[k], 600, 1 / 3)
    with pytest.raises(ValueError, match="square"):
        A.rotation(_rand_images(1, 4, 6), SEED)


def test_cutout_blacks_out_one_square():
    x = tf.ones([200, 32, 32, 3])
    out = A.cutout(x, SEED).numpy()
    zero = out[..., 0] == 0
    assert np.all(out[zero] == 0)
    frac = zero.mean(axis=(1, 2))
    assert frac.max() == pytest.approx(0.25)  # a 16x16 square fully inside
    assert frac.min() > 0.0
    for i in range(20):
        ys, xs = np.nonzero(zero[i])
        assert zero[i, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a rectangle


def test_gaussian_noise_stddev():
    x = tf.fill([64, 32, 32, 3], 0.5)
    d = (A.gaussian_noise(x, SEED) - x).numpy()
    assert abs(d.std() - 0.1) < 0.003 and abs(d.mean()) < 0.003


def test_sobel_matches_numpy():
    x = _rand_images(2, 10)
    out = A.sobel(x, SEED).numpy()
    g = x.numpy() @ np.array([0.2989, 0.587, 0.114])
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    p = np.pad(g, [(0, 0), (1, 1), (1, 1)], mode="reflect")
    gx = sum(kx[i, j] * p[:, i : i + 10, j : j + 10] for i in range(3) for j in range(3))
    gy = sum(kx.T[i, j] * p[:, i : i + 10, j : j + 10] for i in range(3) for j in range(3))
    mag = np.sqrt(gx**2 + gy**2)
    mag /= mag.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out[..., 0], mag, atol=1e-4)
    assert np.all(out[..., 0] == out[..., 2])


# ------------------------------------------------------------------------------------------
# Colour
# ------------------------------------------------------------------------------------------
def test_grayscale_rate_and_values():
    x = _rand_images(2000, 3)
    out = A.grayscale(x, SEED).numpy()
    gray = np.all(out[..., 0] == out[..., 1], axis=(1, 2)) & np.all(
        out[..., 1] == out[..., 2], axis=(1, 2)
    )
    assert _binomial_ok(gray.sum(), 2000, 0.2)
    ref = tf.image.rgb_to_grayscale(x).numpy()[..., 0]
    np.testing.assert_allclose(out[gray][..., 0], ref[gray], atol=1e-6)
    assert np.array_equal(out[~gray], x.numpy()[~gray])
    drop = A.augment_batch(x[:5], SEED, image_size=3, augmentations="color_drop").numpy()
    np.testing.assert_allclose(drop[..., 0], ref[:5], atol=1e-6)


def test_color_ops_match_tf_image_with_per_image_parameters():
    x = _rand_images(8, 6)
    rng = np.random.default_rng(2)
    fb, fc, fs = (tf.constant(rng.uniform(0.2, 1.8, 8), tf.float32) for _ in range(3))
    dh = tf.constant(rng.uniform(-0.2, 0.2, 8), tf.float32)
    order = tf.constant([rng.permutation(4) for _ in range(8)], tf.int32)
    order = tf.tensor_scatter_nd_update(order, [[7]], [[4, 4, 4, 4]])  # last image: untouched
    out = A.apply_color_ops(x, order, fb, fc, fs, dh).numpy()
    for i in range(8):
        ref = x[i]
        for op in order[i].numpy():
            if op == 0:
                ref = ref * fb[i]
            elif op == 1:
                ref = tf.image.adjust_contrast(ref, fc[i])
            elif op == 2:
                ref = tf.image.adjust_saturation(ref, fs[i])
            elif op == 3:
                ref = tf.image.adjust_hue(ref, dh[i])
            ref = tf.clip_by_value(ref, 0.0, 1.0)
        np.testing.assert_allclose(out[i], ref.numpy(), atol=2e-5)
    add = A.apply_color_ops(
        x, tf.fill([8, 4], 4) - tf.constant([[4, 0, 0, 0]]) * 1, fb - 1, fc, fs, dh, additive=True
    )
    np.testing.assert_allclose(
        add.numpy(), tf.clip_by_value(x + (fb - 1)[:, None, None, None], 0, 1).numpy(), atol=1e-6
    )


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_color_jitter_parameter_ranges(strength):
    n = 4000
    # On a uniform gray image contrast, saturation and hue do nothing: only brightness acts.
    gray = tf.fill([n, 2, 2, 3], 0.5)
    out = A.color_jitter(gray, SEED, strength=strength).numpy()[:, 0, 0, 0] / 0.5
    changed = np.abs(out - 1.0) > 1e-6
    assert _binomial_ok(changed.sum(), n, 0.8)
    lo, hi = 1 - 0.8 * strength, 1 + 0.8 * strength
    f = out[changed]
    assert f.min() >= lo - 1e-5 and f.max() <= min(hi, 2.0) + 1e-5
    assert f.min() < lo + 0.05 * (hi - lo) and f.max() > hi - 0.05 * (hi - lo)
    add = A.color_jitter(gray, SEED, strength=strength, brightness="additive").numpy()
    d = add[:, 0, 0, 0] - 0.5
    d = d[np.abs(d) > 1e-6]
    assert d.min() >= -0.8 * strength * 1.0001 and d.max() <= 0.8 * strength * 1.0001
    edge = min(0.7 * strength, 0.49)  # 0.5 +- 0.8s is clipped to [0, 1]
    assert d.min() < -edge and d.max() > edge
    # Hue shifts of a saturated colour lie in [-0.2s, 0.2s] and fill it.
    red = tf.tile(tf.constant([[[[0.5, 0.0, 0.0]]]]), [n, 2, 2, 1])
    hsv = tf.image.rgb_to_hsv(A.color_jitter(red, SEED, strength=strength)).numpy()
    sat = hsv[:, 0, 0, 1] > 0.05
    h = hsv[sat, 0, 0, 0]
    shift = (h + 0.5) % 1.0 - 0.5
    assert np.abs(shift).max() <= 0.2 * strength + 1e-4
    assert np.abs(shift).max() > 0.18 * strength


def test_color_jitter_order_is_a_uniform_random_permutation():
    n = 24000
    order = A.color_op_order(n, tf.constant([1, 2]), tf.constant([3, 4])).numpy()
    applied = ~np.all(order == 4, axis=1)
    assert _binomial_ok(applied.sum(), n, 0.8)
    assert np.all(np.sort(order[applied], axis=1) == [0, 1, 2, 3])
    perms, counts = np.unique(order[applied], axis=0, return_counts=True)
    assert len(perms) == 24
    m = applied.sum()
    assert all(_binomial_ok(c, m, 1 / 24) for c in counts)
    fixed = A.color_op_order(
        10, tf.constant([1, 2]), tf.constant([3, 4]), p=1.0, random_order=False
    )
    assert np.all(fixed.numpy() == [0, 1, 2, 3])


def test_color_distortion_rates_and_range():
    """Jitter with p=0.8, then grayscale with p=0.2, drawn independently: 20% of the images
    come out grey (R=G=B), 0.2 * 0.8 = 16% unchanged (5-sigma binomial bounds)."""
    n = 2000
    x = _rand_images(n, 4)
    out = A.color_distortion(x, SEED, strength=1.0).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    gray = np.all(np.abs(out - out[..., :1]) < 1e-6, axis=(1, 2, 3))
    unchanged = np.all(np.abs(out - x.numpy()) < 1e-6, axis=(1, 2, 3))
    assert _binomial_ok(gray.sum(), n, 0.2)
    assert _binomial_ok(unchanged.sum(), n, 0.2 * 0.8)
    assert not (gray & unchanged).any()


# ------------------------------------------------------------------------------------------
# Blur
# ------------------------------------------------------------------------------------------
def test_blur_kernel_is_normalised_gaussian():
    sig = tf.constant([0.1, 0.7, 2.0])
    k = A.blur_kernel(sig, 224).numpy()
    assert k.shape == (3, 23)  # 10% of 224 -> 22 -> radius 11 -> 23 taps
    assert A.blur_kernel(sig, 32).shape == (3, 3)
    np.testing.assert_allclose(k.sum(1), 1.0, rtol=1e-6)
    x = np.arange(-11, 12)
    for i, s in enumerate(sig.numpy()):
        ref = np.exp(-(x**2) / (2 * s * s))
        np.testing.assert_allclose(k[i], ref / ref.sum(), rtol=1e-5, atol=1e-7)


def test_blur_impulse_response_rate_and_batch_sigma():
    n, side = 400, 40
    imp = np.zeros((n, side, side, 3), np.float32)
    imp[:, 20, 20, :] = 1.0
    out = A.gaussian_blur(tf.constant(imp), SEED).numpy()
    blurred = ~np.all(out == imp, axis=(1, 2, 3))
    assert _binomial_ok(blurred.sum(), n, 0.5)
    # Each blurred impulse is an outer product of a normalised Gaussian kernel with sigma in range.
    for i in np.flatnonzero(blurred)[:20]:
        row = out[i, 20, 18:23, 0]
        col = out[i, 18:23, 20, 0]
        np.testing.assert_allclose(out[i, 18:23, 18:23, 0], np.outer(col, row) / row[2], atol=1e-6)
        assert out[i, ..., 0].sum() == pytest.approx(1.0, abs=1e-5)
        ratio = row[2] / row[3]  # = exp(1 / (2 sigma^2))
        sigma = math.sqrt(1 / (2 * math.log(ratio))) if ratio > 1 + 1e-6 else 10.0
        assert 0.1 - 1e-3 <= sigma <= 2.0 + 1e-2
    # Per-image sigmas differ; the reference's per-batch mode shares one sigma.
    rows = out[blurred, 20, 18:23, 0]
    assert np.ptp(rows[:, 2]) > 0.05
    batch = A.gaussian_blur(tf.constant(imp), SEED, per_image=False).numpy()
    bl = ~np.all(batch == imp, axis=(1, 2, 3))
    rows = batch[bl, 20, 18:23, 0]
    np.testing.assert_allclose(rows, np.broadcast_to(rows[:1], rows.shape), atol=1e-6)


def test_blur_keeps_constant_images_and_small_images():
    x = tf.fill([4, 64, 64, 3], 0.3)
    np.testing.assert_allclose(A.gaussian_blur(x, SEED, p=1.0).numpy(), 0.3, atol=1e-6)
    tiny = _rand_images(3, 8)  # kernel of 1 tap: identity
    np.testing.assert_array_equal(A.gaussian_blur(tiny, SEED, p=1.0).numpy(), tiny.numpy())


# ------------------------------------------------------------------------------------------
# Compositions, determinism, evaluation
# ------------------------------------------------------------------------------------------
def test_augment_batch_is_deterministic_and_views_independent():
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)), tf.uint8)
    kw = dict(image_size=24, augmentations="imagenet")
    x = tf.concat([x[:1], x[:-1]], 0)  # rows 0 and 1 are the same image
    a = A.augment_batch(x, tf.constant([1, 2]), **kw)
    b = A.augment_batch(x, tf.constant([1, 2]), **kw)
    c = A.augment_batch(x, tf.constant([1, 3]), **kw)
    assert a.shape == (16, 24, 24, 3) and a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())
    # Two copies of one image in the same batch get independent draws.
    v = a.numpy()
    assert not np.allclose(v[0], v[1])
    assert v.min() >= 0.0 and v.max() <= 1.0
    # Graph mode (as inside tf.data) gives the same result as eager.
    g = tf.function(lambda im: A.augment_batch(im, tf.constant([1, 2]), **kw))(x)
    np.testing.assert_allclose(g.numpy(), v, atol=1e-6)


@pytest.mark.parametrize(
    "entry", ["augment_batch", "augment_image", "augment_single", "augment_single_crop"]
)
def test_preset_strength_applies_when_no_strength_is_given(entry):
    # The entry points used to default color_jitter_strength to 1.0, which overrode the
    # preset's own strength: "cifar" ran at s = 1.0 instead of its s = 0.5.
    images = tf.constant(np.random.default_rng(8).integers(0, 256, (4, 40, 40, 3)), tf.uint8)
    seeds = [tf.constant([i, 5], tf.int64) for i in range(4)]  # some views draw the jitter
    kw = dict(image_size=32, augmentations="cifar")

    def views(**strength):
        if entry == "augment_batch":
            return A.augment_batch(images, SEED, **kw, **strength).numpy()
        fn = getattr(A, entry)
        outs = [fn(im, s, **kw, **strength) for im, s in zip(images, seeds, strict=True)]
        return np.concatenate([np.ravel(t) for t in tf.nest.flatten(outs)])

    default = views()
    np.testing.assert_array_equal(default, views(color_jitter_strength=0.5))
    assert not np.allclose(default, views(color_jitter_strength=1.0))


def _resized(x, size):
    return tf.clip_by_value(tf.image.resize(x, (size, size), method="bicubic"), 0.0, 1.0)


@pytest.mark.parametrize(
    "spec", ["crop_no_resize,flip,rotation,cutout", "noise,sobel", "color_jitter,grayscale", ""]
)
def test_a_composition_is_its_operators_applied_in_order(spec):
    """augment_batch runs the listed operators in order, operator k with the k-th seed of the
    batch seed, after a bicubic resize when the list has no crop (strength 1.0 for a list)."""
    x = _rand_images(6, 20)
    out = A.augment_batch(x, SEED, image_size=16, augmentations=spec).numpy()
    ops = [op for op in spec.split(",") if op]
    by_hand = x if "crop_no_resize" in ops else _resized(x, 16)
    seeds = draws._seeds(SEED, max(len(ops), 1))
    apply = {
        "crop_no_resize": lambda im, s: A.crop_no_resize(im, s, size=16),
        "flip": A.flip,
        "rotation": A.rotation,
        "cutout": A.cutout,
        "noise": A.gaussian_noise,
        "sobel": A.sobel,
        "color_jitter": lambda im, s: A.color_jitter(im, s, strength=1.0),
        "grayscale": A.grayscale,
    }
    for op, seed in zip(ops, seeds, strict=False):
        by_hand = apply[op](by_hand, seed)
    np.testing.assert_allclose(out, by_hand.numpy(), atol=1e-6)
    assert out.shape == (6, 16, 16, 3) and out.min() >= 0.0 and out.max() <= 1.0
    if ops:  # the operators did change the images
        assert not np.allclose(out, _resized(x, 16).numpy(), atol=1e-3)


def test_leading_crop_matches_batched_crop():
    img = _rand_images(1, 50, 70)
    box = A.sample_crop_boxes(SEED, 50, 70, 1)
    per_image = A.leading_crop(img[0], SEED, image_size=24, augmentations="crop,flip")
    batched = A.crop_and_resize(img, box, 24)[0]
    np.testing.assert_allclose(per_image.numpy(), batched.numpy(), atol=2e-5)


def test_preprocess_for_eval_center_crop_and_small_images():
    rng = np.random.default_rng(0)
    img = tf.constant(rng.integers(0, 256, (256, 320, 3)), tf.uint8)
    out = A.preprocess_for_eval(img, 224).numpy()
    # 87.5% of 256 = 224: the central 224x224 window, no resampling needed.
    y0, x0 = (256 - 224 + 1) // 2, (320 - 224 + 1) // 2
    ref = img.numpy()[y0 : y0 + 224, x0 : x0 + 224] / 255.0
    np.testing.assert_allclose(out, ref, atol=1e-6)
    small = tf.constant(rng.integers(0, 256, (32, 32, 3)), tf.uint8)
    np.testing.assert_allclose(
        A.preprocess_for_eval(small, 32).numpy(), small.numpy() / 255.0, atol=1e-6
    )
    batch = A.preprocess_for_eval(tf.stack([small, small]), 32)
    assert batch.shape == (2, 32, 32, 3)


def test_xla_kernels_match_plain_tf():
    x = tf.constant(np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3)), tf.uint8)
    kw = dict(image_size=24, augmentations="crop,flip,color,blur,grayscale")
    fast = A.augment_batch(x, SEED, **kw).numpy()
    plain = A.augment_batch(x, SEED, xla=False, **kw).numpy()
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    xf = tf.cast(x, tf.float32) / 255  # per-batch blur: XLA matmul vs depthwise convolution
    a = A.gaussian_blur(xf, SEED, per_image=False)
    b = A.gaussian_blur(xf, SEED, per_image=False, xla=False)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_merge_sat_hue_and_combined_round_trip():
    order = tf.constant([[0, 1, 2, 3], [3, 2, 0, 1], [2, 0, 3, 1], [4, 4, 4, 4]])
    expect = [[0, 1, 5, 4], [5, 4, 0, 1], [2, 0, 3, 1], [4, 4, 4, 4]]
    np.testing.assert_array_equal(A.merge_sat_hue(order).numpy(), expect)
    # Adjacent saturation and hue commute, so one HSV round trip gives either order's result.
    x = _rand_images(4, 8)
    fs, dh = tf.constant([0.3, 1.7, 1.0, 0.9]), tf.constant([0.1, -0.2, 0.05, 0.0])
    both = kernels._sat_hue_kernel(x, fs, dh).numpy()
    for i in range(4):
        sh = tf.image.adjust_hue(tf.image.adjust_saturation(x[i], fs[i]), dh[i])
        hs = tf.image.adjust_saturation(tf.image.adjust_hue(x[i], dh[i]), fs[i])
        np.testing.assert_allclose(both[i], tf.clip_by_value(sh, 0, 1).numpy(), atol=2e-5)
        np.testing.assert_allclose(both[i], tf.clip_by_value(hs, 0, 1).numpy(), atol=2e-5)


def test_single_image_path_statistics_and_determinism():
    img = tf.constant(np.random.default_rng(0).integers(0, 256, (50, 70, 3)), tf.uint8)
    a = A.augment_single(img, SEED, image_size=24, augmentations="imagenet")
    b = A.augment_single(img, SEED, image_size=24, augmentations="imagenet")
    assert a.shape == (24, 24, 3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Its colour jitter draws the same distributions as the batched one: on a gray image only
    # brightness acts, with p = 0.8 and a factor in [1 - 0.8s, 1 + 0.8s].
    gray = tf.fill([1, 2, 2, 3], 0.5)
    seeds = tf.stack([tf.range(250), tf.zeros(250, tf.int32)], axis=1)
    f = tf.function(
        lambda s: fused._color_jitter_one(gray, s, strength=0.5, p=0.8, brightness="multiplicative")
    )
    out = tf.map_fn(lambda s: f(s)[0, 0, 0, 0], seeds, fn_output_signature=tf.float32).numpy()
    factor = out / 0.5
    changed = np.abs(factor - 1) > 1e-6
    assert _binomial_ok(changed.sum(), 250, 0.8)
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert factor.min() < 0.64 and factor.max() > 1.36


# ------------------------------------------------------------------------------------------
# Fused single-image path (large images) and its numeric building blocks
# ------------------------------------------------------------------------------------------
def test_closed_form_saturation_matches_tf_image():
    x = _rand_images(1, 32)[0]
    x = tf.concat([x[:2], tf.fill([1, 32, 3], 0.4), tf.zeros([1, 32, 3]), x[4:]], 0)  # grays
    for f in (0.0, 0.35, 1.0, 1.7, 6.0):  # 6.0 saturates most pixels (s clipped at 1)
        ref = tf.clip_by_value(tf.image.adjust_saturation(x, f), 0.0, 1.0).numpy()
        np.testing.assert_allclose(kernels._saturate(x, f).numpy(), ref, atol=1e-6)


def test_planar_hue_shift_matches_tf_image():
    x = _rand_images(1, 24)[0]
    x = tf.concat([x[:2], tf.fill([1, 24, 3], 0.4), x[3:]], 0)
    for dh in (-0.2, -0.03, 0.0, 0.11, 0.2):
        out = tf.stack(kernels._hue_shift_planes(x[..., 0], x[..., 1], x[..., 2], dh), -1)
        ref = tf.clip_by_value(tf.image.adjust_hue(x, dh), 0.0, 1.0)
        np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=2e-6)


def _numpy_reflect_blur(img, kern):
    r = len(kern) // 2
    p = np.pad(img, [(r, r), (r, r), (0, 0)], mode="reflect")
    h, w = img.shape[:2]
    rows = sum(kern[j] * p[j : j + h] for j in range(len(kern)))
    return np.clip(sum(kern[j] * rows[:, j : j + w] for j in range(len(kern))), 0, 1)


@pytest.mark.parametrize("side", [40, 224])  # 5 and 23 taps; non-square image
def test_planar_blur_matches_numpy_reflect_convolution(side):
    x = _rand_images(1, side, side + 8)[0]
    kern = A.blur_kernel(tf.constant([1.7]), side)[0]
    out = view_kernels._BLUR_IMAGE(x, kern).numpy()
    np.testing.assert_allclose(out, _numpy_reflect_blur(x.numpy(), kern.numpy()), atol=1e-6)


def test_view_color_kernel_blurs_only_when_drawn_after_grayscale():
    # Blur inside the colour kernel: jitter + grayscale, then (if drawn) the NumPy reflect
    # convolution of that, clipped; not drawn -> exactly the kernel without blur.
    x = tf.constant(np.random.default_rng(6).random((40, 40, 3)) * 255, tf.float32)
    kern = A.blur_kernel(tf.constant([1.2]), 40)[0]
    for gray in (False, True):
        # gray as a tensor, as the pipeline passes it: one compiled kernel for both cases.
        args = (1 / 255, True, tf.constant([1, 3, 0, 2]), 1.2, 0.7, 1.4, -0.1, tf.constant(gray))
        plain = view_kernels._VIEW_COLOR[False](x, *args).numpy()
        kept = view_kernels._VIEW_COLOR[False](x, *args, kern, tf.constant(False)).numpy()
        blurred = view_kernels._VIEW_COLOR[False](x, *args, kern, tf.constant(True)).numpy()
        np.testing.assert_array_equal(kept, plain)
        ref = _numpy_reflect_blur(plain, kern.numpy())
        np.testing.assert_allclose(blurred, ref, atol=1e-6)
        assert np.abs(blurred - plain).mean() > 0.01


def test_view_color_kernel_matches_tf_image_ops_in_order():
    x = tf.constant(np.random.default_rng(5).random((12, 10, 3)) * 255, tf.float32)
    fb, fc, fs, dh = 1.3, 0.6, 1.5, 0.12
    for order, flip, gray in [([2, 0, 3, 1], True, False), ([3, 1, 0, 2], False, True)]:
        # Tensors, as the pipeline passes them: one compiled kernel for both cases.
        args = (1 / 255, tf.constant(flip), tf.constant(order), fb, fc, fs, dh, tf.constant(gray))
        out = view_kernels._VIEW_COLOR[False](x, *args).numpy()
        ref = tf.clip_by_value(x / 255, 0, 1)
        ref = ref[:, ::-1] if flip else ref
        ops = [
            lambda y: y * fb,
            lambda y: tf.image.adjust_contrast(y, fc),
            lambda y: tf.image.adjust_saturation(y, fs),
            lambda y: tf.image.adjust_hue(y, dh),
        ]
        for op in order:
            ref = tf.clip_by_value(ops[op](ref), 0.0, 1.0)
        if gray:
            ref = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(ref))
        np.testing.assert_allclose(out, ref.numpy(), atol=2e-5)
    none = view_kernels._VIEW_COLOR[True](
        x, 1 / 255, False, tf.fill([4], 4), 0.5, fc, fs, dh, False
    )
    np.testing.assert_allclose(none.numpy(), x.numpy() / 255, atol=1e-6)  # nothing drawn


def test_fused_single_crop_is_tf_resize_of_the_sampled_box():
    img = tf.constant(np.random.default_rng(1).integers(0, 256, (60, 90, 3)), tf.uint8)
    for i in range(3):
        seed = tf.constant([i, 9], tf.int64)
        out = A.augment_single(img, seed, image_size=32, augmentations="crop")
        y0, x0, h, w = A.sample_crop_boxes(draws._seeds(seed, 1)[0], 60, 90, 1)[0].numpy()
        ref = tf.image.resize(img[y0 : y0 + h, x0 : x0 + w], (32, 32), method="bicubic")
        np.testing.assert_allclose(out.numpy(), np.clip(ref.numpy() / 255, 0, 1), atol=1e-6)


def test_fused_single_flip_rate_and_jitter_distribution():
    img = tf.constant(np.random.default_rng(2).integers(0, 256, (40, 40, 3)), tf.uint8)
    seeds = tf.data.Dataset.range(300).map(lambda i: tf.stack([i, tf.constant(4, tf.int64)]))
    full = lambda s: A.augment_single(img, s, image_size=40, augmentations="crop")  # noqa: E731
    flip = lambda s: A.augment_single(img, s, image_size=40, augmentations="crop,flip")  # noqa: E731
    a = np.stack(list(seeds.map(lambda s: (full(s), flip(s))).as_numpy_iterator()), 1)
    same = np.all(np.abs(a[0] - a[1]) < 1e-6, axis=(1, 2, 3))
    mirrored = np.all(np.abs(a[0][:, :, ::-1] - a[1]) < 1e-6, axis=(1, 2, 3))
    assert np.all(same | mirrored) and _binomial_ok(mirrored.sum(), 300, 0.5)
    # On a gray image only brightness acts: p = 0.8, factor U[1 - 0.8s, 1 + 0.8s] (s = 0.5).
    gray = tf.fill([6, 6, 3], tf.constant(128, tf.uint8))
    kw = dict(image_size=4, augmentations="crop,color_jitter", color_jitter_strength=0.5)
    f = np.array(list(seeds.map(lambda s: A.augment_single(gray, s, **kw)[0, 0, 0])))
    f = f / (128 / 255)
    changed = np.abs(f - 1) > 1e-5
    assert _binomial_ok(changed.sum(), 300, 0.8)
    assert f.min() >= 0.6 - 1e-5 and f.max() <= 1.4 + 1e-5
    assert f.min() < 0.65 and f.max() > 1.35


@pytest.mark.parametrize("ops", ["imagenet", "crop,color_jitter", "crop,flip,blur"])
def test_fused_single_path_equals_the_operator_by_operator_path(monkeypatch, ops):
    # Same seed -> same view whichever route augment_single takes (fresh random images).
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    seeds = [tf.constant([int(rng.integers(1 << 30)), i], tf.int64) for i in range(6)]
    kw = dict(image_size=64, augmentations=ops, color_jitter_strength=1.0)
    fast = [A.augment_single(images[i % 3], s, **kw) for i, s in enumerate(seeds)]
    monkeypatch.setattr(fused, "_fast_plan", lambda ops: None)
    generic = [A.augment_single(images[i % 3], s, **kw) for i, s in enumerate(seeds)]
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5)


@pytest.mark.parametrize(
    "ops,brightness,dtype",
    [
        ("imagenet", "multiplicative", np.uint8),
        ("crop,color_jitter,blur", "additive", np.uint8),
        ("crop,flip", "multiplicative", np.float32),
    ],
)
def test_crop_stage_then_batch_stage_equals_augment_single(ops, brightness, dtype):
    # Fresh random images of different sizes and seeds: the two stages, batched, give what
    # augment_single gives image by image (to float rounding).
    rng = np.random.default_rng()
    images = [rng.integers(0, 256, (int(rng.integers(30, 90)), int(rng.integers(30, 90)), 3))]
    images += [rng.integers(0, 256, (int(rng.integers(30, 90)), 70, 3)) for _ in range(4)]
    images = [(im / 255.0 if dtype == np.float32 else im).astype(dtype) for im in images]
    seeds = [tf.constant([int(rng.integers(1 << 30)), i], tf.int64) for i in range(5)]
    kw = dict(image_size=40, augmentations=ops, color_jitter_strength=1.0, brightness=brightness)
    stages = [A.augment_single_crop(im, s, **kw) for im, s in zip(images, seeds, strict=True)]
    resized = tf.stack([x for x, _ in stages])
    params = [tf.stack(p) for p in zip(*[p for _, p in stages], strict=True)]
    out = A.augment_finish_batch(resized, params, brightness=brightness).numpy()
    want = np.stack([A.augment_single(im, s, **kw) for im, s in zip(images, seeds, strict=True)])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)  # two compiled programs
    assert out.shape == (5, 40, 40, 3) and out.min() >= 0.0 and out.max() <= 1.0


def test_batch_stage_leaves_undrawn_images_to_the_vectorised_pass():
    # The batch stage scales, clips and flips every image in one vectorised pass and runs the
    # per-image loop only where jitter, grayscale or blur was drawn. A batch holding both kinds
    # must still equal augment_single image by image. Fixed seeds guarantee the mix (skipped
    # images, and images visited for grayscale alone); the image contents are fresh.
    rng = np.random.default_rng()
    images = [rng.integers(0, 256, (48, 56, 3)).astype(np.uint8) for _ in range(16)]
    seeds = [tf.constant([16, i], tf.int64) for i in range(16)]
    kw = dict(image_size=32, augmentations="crop,flip,color", color_jitter_strength=1.0)
    stages = [A.augment_single_crop(im, s, **kw) for im, s in zip(images, seeds, strict=True)]
    resized = tf.stack([x for x, _ in stages])
    params = [tf.stack(p) for p in zip(*[p for _, p in stages], strict=True)]
    order, gray = params[2].numpy(), params[7].numpy()
    visited = (order[:, 0] < 4) | gray
    assert visited.any() and not visited.all(), visited
    assert (gray & (order[:, 0] == 4)).any()
    out = A.augment_finish_batch(resized, params).numpy()
    want = np.stack([A.augment_single(im, s, **kw) for im, s in zip(images, seeds, strict=True)])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
    # An image the loop skips is only scaled, clipped and maybe flipped: check one by NumPy.
    k = int(np.flatnonzero(~visited)[0])
    ref = np.clip(resized[k].numpy() / 255.0, 0.0, 1.0)
    ref = ref[:, ::-1] if params[1].numpy()[k] else ref
    np.testing.assert_allclose(out[k], ref, rtol=0, atol=1e-6)


def test_crop_stage_refuses_compositions_it_cannot_split():
    assert A.has_crop_stage("imagenet") and A.has_crop_stage("crop,blur")
    assert not A.has_crop_stage("crop,rotation") and not A.has_crop_stage("flip,crop")
    with pytest.raises(ValueError, match="cannot be split.*use augment_single"):
        A.augment_single_crop(
            tf.zeros([8, 8, 3], tf.uint8), SEED, image_size=8, augmentations="crop,rotation"
        )


def test_channel_means_equal_numpy_with_static_and_unknown_sizes():
    x = np.random.default_rng().random((5, 7, 9, 3)).astype(np.float32)
    want = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(kernels._channel_means(tf.constant(x)).numpy(), want, rtol=1e-6)
    traced = tf.function(kernels._channel_means, input_signature=[tf.TensorSpec([None] * 4)])
    np.testing.assert_allclose(traced(tf.constant(x)).numpy(), want, rtol=1e-6)
