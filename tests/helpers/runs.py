"""Runs written without training: a model_dir with config.json and one checkpoint of an
untrained network, for tests that only look at what a run holds (which architecture, which
head, how many classes), not at what its steps learned. Writing one takes about a second; a
real tiny run traces its training step first (about ten)."""

from __future__ import annotations

import os

import tensorflow as tf

from tf_simclr import factory
from tf_simclr.config import Config
from tf_simclr.training import checkpoints as ckpt_lib


def untrained_run(config: Config, num_classes: int, step: int = 2) -> str:
    """Write config.json and checkpoint ckpt-`step` of `config`'s untrained network (with
    `num_classes` classes) into config.model_dir, as a training run lays them out; returns the
    checkpoint prefix."""
    os.makedirs(config.model_dir, exist_ok=True)
    model = factory.build_model(config, num_classes)
    global_step = tf.Variable(step, dtype=tf.int64)
    prefix = os.path.join(config.model_dir, f"ckpt-{step}")
    ckpt_lib.training_checkpoint(model, global_step=global_step).write(prefix)
    config.save(config.model_dir)
    return prefix
