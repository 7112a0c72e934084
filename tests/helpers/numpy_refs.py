"""Independent NumPy references the tests compare the library with, written from the method's
definitions (not from tf_simclr's code)."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(step: float, base: float, warmup: float, total: float) -> float:
    """Linear warmup from 0 to `base` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return base * step / warmup
    if total == warmup:
        return 0.0
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * progress))


def weighted_knn_scores(train_x, train_y, test_x, num_classes: int, k: int, temperature: float):
    """Class scores of the weighted kNN protocol: cosine similarity, the k nearest training
    examples (ties in stored order) each vote exp(similarity / temperature) for its class."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for i, q in enumerate(b):
        sims = a @ q
        for j in np.argsort(-sims, kind="stable")[:k]:
            scores[i, train_y[j]] += np.exp(sims[j] / temperature)
    return scores


def weighted_knn_top1(train_x, train_y, test_x, test_y, k, temperature, num_classes) -> float:
    """Top-1 accuracy of `weighted_knn_scores`."""
    scores = weighted_knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    return float(np.mean(scores.argmax(axis=1) == np.asarray(test_y)))


def softmax_regression_optimum(x, y, num_classes: int, weight_decay: float, steps: int = 5000):
    """The minimiser, by full-batch gradient descent in float64, of the linear probe's
    objective: mean softmax cross-entropy + weight_decay / 2 * ||W||^2 on features standardised
    with the training set's mean and standard deviation. Returns features -> logits."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    onehot = np.eye(num_classes)[np.asarray(y)]
    w = np.zeros((x.shape[1], num_classes))
    b = np.zeros(num_classes)
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(z)
        w -= 0.5 * (z.T @ g + weight_decay * w)
        b -= 0.5 * g.sum(axis=0)
    return lambda features: ((np.asarray(features, np.float64) - mean) / std) @ w + b
