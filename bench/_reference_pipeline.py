"""Speed baseline: the same augmentation work as the reference SimCLR TF2 pipeline, done the way
it does it (one image per tf.data map call with tf.image ops, the four colour operations in a
random order, jitter (p=0.8) and grayscale (p=0.2) behind tf.cond so they run only when drawn,
one blur sigma per batch and view), so bench_pipeline.py can compare tf_simclr's
batched pipeline against it on the same machine and input. Not used by the library.
"""

import tensorflow as tf

_ASPECT = (3.0 / 4.0, 4.0 / 3.0)


def _per_image_crop(image, size):
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    start, extent, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=whole,
        min_object_covered=0.1,
        aspect_ratio_range=_ASPECT,
        area_range=(0.08, 1.0),
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    patch = tf.slice(image, start, extent)
    return tf.image.resize(patch[None], [size, size], method="bicubic")[0]


def _jitter_once(x, which, strength):
    s = 0.8 * strength
    return tf.switch_case(
        which,
        [
            lambda: x * tf.random.uniform([], max(1.0 - s, 0.0), 1.0 + s),
            lambda: tf.image.random_contrast(x, 1.0 - s, 1.0 + s),
            lambda: tf.image.random_saturation(x, 1.0 - s, 1.0 + s),
            lambda: tf.image.random_hue(x, 0.2 * strength),
        ],
    )


def _random_apply(fn, p, x):
    """The reference's random_apply: a tf.cond, so the work runs only when drawn."""
    return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)


def _jitter(image, strength):
    order = tf.random.shuffle(tf.range(4))
    for position in range(4):
        image = tf.clip_by_value(_jitter_once(image, order[position], strength), 0.0, 1.0)
    return image


def _gray(image):
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _per_image_color(image, strength):
    image = _random_apply(lambda x: _jitter(x, strength), 0.8, image)
    return _random_apply(_gray, 0.2, image)


def _one_view(image, size, strength, color=True):
    x = tf.image.convert_image_dtype(image, tf.float32)
    x = tf.image.random_flip_left_right(_per_image_crop(x, size))
    if color:
        x = _per_image_color(x, strength)
    return tf.clip_by_value(tf.reshape(x, [size, size, 3]), 0.0, 1.0)


def _batch_blur(images, size, p=0.5):
    """One sigma for the whole batch, separable depthwise convolution, applied with prob. p."""
    radius = (size // 10) // 2
    sigma = tf.random.uniform([], 0.1, 2.0)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(taps**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    rows = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
    cols = tf.tile(kernel[None, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(images, rows, [1, 1, 1, 1], "SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "SAME")
    chosen = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < p
    return tf.clip_by_value(tf.where(chosen, blurred, images), 0.0, 1.0)


def reference_two_view_dataset(source, *, size, strength, batch_size, blur, color=True):
    """source: dataset of uint8 images. Returns batches of (view1, view2).

    ``color=False`` leaves out colour distortion (crop, resize, flip only): the floor of any
    pipeline that crops and resizes with these tf.image ops."""
    ds = source.map(
        lambda x: (_one_view(x, size, strength, color), _one_view(x, size, strength, color)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    if blur:
        ds = ds.map(lambda a, b: (_batch_blur(a, size), _batch_blur(b, size)))
    return ds.prefetch(tf.data.AUTOTUNE)
