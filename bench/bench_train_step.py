"""Benchmark one SimCLR pretraining step: two views -> forward + backward -> LARS update.

Runs the model's own Keras ``train_step`` (NT-Xent + supervised head on stop_gradient, BN over
the concatenated 2B batch) on a fixed synthetic batch inside ``tf.function`` and prints JSON:
images/s (pairs per second, the reference's convention), step time and achieved GFLOP/s.

The machine may be shared: the best of a few 2048^3 float32 matmuls, measured before and after
the timed steps (``matmul_gflops_now``), gives the ceiling at that moment, and
``fraction_of_matmul_ceiling`` the step's share of it (comparable across load levels).

FLOPs come from the TF v1 profiler (``float_operation``) on the traced graphs:
* ``step_tflop_3x_forward``: 3 x the profiled forward pass of the 2B views (the convention behind
  the 1.72 TFLOP quoted for the reference ResNet-18 / 32 px / batch-256 step); ``gflops`` uses it.
* ``step_tflop_profiled``: the whole traced training step graph (forward + backprop convs).

Example: python bench/bench_train_step.py --batch-size 256 --steps 3   (default is a quick run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf_simclr's default (see tf_simclr/__init__.py); TF_ENABLE_ONEDNN_OPTS=0 measures stock TF.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _profile_flops(concrete_fn) -> int:
    from tensorflow.python.profiler import model_analyzer, option_builder

    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(model_analyzer.profile(concrete_fn.graph, options=opts).total_float_ops)


def _matmul_gflops(n: int = 2048, reps: int = 4) -> float:
    """float32 matmul throughput right now: the ceiling to compare against on a shared machine."""
    a = tf.random.stateless_normal((n, n), seed=[1, 1])
    b = tf.random.stateless_normal((n, n), seed=[1, 2])
    f = tf.function(tf.matmul)
    f(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _optimizer(name: str, lr: float):
    if name == "lars":
        from tf_simclr.optim import LARS

        return LARS(learning_rate=lr, momentum=0.9, weight_decay=1e-4)
    return keras.optimizers.SGD(lr, momentum=0.9)


def _build(args, fused: bool):
    from tf_simclr.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(
        resnet_depth=args.depth,
        width_multiplier=args.width,
        image_size=args.image_size,
        num_classes=args.num_classes,
        temperature=0.5,
        fused_batch_norm=fused,
    )
    model.optimizer = _optimizer(args.optimizer, 0.1)
    model.optimizer.build(model.trainable_variables)
    return model


def _timed(step, batch):
    t0, c0 = time.perf_counter(), time.process_time()
    float(step(batch)["loss"])  # block until done
    return time.perf_counter() - t0, time.process_time() - c0


def _compare_bn(args, step, batch) -> dict:
    """Interleave steps of the fused-BN model with a Keras-BN twin in this process, so both see
    the same machine load; report per-pair time ratios (keras / fused)."""
    other = tf.function(_build(args, fused=args.bn != "fused").train_step, jit_compile=args.jit)
    other(batch)
    other(batch)
    wall, cpu = [], []
    for _ in range(args.steps):
        a, b = _timed(step, batch), _timed(other, batch)
        if args.bn != "fused":
            a, b = b, a
        wall.append(b[0] / a[0])
        cpu.append(b[1] / a[1])
    return {
        "keras_bn_over_fused_bn_wall_ratios": [round(r, 3) for r in wall],
        "keras_bn_over_fused_bn_wall_median": float(np.median(wall)),
        "keras_bn_over_fused_bn_cpu_median": float(np.median(cpu)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step (256 = reference)")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after tracing")
    p.add_argument("--bn", choices=("fused", "keras"), default="fused")
    p.add_argument("--jit", action="store_true", help="XLA-compile the step")
    p.add_argument("--optimizer", choices=("lars", "momentum"), default="lars")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--intra-op-threads", type=int, default=0)
    p.add_argument("--inter-op-threads", type=int, default=0)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP profiling")
    p.add_argument(
        "--compare-bn",
        action="store_true",
        help="also time a Keras-BN twin, interleaved step by step (load-robust A/B)",
    )
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.steps < 1:
        p.error("--batch-size must be >= 2 and --steps >= 1")

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    model = _build(args, fused=args.bn == "fused")

    b, s = args.batch_size, args.image_size
    batch = {
        "view1": tf.random.stateless_uniform((b, s, s, 3), seed=[0, 1]),
        "view2": tf.random.stateless_uniform((b, s, s, 3), seed=[0, 2]),
        "label": tf.random.stateless_uniform(
            (b,), seed=[0, 3], maxval=args.num_classes, dtype=tf.int32
        ),
    }
    step = tf.function(model.train_step, jit_compile=args.jit)

    t0 = time.perf_counter()
    concrete = step.get_concrete_function(batch)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logs = step(batch)
    first_step_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        step(batch)
    ceiling_before = _matmul_gflops()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        logs = step(batch)
        float(logs["loss"])  # block until done
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)

    ceiling = max(ceiling_before, _matmul_gflops())
    result = {
        "benchmark": "pretrain_train_step",
        "depth": args.depth,
        "width": args.width,
        "image_size": s,
        "batch_size_pairs": b,
        "views_per_step": 2 * b,
        "bn": args.bn,
        "jit": args.jit,
        "optimizer": args.optimizer,
        "steps": args.steps,
        "step_time_s_median": float(np.median(times)),
        "step_time_s_min": float(np.min(times)),
        "step_times_s": [round(t, 4) for t in times],
        # CPU seconds (all threads) per step: far less sensitive to other processes than wall
        # time; on an idle 2-core machine wall time is at best half of it.
        "cpu_s_per_step_median": float(np.median(cpu_times)),
        "images_per_s": b / float(np.median(times)),
        "images_per_s_best": b / float(np.min(times)),
        "trace_s": round(trace_s, 2),
        "first_step_s": round(first_step_s, 2),
        "loss": float(logs["loss"]),
        "tf_version": tf.__version__,
        # "1" (tf_simclr's default) or "0" (stock TensorFlow on CPUs without AVX-512).
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        "keras_version": keras.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if not args.no_flops:

        @tf.function
        def forward(images):
            return model(images, training=True)["proj_head_output"]

        fwd = _profile_flops(forward.get_concrete_function(tf.TensorSpec([2 * b, s, s, 3])))
        step_3x = 3 * fwd
        result.update(
            forward_gflop_per_view=fwd / (2 * b) / 1e9,
            step_tflop_3x_forward=step_3x / 1e12,
            step_tflop_profiled=_profile_flops(concrete) / 1e12,
            gflops=step_3x / float(np.median(times)) / 1e9,
            gflops_best=step_3x / float(np.min(times)) / 1e9,
            flop_count_method="tf.compat.v1 profiler float_operation; gflops uses 3x forward",
            matmul_gflops_now=ceiling,
            fraction_of_matmul_ceiling=step_3x / float(np.min(times)) / 1e9 / ceiling,
        )
    else:
        result["matmul_gflops_now"] = ceiling
    if args.compare_bn:
        result.update(_compare_bn(args, step, batch))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
