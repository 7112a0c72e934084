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
