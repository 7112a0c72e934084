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

``--precision`` picks the Keras dtype policy of the timed model; the ceilings (2048^3 matmul
and the best 3x3 conv of the first two stages, ``conv3x3_gflops_now``) are measured in the same
dtype, and ``fraction_of_conv_ceiling`` is the step's share of the conv one. ``--compare`` times
float32 and mixed_bfloat16 twins (same weights) interleaved step by step in one process and
prints ``bfloat16_speedup_median`` (float32 step time / bfloat16 step time, per pair): sound
even on a loaded machine.

Example: python bench/bench_train_step.py --batch-size 256 --steps 3   (default is a quick run)
         python bench/bench_train_step.py --batch-size 256 --steps 6 --compare
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
from default_run import cpu_model  # noqa: E402  (bench/, the script's own folder)


def _profile_flops(concrete_fn) -> int:
    from tensorflow.python.profiler import model_analyzer, option_builder

    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(model_analyzer.profile(concrete_fn.graph, options=opts).total_float_ops)


def _best_seconds(fn, *args, reps: int = 4) -> float:
    fn(*args).numpy()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args).numpy()
        best = min(best, time.perf_counter() - t0)
    return best


def _matmul_gflops(dtype=tf.float32, n: int = 2048) -> float:
    """Matmul throughput right now in ``dtype``: the ceiling to compare against on a shared
    machine."""
    a = tf.cast(tf.random.stateless_normal((n, n), seed=[1, 1]), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=[1, 2]), dtype)
    return 2 * n**3 / _best_seconds(tf.function(tf.matmul), a, b) / 1e9


# 3x3 convolutions of the CIFAR ResNet's first two stages (NHWC input, channels in = out).
_CONV_SHAPES = ((32, 64), (16, 128))


def _conv_gflops(dtype=tf.float32, batch: int = 256) -> float:
    """Best 3x3 stride-1 convolution throughput in ``dtype`` over `_CONV_SHAPES`."""
    conv = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
    best = 0.0
    for size, channels in _CONV_SHAPES:
        x = tf.cast(tf.random.stateless_normal((batch, size, size, channels), [2, 1]), dtype)
        w = tf.cast(tf.random.stateless_normal((3, 3, channels, channels), [2, 2]), dtype)
        flops = 2 * batch * size * size * channels * channels * 9
        best = max(best, flops / _best_seconds(conv, x, w) / 1e9)
    return best


def _optimizer(name: str, lr: float):
    if name == "lars":
        from tf_simclr.training.optim import LARS

        return LARS(learning_rate=lr, momentum=0.9, weight_decay=1e-4)
    return keras.optimizers.SGD(lr, momentum=0.9)


def _build(args, fused: bool, precision: str = "float32"):
    from tf_simclr.network.model import build_model
    from tf_simclr.training.precision import policy_scope

    keras.utils.set_random_seed(0)
    with policy_scope(precision):
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


def _interleave(step_a, step_b, batch, steps: int) -> tuple[list, list]:
    """Alternate steps of two warmed-up step functions so both see the same machine load;
    the (wall, cpu) seconds of each one's steps, pair by pair."""
    times_a, times_b = [], []
    for _ in range(steps):
        times_a.append(_timed(step_a, batch))
        times_b.append(_timed(step_b, batch))
    return times_a, times_b


def _ratios(numerators, denominators, index: int) -> list[float]:
    """Per-pair ratios of wall (index 0) or cpu (index 1) seconds."""
    return [n[index] / d[index] for n, d in zip(numerators, denominators, strict=True)]


def _compare_bn(args, step, batch) -> dict:
    """Interleave steps of the fused-BN model with a Keras-BN twin in this process; report
    per-pair time ratios (keras / fused)."""
    twin = _build(args, fused=args.bn != "fused", precision=args.precision)
    other = tf.function(twin.train_step, jit_compile=args.jit)
    other(batch)
    other(batch)
    fused_step, keras_step = (step, other) if args.bn == "fused" else (other, step)
    fused_times, keras_times = _interleave(fused_step, keras_step, batch, args.steps)
    wall, cpu = _ratios(keras_times, fused_times, 0), _ratios(keras_times, fused_times, 1)
    return {
        "keras_bn_over_fused_bn_wall_ratios": [round(r, 3) for r in wall],
        "keras_bn_over_fused_bn_wall_median": float(np.median(wall)),
        "keras_bn_over_fused_bn_cpu_median": float(np.median(cpu)),
    }


