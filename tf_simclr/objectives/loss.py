"""NT-Xent contrastive loss with cross-replica negatives, and contrastive metrics.

For a global batch of N images with two views each (2N views), with cosine similarity s and
temperature tau (SimCLR, Chen et al. 2020, eq. 1):

    l(i, j) = -log( exp(s(z_i, z_j)/tau) / sum_{k != i} exp(s(z_i, z_k)/tau) )
    L = 1/(2N) * sum over all 2N anchors of l(anchor, its positive)

Under a `tf.distribute` strategy each replica holds b = N / R images. `nt_xent_loss` gathers the
other replicas' projections (`all_gather`, differentiable) so every anchor sees all 2N - 1 other
views, and returns this replica's *share* of L: the sum over its 2b anchors divided by 2N.
Summing the shares over replicas gives L, and summing the replicas' gradients (what the
strategies' gradient all-reduce does) gives dL/dw. On one device the share is L itself.

The reference TF code returns mean(loss_a + loss_b), twice L; `loss_scale="reference"`
reproduces that scale.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_simclr.choices import LOSS_SCALES

METRIC_MODES = ("reference", "all")

# Logit given to an anchor's similarity with itself. Finite (so no inf - inf = NaN anywhere)
# yet far below any real logit; the loss is computed in float32, where this is representable.
_SELF_LOGIT = float(-0.5 * np.finfo(np.float32).max)


class NTXentOutput(NamedTuple):
    """Result of `nt_xent_loss`.

    loss: float32 scalar, this replica's share of the loss (see module docstring).
    logits: float32 [2b, 2N]. Row r is local anchor r (rows 0..b-1: the local z1, rows b..2b-1:
        the local z2) against every global view, columns [z1 of replica 0, 1, ..., z2 of replica
        0, 1, ...]. The anchor's own column holds a large negative finite number.
    labels: int32 [2b], the column of each anchor's positive.
    """

    loss: tf.Tensor
    logits: tf.Tensor
    labels: tf.Tensor


def _check_temperature(temperature):
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(
                f"temperature must be a finite number > 0, got {temperature!r} "
                "(SimCLR uses 0.1 for ImageNet, 0.5 for CIFAR-10)."
            )


def _gather_from_replicas(z1, z2):
    """Returns (z1_all, z2_all, offset): global views and this replica's first row in them."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return z1, z2, tf.constant(0, tf.int32)
    # One collective for both views: gather [z1 | z2] side by side, then split.
    both = ctx.all_gather(tf.concat([z1, z2], axis=1), axis=0)
    z1_all, z2_all = tf.split(both, 2, axis=1)
    # Local batch sizes may differ (a final partial eval batch), so locate this replica's rows
    # from the gathered sizes rather than replica_id * b.
    # (A masked sum rather than sizes[:replica_id], whose dynamic shape XLA/TPU cannot compile.)
    sizes = ctx.all_gather(tf.shape(z1, out_type=tf.int32)[:1], axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    before = tf.range(ctx.num_replicas_in_sync, dtype=tf.int32) < replica_id
    offset = tf.reduce_sum(tf.where(before, sizes, tf.zeros_like(sizes)))
    return z1_all, z2_all, offset


def nt_xent_loss(z1, z2, *, temperature, hidden_norm=True, loss_scale="paper") -> NTXentOutput:
    """NT-Xent loss of two views' projections z1, z2 ([b, D], this replica's rows).

    Args:
        z1, z2: projections of the first and second view of the same b images, any float dtype;
            cast to float32 before anything else (mixed precision safe).
        temperature: tau > 0.
        hidden_norm: L2-normalise z before the dot product (cosine similarity), as the paper.
        loss_scale: "paper" (default) gives L; "reference" gives 2L like the reference code.

    Returns:
        NTXentOutput(loss, logits, labels); `loss` is this replica's share of the global loss
        (equal to the loss on a single device). See `NTXentOutput` for the logits layout.
    """
    if loss_scale not in LOSS_SCALES:
        raise ValueError(f"loss_scale must be one of {LOSS_SCALES}, got {loss_scale!r}.")
    _check_temperature(temperature)
    z1 = tf.convert_to_tensor(z1)
    z2 = tf.convert_to_tensor(z2)
    if z1.shape.rank != 2 or z2.shape.rank != 2:
        raise ValueError(
            f"z1 and z2 must be [batch, dim] matrices, got shapes {z1.shape} and {z2.shape}."
        )
    if z1.shape.is_fully_defined() and z2.shape.is_fully_defined() and z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape (two views of the same images), "
            f"got {z1.shape} and {z2.shape}."
        )
    z1 = tf.cast(z1, tf.float32)
    z2 = tf.cast(z2, tf.float32)
    if hidden_norm:
        z1 = tf.math.l2_normalize(z1, axis=-1)
        z2 = tf.math.l2_normalize(z2, axis=-1)

    z1_all, z2_all, offset = _gather_from_replicas(z1, z2)
    b = tf.shape(z1)[0]
    n_global = tf.shape(z1_all)[0]

    anchors = tf.concat([z1, z2], axis=0)  # [2b, D]
    candidates = tf.concat([z1_all, z2_all], axis=0)  # [2N, D]
    logits = tf.matmul(anchors, candidates, transpose_b=True) / tf.cast(temperature, tf.float32)

    local = tf.range(b, dtype=tf.int32) + offset
    self_cols = tf.concat([local, local + n_global], axis=0)
    labels = tf.concat([local + n_global, local], axis=0)
    is_self = tf.one_hot(self_cols, 2 * n_global, on_value=True, off_value=False, dtype=tf.bool)
    logits = tf.where(is_self, tf.constant(_SELF_LOGIT, tf.float32), logits)

    per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    loss = tf.reduce_sum(per_anchor) / tf.cast(2 * n_global, tf.float32)
    if loss_scale == "reference":
        loss = 2.0 * loss
    return NTXentOutput(loss=loss, logits=logits, labels=labels)


