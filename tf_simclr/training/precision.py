"""Numeric precision: which Keras dtype policy a run uses, and why.

``"auto"`` picks ``mixed_bfloat16`` where the hardware computes bfloat16 natively (CPUs with
AVX512_BF16 or AMX, TPUs, GPUs of compute capability 8.0 or more) and ``float32`` elsewhere:
on CPUs without such units TensorFlow emulates bfloat16 and a step is about 3x slower.
Under either mixed policy the weights, batch-norm statistics, the loss, the optimizer state and
checkpoints stay float32; only the convolutions, matmuls and activations are half width.
"""

from __future__ import annotations

import contextlib
import platform
from typing import NamedTuple

import keras
import tensorflow as tf

from tf_simclr.choices import PRECISIONS

# The Keras dtype policies; "auto" resolves to one of them.
POLICIES = tuple(p for p in PRECISIONS if p != "auto")
# /proc/cpuinfo flags of the x86 units that compute bfloat16 dot products in hardware.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionChoice(NamedTuple):
    """The dtype policy chosen for a run and a sentence saying why (for the log)."""

    policy: str
    reason: str


def cpu_bfloat16_flags(cpuinfo_path: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bfloat16 feature flags this CPU reports (empty where unknown or absent)."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(flag for flag in CPU_BFLOAT16_FLAGS if flag in flags)
    except OSError:
        pass
    return ()


def _gpu_compute_capabilities() -> list[tuple[int, int]]:
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        if "compute_capability" in details:
            capabilities.append(tuple(details["compute_capability"]))
    return capabilities


def choose_precision(
    precision: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    cpu_flags: tuple[str, ...] | None = None,
    gpu_capabilities: list[tuple[int, int]] | None = None,
) -> PrecisionChoice:
    """Resolve ``precision`` (one of `PRECISIONS`) to a Keras dtype policy name.

    An explicit policy is returned as given. ``"auto"`` looks at the devices the run computes
    on: the strategy's (TPU, GPU) or, on CPU, the CPU's feature flags. ``cpu_flags`` and
    ``gpu_capabilities`` override what is detected (for tests).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision != "auto":
        return PrecisionChoice(precision, f"precision={precision} was asked for")
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return PrecisionChoice("mixed_bfloat16", "auto: TPUs compute bfloat16 natively")
    if gpu_capabilities is None:
        gpu_capabilities = _gpu_compute_capabilities()
    if gpu_capabilities:
        oldest = min(gpu_capabilities)
        if oldest >= (8, 0):
            return PrecisionChoice(
                "mixed_bfloat16",
                f"auto: GPUs of compute capability {oldest[0]}.{oldest[1]} (>= 8.0) compute "
                "bfloat16 natively",
            )
        return PrecisionChoice(
            "float32",
            f"auto: a GPU of compute capability {oldest[0]}.{oldest[1]} (< 8.0) has no "
            "bfloat16 units (--precision=mixed_float16 may pay off there)",
        )
    if cpu_flags is None:
        cpu_flags = cpu_bfloat16_flags() if platform.machine() in ("x86_64", "AMD64") else ()
    if cpu_flags:
        return PrecisionChoice(
            "mixed_bfloat16", f"auto: this CPU has bfloat16 units ({', '.join(cpu_flags)})"
        )
    return PrecisionChoice(
        "float32",
        "auto: this CPU has no bfloat16 units (no avx512_bf16 or amx_bf16), where bfloat16 "
        "is emulated and slower than float32",
    )


@contextlib.contextmanager
def policy_scope(policy: str):
    """Build layers under Keras dtype policy ``policy``; the previous global policy comes back
    on exit (Keras layers read the global policy when they are constructed)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}.")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
