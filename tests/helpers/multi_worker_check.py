"""Subprocess helper for the slow multi-worker test in tests/training/test_distribute.py.

Run as one worker of a cluster described by TF_CONFIG (set by the test). Each worker holds its
slice of a fixed global batch; prints the summed NT-Xent loss and the single-device loss."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tf_simclr.training.distribute import make_strategy, run_and_reduce  # noqa: E402

strategy = make_strategy("multi_worker")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_simclr.objectives.loss import nt_xent_loss  # noqa: E402

rng = np.random.default_rng(0)
z1 = rng.normal(size=(6, 4)).astype(np.float32)
z2 = rng.normal(size=(6, 4)).astype(np.float32)
replicas = strategy.num_replicas_in_sync
b = len(z1) // replicas


def local_rows(ctx):
    i = ctx.replica_id_in_sync_group
    return tf.constant(z1[i * b : (i + 1) * b]), tf.constant(z2[i * b : (i + 1) * b])


inputs = strategy.experimental_distribute_values_from_function(local_rows)
loss = tf.function(
    lambda a, c: run_and_reduce(
        strategy, lambda a, c: nt_xent_loss(a, c, temperature=0.3).loss, args=(a, c)
    )
)(*inputs)
single = nt_xent_loss(z1, z2, temperature=0.3).loss
print("RESULTS " + json.dumps({"replicas": replicas, "loss": float(loss), "single": float(single)}))