def contrastive_metrics(logits, labels, *, mode="reference") -> dict[str, tf.Tensor]:
    """Contrastive accuracy and entropy of this replica's anchors (float32 scalars).

    Args:
        logits, labels: as returned by `nt_xent_loss`.
        mode: "reference" (default) reproduces the reference code's metrics: anchors are the
            first view's rows, candidates only the second view's N columns (its logits_ab).
            "all" uses every local anchor against all 2N - 1 other views (the loss's own task).

    Returns:
        {"contrastive_acc": fraction of anchors whose arg-max candidate is the positive,
         "contrastive_entropy": mean over anchors of the entropy of softmax(logits), computed
         as -sum p * log(p + 1e-8) like the reference}.
    """
    if mode not in METRIC_MODES:
        raise ValueError(f"mode must be one of {METRIC_MODES}, got {mode!r}.")
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if mode == "reference":
        b = tf.shape(logits)[0] // 2
        n_global = tf.shape(logits)[1] // 2
        logits = logits[:b, n_global:]
        labels = labels[:b] - n_global
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
    prob = tf.nn.softmax(logits, axis=-1)
    entropy = -tf.reduce_sum(prob * tf.math.log(prob + 1e-8), axis=-1)
    return {
        "contrastive_acc": tf.reduce_mean(tf.cast(hits, tf.float32)),
        "contrastive_entropy": tf.reduce_mean(entropy),
    }


def sum_over_replicas(value) -> tf.Tensor:
    """`value` summed over the replicas inside a replica context (else `value` itself)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


class LabelledCrossEntropy(NamedTuple):
    """Result of `labelled_cross_entropy` (float32 scalars).

    share: this replica's share of the mean cross-entropy over the labelled rows of all
        replicas (summed over replicas: the global mean; 0 where no row is labelled).
    accuracy: top-1 accuracy on the labelled rows of all replicas (the same on every replica;
        0 where no row is labelled).
    count: this replica's labelled rows.
    global_count: the labelled rows of all replicas (the same on every replica).
    """

    share: tf.Tensor
    accuracy: tf.Tensor
    count: tf.Tensor
    global_count: tf.Tensor


def labelled_cross_entropy(logits, labels) -> LabelledCrossEntropy:
    """Softmax cross-entropy of `logits` [b, C] against `labels` [b] on the labelled rows only:
    a negative label marks an unlabelled image, which adds no loss and no gradient. The mean and
    the accuracy are over the labelled rows of the whole (global) batch, so they do not depend
    on how those rows fall on replicas (some replicas may hold none)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    labelled = labels >= 0
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=logits
    )
    labelled_f = tf.cast(labelled, tf.float32)
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)
    # One collective for both sums; counts carry no gradient.
    local = tf.stop_gradient(
        tf.stack([tf.reduce_sum(labelled_f), tf.reduce_sum(hits * labelled_f)])
    )
    global_count, global_hits = tf.unstack(sum_over_replicas(local))
    # A batch without labelled rows contributes nothing (not 0 / 0).
    denominator = tf.maximum(global_count, 1.0)
    share = tf.reduce_sum(tf.where(labelled, per_example, 0.0)) / denominator
    return LabelledCrossEntropy(share, global_hits / denominator, local[0], global_count)
