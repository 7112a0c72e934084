"""A 2-D convolution whose filter gradient is computed as one matmul per kernel tap.

On CPU, oneDNN's bfloat16 filter-gradient kernel is slow where the output is small and the
channels many (the last ResNet stages): on an AMX Xeon, 63 GFLOP/s for a 3x3 conv on 4x4x512
maps against 613 GFLOP/s for the same gradient as nine shifted (B*H*W, C_in)^T (B*H*W, C_out)
matmuls (``bench/bench_conv_grad.py`` measures both per stage). The forward pass and the input
gradient stay TensorFlow's own convolution ops; only the filter gradient changes, and it is the
same sum in a different order.
"""

from __future__ import annotations

import tensorflow as tf

# Output maps of at most this many positions take the matmul filter gradient (bfloat16, CPU):
# measured faster at 4x4 and 8x8, slower from 16x16 up (bench/bench_conv_grad.py).
MAX_MATMUL_GRAD_POSITIONS = 64


def filter_gradient_by_matmuls(x, dy, kernel_size: int, strides: int):
    """d(loss)/d(kernel) of a VALID convolution of ``x`` giving ``dy``'s shape, as
    ``kernel_size**2`` matmuls over shifted views of ``x`` (NHWC, kernel HWIO).

    Strided convolutions first split ``x`` into its ``strides**2`` phases (one reshape and
    transpose), so every view is a contiguous slice: TF's strided slices are several times
    slower than the matmuls they feed.
    """
    in_channels, out_channels = x.shape[-1], dy.shape[-1]
    # Static sizes where known: TF's slices are slower with tensor bounds.
    out_h = dy.shape[1] if dy.shape[1] is not None else tf.shape(dy)[1]
    out_w = dy.shape[2] if dy.shape[2] is not None else tf.shape(dy)[2]
    flat_dy = tf.reshape(dy, [-1, out_channels])
    phases = _phases(x, strides)
    taps = []
    for i in range(kernel_size):
        for j in range(kernel_size):
            phase = phases[i % strides][j % strides]
            row, col = i // strides, j // strides
            window = phase[:, row : row + out_h, col : col + out_w, :]
            flat_x = tf.reshape(window, [-1, in_channels])
            taps.append(tf.matmul(flat_x, flat_dy, transpose_a=True))
    return tf.reshape(tf.stack(taps), [kernel_size, kernel_size, in_channels, out_channels])


def _phases(x, strides: int):
    """``phases[a][b] == x[:, a::strides, b::strides, :]`` (zero-padded to a common size)."""
    if strides == 1:
        return [[x]]
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return [[x[:, a::strides, b::strides, :] for b in range(strides)] for a in range(strides)]
    pad_h, pad_w = -height % strides, -width % strides
    x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    rows, cols = (height + pad_h) // strides, (width + pad_w) // strides
    split = tf.reshape(x, [-1, rows, strides, cols, strides, x.shape[-1]])
    split = tf.transpose(split, [2, 4, 0, 1, 3, 5])
    return [[split[a, b] for b in range(strides)] for a in range(strides)]


def conv2d_with_matmul_filter_gradient(x, kernel, strides: int, padding: str):
    """``tf.nn.conv2d(x, kernel, strides, padding)`` (square kernel, odd size for "SAME"), whose
    gradient for ``kernel`` is `filter_gradient_by_matmuls`; the input gradient is TF's own."""
    kernel_size = kernel.shape[0]
    if padding == "SAME" and (strides != 1 or kernel_size % 2 == 0):
        raise ValueError("SAME padding is supported for stride 1 and odd kernel sizes only.")

    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.conv2d(x, kernel, strides, padding)

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x),
                filter=kernel,
                out_backprop=dy,
                strides=[1, strides, strides, 1],
                padding=padding,
            )
            padded = x
            if padding == "SAME" and kernel_size > 1:
                half = kernel_size // 2
                padded = tf.pad(x, [[0, 0], [half, half], [half, half], [0, 0]])
            dkernel = filter_gradient_by_matmuls(padded, dy, kernel_size, strides)
            return dx, tf.cast(dkernel, kernel.dtype)

        return y, grad

    return conv(x, kernel)


def matmul_filter_gradient_pays_off(dtype, output_shape) -> bool:
    """Whether `conv2d_with_matmul_filter_gradient` is the faster choice: bfloat16 on a CPU-only
    host, small static output maps."""
    if dtype != tf.bfloat16 or len(output_shape) != 4:
        return False
    height, width = output_shape[1], output_shape[2]
    if height is None or width is None or height * width > MAX_MATMUL_GRAD_POSITIONS:
        return False
    if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        return False
    return not tf.config.list_logical_devices("GPU")
