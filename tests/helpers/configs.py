"""The tiny settings every test trains with, defined once: as a Config (`tiny_config`, for
in-process tests) and as `run.py` flags (`tiny_flags`, for tests that run the command line in
subprocesses: tests/helpers/rel_proc.py, tests/training/test_train_distributed.py, bench/soak.py)."""

from __future__ import annotations

from tf_simclr.config import Config

# A model and schedule small enough for a test: ResNet-18 at width 1/8 on 16 px views, batch 32,
# a checkpoint every 2 steps, no warmup, no export or summaries.
TINY_SETTINGS = dict(
    train_batch_size=32,
    image_size=16,
    width_multiplier=0.125,
    proj_out_dim=16,
    steps_per_loop=2,
    checkpoint_steps=2,
    warmup_epochs=0.0,
    export=False,
    summaries=False,
    seed=3,
    # The default buffer (10,000) holds all 5,000 embedded training images: filling it decodes
    # every one before the first step, ~1.5 s of each tiny run's pipeline.
    shuffle_buffer=256,
    # Fixed, not "auto": the same numbers on CPUs with and without bfloat16 units
    # (tests/training/test_precision.py covers the mixed policies).
    precision="float32",
)

# In-process evaluation settings on top of TINY_SETTINGS (small probe, few eval batches).
# The random-init baseline and the pictures are off: each evaluation would repeat them (the
# baseline alone is a second network's tracing, features, kNN and probe, ~5 s); the tests
# that check them switch them on (tests/workflows/test_train.py, test_unlabelled.py,
# test_mixed_data.py).
TINY_EVAL_SETTINGS = dict(
    train_steps=4,
    eval_batch_size=250,
    eval_steps=2,
    linear_eval_epochs=3,
    knn_k=20,
    random_init_baseline=False,
    neighbour_images=0,
    projector_embeddings=0,
)


def tiny_config(model_dir, **changes) -> Config:
    """TINY_SETTINGS (+ TINY_EVAL_SETTINGS) as a Config for `model_dir`, with `changes`."""
    values = dict(model_dir=str(model_dir), **TINY_SETTINGS, **TINY_EVAL_SETTINGS)
    values.update(changes)
    return Config(**values)


def as_flags(settings: dict) -> list[str]:
    """`--name=value` for each setting (booleans as true/false, as absl reads them)."""
    flags = []
    for name, value in settings.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        flags.append(f"--{name}={value}")
    return flags


def tiny_flags(model_dir, train_steps: int, *extra: str, **changes) -> list[str]:
    """`run.py` flags for a tiny pretraining run: TINY_SETTINGS with `changes` (keyword
    settings), `--mode=train`, model_dir, train_steps, then the `extra` flags verbatim."""
    settings = {"mode": "train", **TINY_SETTINGS, **changes}
    return [
        *as_flags(settings),
        f"--model_dir={model_dir}",
        f"--train_steps={train_steps}",
        *extra,
    ]
