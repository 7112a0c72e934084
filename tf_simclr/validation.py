"""Checks of image tensors at the library's entry points (augmentation, exported modules, model).

``check_images`` makes every entry point accept the same images and reject the rest with the
same words: uint8, or float32 in [0, 1]; [batch, height, width, 3] (or one [height, width, 3]
image); no empty batch. What is known when the function is traced (dtype, rank, static sizes)
raises TypeError / ValueError right away; what is only known at run time (values, dynamic
sizes) is checked by ``tf.debugging`` assertions, which stop a graph, a tf.data map or a
reloaded SavedModel with an InvalidArgumentError carrying the same message.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["ACCEPTED_DTYPES", "check_images", "dtype_problem"]

ACCEPTED_DTYPES = (tf.uint8, tf.float32)
_RANGE = "must be float in [0, 1] or uint8"
# Float rounding just outside [0, 1] is accepted (the augmentation kernels clip it anyway).
_TOLERANCE = 1e-3


def _expected_layout(rank: int | None) -> str:
    if rank == 4:
        return "a batch [batch, height, width, 3]"
    if rank == 3:
        return "one image [height, width, 3]"
    return "one image [height, width, 3] or a batch [batch, height, width, 3]"


def dtype_problem(dtype: tf.DType, name: str = "images") -> str | None:
    """The message for an image dtype the library refuses (None for uint8 and float32)."""
    dtype = tf.as_dtype(dtype)
    if dtype in ACCEPTED_DTYPES:
        return None
    if dtype.is_floating:
        hint = f"cast with tf.cast({name}, tf.float32) (values in [0, 1])"
    elif dtype.is_integer:
        hint = (
            f"pass pixel values in [0, 255] as uint8 (tf.cast({name}, tf.uint8)) or as float32 "
            f"in [0, 1] (tf.cast({name}, tf.float32) / 255)"
        )
    else:
        hint = "decode images to uint8 first (tf.io.decode_image)"
    return f"{name} {_RANGE}, got dtype {dtype.name}: {hint}."


def _assert(condition, message, shape=None):
    """tf.debugging.Assert(condition, [message, shape]); run eagerly, the error carries just
    the message (the eager Assert wraps it in "Expected ... to be true. Summarized data")."""
    if not tf.executing_eagerly():
        return tf.debugging.Assert(
            condition, [message] if shape is None else [message, shape], summarize=8
        )
    if not bool(condition):
        if isinstance(message, tf.Tensor):
            message = message.numpy().decode()
        if shape is not None:
            message = f"{message} {shape.numpy().tolist()}"
        raise tf.errors.InvalidArgumentError(None, None, message)
    return None


def _shape_text(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


def _check_static(images: tf.Tensor, name: str, rank: int | None) -> None:
    """Python errors for what the traced shape already shows."""
    shape = images.shape
    if shape.rank is None:
        return
    if (rank is None and shape.rank not in (3, 4)) or (rank is not None and shape.rank != rank):
        hint = ""
        if rank == 4 and shape.rank == 3 and shape[-1] in (1, 3, 4):
            hint = f": add a batch axis ({name}[None])"
        elif rank == 4 and shape.rank == 3:
            # [B, H, W]: a batch of single-channel images, not one image (its last axis is
            # no channel count).
            hint = (
                ": the channel axis is missing (a [batch, height, width] batch of grayscale "
                f"images?); add it and convert to RGB with tf.image.grayscale_to_rgb({name}"
                "[..., None])"
            )
        elif rank == 3 and shape.rank == 4:
            hint = f": pass one image ({name}[0]) or use the batch function"
        raise ValueError(
            f"{name} must be {_expected_layout(rank)}, got shape {_shape_text(shape)} "
            f"(rank {shape.rank}){hint}."
        )
    channels = shape[-1]
    if channels is not None and channels != 3:
        if shape.rank == 4 and shape[1] == 3:
            hint = f"channels-first? transpose to NHWC with tf.transpose({name}, [0, 2, 3, 1])"
        else:
            hint = (
                f"convert grayscale with tf.image.grayscale_to_rgb, drop alpha with {name}[..., :3]"
            )
        raise ValueError(
            f"{name} must have 3 (RGB) channels in the last axis, got shape "
            f"{_shape_text(shape)}: {hint}."
        )
    if any(d == 0 for d in shape.as_list()):
        what = "an empty batch" if shape.rank == 4 and shape[0] == 0 else "an image with no pixels"
        raise ValueError(
            f"{name} is {what} (shape {_shape_text(shape)}): pass at least one image of at "
            "least 1x1 pixels."
        )


def _last_is_3(dims: tf.Tensor) -> tf.Tensor:
    # A slice, not dims[-1]: indexing fails to even build for a scalar input (no axes).
    return tf.reduce_all(tf.equal(dims[-1:], 3)) & (tf.size(dims) > 0)


def _shape_asserts(images: tf.Tensor, name: str, rank: int | None) -> list:
    """Run-time assertions for the parts of the layout the traced shape leaves open."""
    shape = images.shape
    asserts = []
    if shape.rank is None:
        if rank is None:
            raise ValueError(f"{name} must have a known rank (3 or 4), got an unknown shape.")
        asserts.append(
            _assert(
                tf.equal(tf.rank(images), rank),
                f"{name} must be {_expected_layout(rank)}, got shape",
                tf.shape(images),
            )
        )
    check_channels = shape.rank is None or shape[-1] is None
    # Single images come from decoders, which never give an empty one, and are checked once per
    # image in a tf.data map; only batches pay for the run-time size check.
    check_sizes = (rank == 4 or shape.rank == 4) and (
        shape.rank is None or None in shape.as_list()[:3]
    )
    if not (check_channels or check_sizes):
        return asserts
    with tf.control_dependencies(asserts):
        dims = tf.shape(images)
    if check_channels:
        asserts.append(
            _assert(
                _last_is_3(dims),
                f"{name} must have 3 (RGB) channels in the last axis (NHWC: transpose a "
                "channels-first batch; convert grayscale with tf.image.grayscale_to_rgb, drop "
                f"alpha with {name}[..., :3]), got shape",
                dims,
            )
        )
    if check_sizes:
        asserts.append(
            _assert(
                tf.reduce_all(dims > 0),
                f"{name} is an empty batch or has an empty axis: pass at least one image of at "
                "least 1x1 pixels; got shape",
                dims,
            )
        )
    return asserts


def _range_message(images: tf.Tensor, name: str) -> tf.Tensor:
    """What is wrong with the values and the likely fix (built only when the check fails)."""
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    low_text = tf.strings.as_string(low, shortest=True)
    high_text = tf.strings.as_string(high, shortest=True)
    values = tf.strings.join([f"{name} {_RANGE}; got values in [", low_text, ", ", high_text, "]"])
    return tf.where(
        tf.reduce_any(tf.math.is_nan(images)),
        f"{name} {_RANGE}; got NaN values: check the preprocessing that produced them.",
        tf.where(
            (high > 1.5) & (low >= -_TOLERANCE),
            tf.strings.join(
                [
                    f"{name} {_RANGE}; got values up to ",
                    high_text,
                    ": divide by 255 (or pass uint8).",
                ]
            ),
            tf.where(
                low < -0.5,
                tf.strings.join(
                    [
                        values,
                        ": map [-1, 1] inputs back with (x + 1) / 2 and undo any mean/std "
                        "normalisation (the model takes pixels in [0, 1]).",
                    ]
                ),
                tf.strings.join(
                    [values, ": clip with tf.clip_by_value(x, 0.0, 1.0) (resizing overshoots)."]
                ),
            ),
        ),
    )


def _range_assert(images: tf.Tensor, name: str):
    # One reduction decides; the message (two more reductions and string ops) is only built
    # when it fails. NaN fails too: the distance is NaN and NaN <= bound is false.
    within = tf.reduce_max(tf.abs(images - 0.5)) <= 0.5 + _TOLERANCE
    message = tf.cond(within, lambda: tf.constant(""), lambda: _range_message(images, name))
    return _assert(within, message)


def check_images(images, *, name: str = "images", rank: int | None = 4) -> tf.Tensor:
    """``images`` as a tensor after checking it is uint8, or float32 with values in [0, 1].

    ``rank`` 4 expects a batch [B, H, W, 3], 3 one image [H, W, 3], None either. Values may
    stray from [0, 1] by float rounding (up to 1e-3). Wrong dtypes raise TypeError and wrong
    static shapes ValueError when traced; values outside [0, 1] (one reduction over float
    images, none for uint8) and wrong dynamic shapes (rank, channels, an empty batch) fail at
    run time with tf.errors.InvalidArgumentError. The returned tensor depends on those
    assertions, so graph code that uses it runs them first. Messages name ``name`` and the fix.
    """
    images = tf.convert_to_tensor(images)
    problem = dtype_problem(images.dtype, name)
    if problem:
        raise TypeError(problem)
    _check_static(images, name, rank)
    asserts = _shape_asserts(images, name, rank)
    if images.dtype == tf.float32:
        asserts.append(_range_assert(images, name))
    if not asserts:
        return images
    with tf.control_dependencies(asserts):
        if images.shape.rank is None or images.shape[-1] is None:
            return _with_layout(images, rank or images.shape.rank)
        return tf.identity(images)


def _with_layout(images: tf.Tensor, rank: int) -> tf.Tensor:
    """``images`` declared as [..., 3] of rank ``rank``, for code traced without a known shape.

    A SavedModel function traced for any shape is traced again with the caller's shape when it
    is called, and TensorFlow carries that shape into the network: a wrong one fails there
    before the assertions run ("Shape must be rank 4 but is rank 3 for Pad"), or aborts the
    process in oneDNN's graph rewrite (a rank-3 input to Conv2D). An If op's outputs have the
    shapes declared when it was built, and its other branch feeds the network a 1x1 stand-in
    whenever the layout is wrong, so the network only ever sees a valid shape; the assertions
    stop the call before either branch runs. EnsureShape would not do: its own shape check
    fires first, with its own message.
    """
    layout = [None] * (rank - 1) + [3]
    dims = tf.shape(images)
    fits = tf.equal(tf.size(dims), rank) & _last_is_3(dims)

    def declared():
        out = tf.identity(images)
        out.set_shape(layout)
        return out

    return tf.cond(fits, declared, lambda: tf.zeros([1] * (rank - 1) + [3], images.dtype))