def _compare_precisions(args, batch) -> dict:
    """float32 and mixed_bfloat16 steps of the same network and weights, interleaved step by
    step in this process, with both dtypes' ceilings measured alongside."""
    f32 = _build(args, fused=args.bn == "fused", precision="float32")
    bf16 = _build(args, fused=args.bn == "fused", precision="mixed_bfloat16")
    bf16.set_weights(f32.get_weights())
    steps = {}
    for name, model in (("float32", f32), ("mixed_bfloat16", bf16)):
        steps[name] = tf.function(model.train_step, jit_compile=args.jit)
        for _ in range(1 + args.warmup):
            steps[name](batch)
    ceilings = _ceilings(steps)
    f32_times, bf16_times = _interleave(
        steps["float32"], steps["mixed_bfloat16"], batch, args.steps
    )
    ratios = _ratios(f32_times, bf16_times, 0)
    ceilings = _ceilings(steps, previous=ceilings)
    result = {"float32_over_bfloat16_step_time_ratios": [round(r, 3) for r in ratios]}
    result["bfloat16_speedup_median"] = float(np.median(ratios))
    for name, timed in (("float32", f32_times), ("mixed_bfloat16", bf16_times)):
        t = [wall for wall, _ in timed]
        result[name] = {
            "step_time_s_median": float(np.median(t)),
            "images_per_s": args.batch_size / float(np.median(t)),
            "matmul_gflops_now": ceilings[f"{name}_matmul"],
            "conv3x3_gflops_now": ceilings[f"{name}_conv"],
        }
    return result


def _ceilings(precisions, previous: dict | None = None) -> dict:
    """Matmul and conv ceilings in each policy's compute dtype right now; with ``previous``
    (measured before the timed steps), the better of the two readings."""
    out = {}
    for precision in precisions:
        dtype = tf.as_dtype(keras.DTypePolicy(precision).compute_dtype)
        out[f"{precision}_matmul"] = _matmul_gflops(dtype)
        out[f"{precision}_conv"] = _conv_gflops(dtype)
    if previous:
        out = {key: max(value, previous[key]) for key, value in out.items()}
    return out


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
    p.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        default="float32",
        help="Keras dtype policy of the timed model",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="time float32 and mixed_bfloat16 steps interleaved in this process and print their "
        "ratio (load-robust A/B); --precision is then ignored",
    )
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

    b, s = args.batch_size, args.image_size
    batch = {
        "view1": tf.random.stateless_uniform((b, s, s, 3), seed=[0, 1]),
        "view2": tf.random.stateless_uniform((b, s, s, 3), seed=[0, 2]),
        "label": tf.random.stateless_uniform(
            (b,), seed=[0, 3], maxval=args.num_classes, dtype=tf.int32
        ),
    }
    about = {
        "depth": args.depth,
        "width": args.width,
        "image_size": s,
        "batch_size_pairs": b,
        "views_per_step": 2 * b,
        "bn": args.bn,
        "jit": args.jit,
        "optimizer": args.optimizer,
        "steps": args.steps,
        "tf_version": tf.__version__,
        # "1" (tf_simclr's default) or "0" (stock TensorFlow on CPUs without AVX-512).
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        "keras_version": keras.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
    }
    if args.compare:
        result = {"benchmark": "pretrain_train_step_precision_compare", **about}
        result.update(_compare_precisions(args, batch))
        if not args.no_flops:
            model = _build(args, fused=args.bn == "fused")
            step_3x = 3 * _forward_flops(model, b, s)
            result["step_tflop_3x_forward"] = step_3x / 1e12
            for name in ("float32", "mixed_bfloat16"):
                entry = result[name]
                entry["gflops"] = step_3x / entry["step_time_s_median"] / 1e9
                entry["fraction_of_matmul_ceiling"] = entry["gflops"] / entry["matmul_gflops_now"]
                entry["fraction_of_conv_ceiling"] = entry["gflops"] / entry["conv3x3_gflops_now"]
        print(json.dumps(result, indent=2))
        return result

    model = _build(args, fused=args.bn == "fused", precision=args.precision)
    step = tf.function(model.train_step, jit_compile=args.jit)

    t0 = time.perf_counter()
    concrete = step.get_concrete_function(batch)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logs = step(batch)
    first_step_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        step(batch)
    ceilings = _ceilings((args.precision,))
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        logs = step(batch)
        float(logs["loss"])  # block until done
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    ceilings = _ceilings((args.precision,), previous=ceilings)
    result = {
        "benchmark": "pretrain_train_step",
        **about,
        "precision": args.precision,
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
        "matmul_gflops_now": ceilings[f"{args.precision}_matmul"],
        "conv3x3_gflops_now": ceilings[f"{args.precision}_conv"],
    }
    if not args.no_flops:
        step_3x = 3 * _forward_flops(model, b, s)
        gflops_best = step_3x / float(np.min(times)) / 1e9
        result.update(
            forward_gflop_per_view=step_3x / 3 / (2 * b) / 1e9,
            step_tflop_3x_forward=step_3x / 1e12,
            step_tflop_profiled=_profile_flops(concrete) / 1e12,
            gflops=step_3x / float(np.median(times)) / 1e9,
            gflops_best=gflops_best,
            flop_count_method="tf.compat.v1 profiler float_operation; gflops uses 3x forward",
            fraction_of_matmul_ceiling=gflops_best / result["matmul_gflops_now"],
            fraction_of_conv_ceiling=gflops_best / result["conv3x3_gflops_now"],
        )
    if args.compare_bn:
        result.update(_compare_bn(args, step, batch))
    print(json.dumps(result, indent=2))
    return result


def _forward_flops(model, batch_pairs: int, size: int) -> int:
    @tf.function
    def forward(images):
        return model(images, training=True)["proj_head_output"]

    spec = tf.TensorSpec([2 * batch_pairs, size, size, 3])
    return _profile_flops(forward.get_concrete_function(spec))


if __name__ == "__main__":
    main()
