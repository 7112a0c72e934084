"""Evaluation of learned representations: feature extraction, weighted kNN and linear probes.

All functions take plain arrays or datasets plus explicit arguments; `train.py` wires them to a
config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


def extract_features(
    model: Callable,
    dataset: tf.data.Dataset,
    *,
    feature_key: str = "final_avg_pool",
    max_batches: int | None = None,
    on_batch: Sequence[Callable[[np.ndarray, dict], None]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model(images, training=False)` over {"image", "label"} batches.

    Returns (features [N, D] float32, labels [N] int64). `model` may return a tensor or a dict
    holding `feature_key`. Each function of `on_batch` is called with every batch's features
    and the batch itself (e.g. the collectors of tf_simclr.visualize), in order.
    """

    @tf.function(reduce_retracing=True)
    def embed(images):
        outputs = model(images, training=False)
        if isinstance(outputs, dict):
            if feature_key not in outputs:
                raise KeyError(
                    f"feature_key={feature_key!r} is not a model output; outputs: {sorted(outputs)}"
                )
            outputs = outputs[feature_key]
        return tf.cast(outputs, tf.float32)

    features, labels = [], []
    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        batch_features = embed(batch["image"]).numpy()
        for observe in on_batch:
            observe(batch_features, batch)
        features.append(batch_features)
        labels.append(batch["label"].numpy())
    if not features:
        raise ValueError("The evaluation dataset is empty: check --eval_split / --dataset.")
    return np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int64)


def knn_classify(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Weighted kNN on L2-normalised features (Wu et al. 2018 protocol).

    Each of the k nearest training samples (cosine similarity s) votes for its class with weight
    exp(s / temperature). Returns class scores [N_test, num_classes].
    """
    if temperature <= 0:
        raise ValueError(f"knn temperature must be > 0, got {temperature}.")
    k = int(min(k, len(train_features)))
    bank = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    bank_labels = tf.constant(train_labels, tf.int32)
    scores = []
    for start in range(0, len(test_features), chunk_size):
        query = tf.math.l2_normalize(
            tf.constant(test_features[start : start + chunk_size], tf.float32), axis=1
        )
        sims = tf.matmul(query, bank, transpose_b=True)
        top_sims, top_idx = tf.math.top_k(sims, k=k)
        weights = tf.exp(top_sims / temperature)
        votes = tf.one_hot(tf.gather(bank_labels, top_idx), num_classes) * weights[..., None]
        scores.append(tf.reduce_sum(votes, axis=1).numpy())
    return np.concatenate(scores)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true label is among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def _topk_metrics(prefix: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top-1 and, with more than 5 classes, top-5 accuracy (with 5 or fewer, top-5 is 1.0
    whatever the scores, so it is not reported)."""
    metrics = {f"{prefix}top1": topk_accuracy(scores, labels, 1)}
    if scores.shape[1] > 5:
        metrics[f"{prefix}top5"] = topk_accuracy(scores, labels, 5)
    return metrics


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> dict[str, float]:
    """Top-1 (and top-5, with more than 5 classes) accuracy of weighted kNN."""
    if k > len(train_features):
        log.warning(
            "kNN: k=%d is more than the %d training examples; every one of them votes.",
            k,
            len(train_features),
        )
    scores = knn_classify(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
    )
    return _topk_metrics("knn_", scores, test_labels)


def linear_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Linear probe on frozen features: softmax regression trained with SGD + momentum and a
    cosine schedule on standardised features. Returns top-1 / top-5 test accuracy."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"epochs must be a positive integer, got {epochs!r}: an untrained probe's accuracy "
            "means nothing."
        )
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError(
            f"linear_eval needs training and test features, got {len(train_features)} and "
            f"{len(test_features)} examples."
        )
    mean = train_features.mean(axis=0, keepdims=True)
    std = train_features.std(axis=0, keepdims=True) + 1e-6
    x_train = ((train_features - mean) / std).astype(np.float32)
    x_test = ((test_features - mean) / std).astype(np.float32)
    n, dim = x_train.shape
    steps_per_epoch = max(1, int(np.ceil(n / batch_size)))
    total_steps = max(1, epochs * steps_per_epoch)

    rng = tf.random.Generator.from_seed(seed)
    weights = tf.Variable(rng.normal([dim, num_classes], stddev=0.01))
    bias = tf.Variable(tf.zeros([num_classes]))
    velocity = [tf.Variable(tf.zeros_like(weights)), tf.Variable(tf.zeros_like(bias))]
    x_all = tf.constant(x_train)
    y_all = tf.constant(train_labels, tf.int32)

    @tf.function
    def train(x_all, y_all):
        loss = tf.constant(0.0)
        for epoch in tf.range(epochs):
            order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=[seed, epoch])
            for batch in tf.range(steps_per_epoch):
                idx = order[batch * batch_size : (batch + 1) * batch_size]
                x = tf.gather(x_all, idx)
                y = tf.gather(y_all, idx)
                step = tf.cast(epoch * steps_per_epoch + batch, tf.float32)
                lr = 0.5 * learning_rate * (1.0 + tf.cos(np.pi * step / total_steps))
                with tf.GradientTape() as tape:
                    logits = tf.matmul(x, weights) + bias
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                    ) + 0.5 * weight_decay * tf.reduce_sum(weights**2)
                grads = tape.gradient(loss, [weights, bias])
                for var, vel, grad in zip([weights, bias], velocity, grads, strict=True):
                    vel.assign(0.9 * vel + grad)
                    var.assign_sub(lr * vel)
        return loss

    final_loss = float(train(x_all, y_all))
    scores = (x_test @ weights.numpy()) + bias.numpy()
    return {**_topk_metrics("linear_", scores, test_labels), "linear_train_loss": final_loss}


def classification_accuracy(
    model: Callable, dataset: tf.data.Dataset, *, max_batches: int | None = None
) -> dict[str, float]:
    """Top-1 (and top-5, with more than 5 classes) of the model's supervised logits
    ("logits_sup") on {"image","label"} data."""
    scores, labels = extract_features(
        model, dataset, feature_key="logits_sup", max_batches=max_batches
    )
    return _topk_metrics("", scores, labels)
