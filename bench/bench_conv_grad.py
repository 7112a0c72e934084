"""Benchmark convolution filter gradients: TF's kernel against tf_simclr's matmuls.

For each ResNet stage shape (the CIFAR ResNet at 32 px: 32x32x64 ... 4x4x512, plus the
stride-2 entry convs), times ``Conv2DBackpropFilter`` and
``tf_simclr.network.conv_grad.filter_gradient_by_matmuls`` on the same inputs in one process,
interleaved, and prints GFLOP/s of each and their ratio as JSON lines. The matmul path is used
by tf_simclr where it wins (bfloat16, at most ``MAX_MATMUL_GRAD_POSITIONS`` output positions).

Example: python bench/bench_conv_grad.py --batch 512 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_simclr.network.conv_grad import MAX_MATMUL_GRAD_POSITIONS, filter_gradient_by_matmuls  # noqa: E402

# (input size after padding, in channels, out channels, stride, kernel): every distinct conv
# of ResNet-18 1x at 32 px (CIFAR stem) but the stem, then ResNet-50's 1x1 convs at 4x4.
STAGES = (
    (34, 64, 64, 1, 3),
    (18, 128, 128, 1, 3),
    (10, 256, 256, 1, 3),
    (6, 512, 512, 1, 3),
    (34, 64, 128, 2, 3),
    (18, 128, 256, 2, 3),
    (10, 256, 512, 2, 3),
    (32, 64, 128, 2, 1),
    (16, 128, 256, 2, 1),
    (8, 256, 512, 2, 1),
    (4, 2048, 512, 1, 1),
    (4, 512, 2048, 1, 1),
)


def _seconds(fn, x, dy) -> float:
    t0 = time.perf_counter()
    fn(x, dy).numpy()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=512, help="views per step (2 x pairs)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    dtype = tf.as_dtype(args.dtype)
    for size, cin, cout, stride, kernel in STAGES:
        out = (size - kernel) // stride + 1
        x = tf.cast(tf.random.stateless_normal((args.batch, size, size, cin), [0, 1]), dtype)
        dy = tf.cast(tf.random.stateless_normal((args.batch, out, out, cout), [0, 2]), dtype)
        native = tf.function(
            lambda x, dy, cin=cin, cout=cout, stride=stride, kernel=kernel: (
                tf.raw_ops.Conv2DBackpropFilter(
                    input=x,
                    filter_sizes=[kernel, kernel, cin, cout],
                    out_backprop=dy,
                    strides=[1, stride, stride, 1],
                    padding="VALID",
                )
            )
        )
        by_matmuls = tf.function(
            lambda x, dy, stride=stride, kernel=kernel: filter_gradient_by_matmuls(
                x, dy, kernel, stride
            )
        )
        want, got = native(x, dy), by_matmuls(x, dy)  # also the warm-up
        scale = float(tf.reduce_max(tf.abs(tf.cast(want, tf.float32))))
        error = float(tf.reduce_max(tf.abs(tf.cast(want, tf.float32) - tf.cast(got, tf.float32))))
        times = {"native": [], "matmuls": []}
        for _ in range(args.reps):
            times["native"].append(_seconds(native, x, dy))
            times["matmuls"].append(_seconds(by_matmuls, x, dy))
        flops = 2 * args.batch * out * out * cin * cout * kernel * kernel
        native_s, matmul_s = np.median(times["native"]), np.median(times["matmuls"])
        print(
            json.dumps(
                {
                    "input": [args.batch, size, size, cin],
                    "out_channels": cout,
                    "kernel": kernel,
                    "stride": stride,
                    "output_positions": out * out,
                    "dtype": args.dtype,
                    "native_gflops": round(flops / native_s / 1e9, 1),
                    "matmuls_gflops": round(flops / matmul_s / 1e9, 1),
                    "matmuls_speedup": round(float(native_s / matmul_s), 2),
                    "tf_simclr_uses_matmuls": args.dtype == "bfloat16"
                    and out * out <= MAX_MATMUL_GRAD_POSITIONS,
                    "max_abs_difference_over_max": round(error / scale, 5),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
