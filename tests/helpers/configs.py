"""Small Configs for tests."""

from tf_simclr.config import Config


def tiny_config(model_dir, **changes):
    """A model and schedule small enough for a test: ResNet-18 at width 1/8 on 16 px views."""
    values = dict(
        model_dir=str(model_dir),
        train_steps=4,
        train_batch_size=32,
        eval_batch_size=250,
        eval_steps=2,
        image_size=16,
        width_multiplier=0.125,
        proj_out_dim=16,
        steps_per_loop=2,
        checkpoint_steps=2,
        linear_eval_epochs=3,
        knn_k=20,
        warmup_epochs=0.0,
        export=False,
        summaries=False,
        seed=3,
        # Fixed, not "auto": the same numbers on CPUs with and without bfloat16 units
        # (tests/test_precision.py covers the mixed policies).
        precision="float32",
    )
    values.update(changes)
    return Config(**values)
