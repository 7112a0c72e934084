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

LINEAR_WEIGHT_DECAY = 1e-4  # the linear probe's L2 weight decay unless one is chosen
# Transfer evaluation (runner, --mode=eval --checkpoint) chooses the probe's weight decay from
# these on a held-out HOLDOUT_FRACTION of the training split, then refits on all of it.
WEIGHT_DECAY_CANDIDATES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
HOLDOUT_FRACTION = 0.2


class InferenceFunction:
    """`model(images, training=False)` as one tf.function, traced once per input shape and
    reused for every dataset and output it is given to (`extract_features`,
    `classification_accuracy`); a bare model passed to them is traced anew on each call."""

    def __init__(self, model: Callable) -> None:
        self._infer = tf.function(
            lambda images: model(images, training=False), reduce_retracing=True
        )

    def __call__(self, images):
        return self._infer(images)


def as_inference(model: Callable) -> InferenceFunction:
    """`model` as an InferenceFunction (itself when it is one)."""
    return model if isinstance(model, InferenceFunction) else InferenceFunction(model)


def extract_outputs(
    model: Callable,
    dataset: tf.data.Dataset,
    keys: Sequence[str],
    *,
    max_batches: int | None = None,
    on_batch: Sequence[Callable[[np.ndarray, dict], None]] = (),
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run `model(images, training=False)` over {"image", "label"} batches once, keeping the
    outputs named by `keys` (e.g. features and logits from the same pass).

    Returns ({key: [N, ...] float32}, labels [N] int64). `model` (or an InferenceFunction of
    it) returns a dict holding every key, or a tensor when `keys` is one key. Each function of
    `on_batch` is called with every batch's output of `keys[0]` and the batch itself (e.g. the
    collectors of tf_simclr.evaluation.visualize), in order.
    """
    infer = as_inference(model)
    outputs = {key: [] for key in keys}
    labels = []
    for i, batch in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        batch_outputs = infer(batch["image"])
        if not isinstance(batch_outputs, dict):
            batch_outputs = {keys[0]: batch_outputs}
        for key in keys:
            if key not in batch_outputs:
                raise KeyError(
                    f"feature_key={key!r} is not a model output; outputs: {sorted(batch_outputs)}"
                )
            outputs[key].append(tf.cast(batch_outputs[key], tf.float32).numpy())
        for observe in on_batch:
            observe(outputs[keys[0]][-1], batch)
        labels.append(batch["label"].numpy())
    if not labels:
        raise ValueError("The evaluation dataset is empty: check --eval_split / --dataset.")
    arrays = {key: np.concatenate(parts).astype(np.float32) for key, parts in outputs.items()}
    return arrays, np.concatenate(labels).astype(np.int64)


def extract_features(
    model: Callable,
    dataset: tf.data.Dataset,
    *,
    feature_key: str = "final_avg_pool",
    max_batches: int | None = None,
    on_batch: Sequence[Callable[[np.ndarray, dict], None]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model(images, training=False)` over {"image", "label"} batches.

    Returns (features [N, D] float32, labels [N] int64). `model` (or an InferenceFunction of
    it) may return a tensor or a dict holding `feature_key`. Each function of `on_batch` is
    called with every batch's features and the batch itself, in order (`extract_outputs`).
    """
    outputs, labels = extract_outputs(
        model, dataset, (feature_key,), max_batches=max_batches, on_batch=on_batch
    )
    return outputs[feature_key], labels


def labelled_only(
    features: np.ndarray, labels: np.ndarray, *, source: str = "the split"
) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the labelled rows (label >= 0). Unlabelled images (label -1, as
    in STL-10's "unlabelled" split) have no class to vote for, fit or score, so they are left
    out, with their number logged. ValueError naming `source` (e.g. the flag that chose the
    split) when no row is labelled."""
    labels = np.asarray(labels)
    keep = labels >= 0
    if not keep.any():
        raise ValueError(
            f"{source} has no labelled example ({len(labels)} images, every label -1): the kNN "
            "bank, the linear probe and the accuracies need labels. Give a split with labels "
            "(e.g. 'train' or 'test'; pretraining itself may use 'train+unlabelled')."
        )
    if keep.all():
        return features, labels
    log.info(
        "%s: %d labelled examples used, %d unlabelled ones (label -1) left out.",
        source,
        int(keep.sum()),
        int((~keep).sum()),
    )
    return np.asarray(features)[keep], labels[keep]


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
    """Top-1 (and top-5, with more than 5 classes) accuracy of weighted kNN. The bank holds
    the labelled training rows only, and only labelled test rows are scored (`labelled_only`)."""
    train_features, train_labels = labelled_only(
        train_features, train_labels, source="The kNN training set"
    )
    test_features, test_labels = labelled_only(
        test_features, test_labels, source="The kNN test set"
    )
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


def _check_epochs(epochs) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"epochs must be a positive integer, got {epochs!r}: an untrained probe's accuracy "
            "means nothing."
        )


class _ProbeTrainer:
    """Softmax regression on standardised features of width `dim`, trained with SGD + momentum
    on a cosine schedule with an L2 term weight_decay * ||W||^2 / 2. Its variables and its
    training loop (one tf.function trace) are built once; each `fit` starts afresh, for any
    number of examples, epochs and weight decay."""

    def __init__(self, dim: int, num_classes: int, *, batch_size: int, learning_rate: float):
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weights = tf.Variable(tf.zeros([dim, num_classes]))
        self.bias = tf.Variable(tf.zeros([num_classes]))
        self.velocity = [
            tf.Variable(tf.zeros_like(self.weights)),
            tf.Variable(tf.zeros_like(self.bias)),
        ]
        self._train = tf.function(
            self._train_loop,
            input_signature=[
                tf.TensorSpec([None, dim], tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.int32),  # epochs
                tf.TensorSpec([], tf.float32),  # weight decay
                tf.TensorSpec([], tf.int32),  # seed
            ],
        )

    def _train_loop(self, x_all, y_all, epochs, weight_decay, seed):
        batch_size = self.batch_size
        n = tf.shape(x_all)[0]
        steps_per_epoch = tf.maximum(1, (n + batch_size - 1) // batch_size)
        total_steps = tf.cast(tf.maximum(1, epochs * steps_per_epoch), tf.float32)
        params = [self.weights, self.bias]
        loss = tf.constant(0.0)
        for epoch in tf.range(epochs):
            order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=[seed, epoch])
            for batch in tf.range(steps_per_epoch):
                idx = order[batch * batch_size : (batch + 1) * batch_size]
                x = tf.gather(x_all, idx)
                y = tf.gather(y_all, idx)
                step = tf.cast(epoch * steps_per_epoch + batch, tf.float32)
                lr = 0.5 * self.learning_rate * (1.0 + tf.cos(np.pi * step / total_steps))
                with tf.GradientTape() as tape:
                    logits = tf.matmul(x, self.weights) + self.bias
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                    ) + 0.5 * weight_decay * tf.reduce_sum(self.weights**2)
                grads = tape.gradient(loss, params)
                # TF1's MomentumOptimizer (v <- 0.9 v + g; w <- w - lr_t v), not Keras' SGD
                # (m <- 0.9 m - lr_t g; w <- w + m): the two agree only at a constant rate.
                # On the cosine schedule Keras' SGD ended 8.5% (10 epochs) to 0.02% (100
                # epochs) away in the weights, measured on a 10-class, 64-d Gaussian mixture.
                for var, vel, grad in zip(params, self.velocity, grads, strict=True):
                    vel.assign(0.9 * vel + grad)
                    var.assign_sub(lr * vel)
        return loss

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        epochs: int,
        weight_decay: float,
        seed: int,
    ) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
        """Train from a fresh start (weights drawn with `seed`); returns (features -> logits,
        the final batch's loss)."""
        mean = features.mean(axis=0, keepdims=True)
        std = features.std(axis=0, keepdims=True) + 1e-6
        rng = tf.random.Generator.from_seed(seed)
        self.weights.assign(rng.normal(self.weights.shape, stddev=0.01))
        for variable in (self.bias, *self.velocity):
            variable.assign(tf.zeros_like(variable))
        final_loss = float(
            self._train(
                tf.constant(((features - mean) / std).astype(np.float32)),
                tf.constant(labels, tf.int32),
                tf.constant(epochs, tf.int32),
                tf.constant(weight_decay, tf.float32),
                tf.constant(seed, tf.int32),
            )
        )
        w, b = self.weights.numpy(), self.bias.numpy()

        def logits(x: np.ndarray) -> np.ndarray:
            return (((x - mean) / std).astype(np.float32) @ w) + b

        return logits, final_loss


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
    weight_decay: float = LINEAR_WEIGHT_DECAY,
    seed: int = 0,
) -> dict[str, float]:
    """Linear probe on frozen features: softmax regression trained with SGD + momentum and a
    cosine schedule on standardised features, on the labelled rows (`labelled_only`). Returns
    top-1 / top-5 test accuracy."""
    _check_epochs(epochs)
    if len(train_features) and len(test_features):
        train_features, train_labels = labelled_only(
            train_features, train_labels, source="The linear probe's training set"
        )
        test_features, test_labels = labelled_only(
            test_features, test_labels, source="The linear probe's test set"
        )
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError(
            f"linear_eval needs training and test features, got {len(train_features)} and "
            f"{len(test_features)} examples."
        )
    trainer = _ProbeTrainer(
        train_features.shape[1], num_classes, batch_size=batch_size, learning_rate=learning_rate
    )
    logits, final_loss = trainer.fit(
        train_features, train_labels, epochs=epochs, weight_decay=weight_decay, seed=seed
    )
    scores = logits(test_features)
    return {**_topk_metrics("linear_", scores, test_labels), "linear_train_loss": final_loss}


def holdout_split(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) positions of `labels`: `fraction` of each class (rounded, at least one)
    is held out, chosen by a permutation seeded with `seed`; a class of one example is not."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = (
            0 if len(members) < 2 else min(len(members) - 1, max(1, round(fraction * len(members))))
        )
        held.append(members[:count])
        fit.append(members[count:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def choose_weight_decay(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 100,
    candidates: Sequence[float] = WEIGHT_DECAY_CANDIDATES,
    holdout_fraction: float = HOLDOUT_FRACTION,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """The linear probe's L2 weight decay chosen on held-out training examples, as in SimCLR's
    transfer evaluation: a probe per candidate is fit on the rest of the training split and
    scored on a class-stratified `holdout_fraction` of it (top-1, ties broken by the lower
    cross-entropy). Returns (the chosen weight decay, {candidate: held-out top-1}); the
    default LINEAR_WEIGHT_DECAY and {} when no example can be held out."""
    _check_epochs(epochs)
    train_features, train_labels = labelled_only(
        train_features, train_labels, source="The linear probe's training set"
    )
    fit, held = holdout_split(train_labels, holdout_fraction, seed)
    if len(held) == 0:
        log.warning(
            "Linear probe: no class has 2 training examples to hold one out; weight decay %g.",
            LINEAR_WEIGHT_DECAY,
        )
        return LINEAR_WEIGHT_DECAY, {}
    x_held, y_held = train_features[held], train_labels[held]
    trainer = _ProbeTrainer(
        train_features.shape[1], num_classes, batch_size=batch_size, learning_rate=learning_rate
    )
    scored = {}
    for weight_decay in candidates:
        logits, _ = trainer.fit(
            train_features[fit],
            train_labels[fit],
            epochs=epochs,
            weight_decay=weight_decay,
            seed=seed,
        )
        scores = logits(x_held)
        cross_entropy = float(
            tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_held, logits=scores)
            )
        )
        scored[weight_decay] = (topk_accuracy(scores, y_held, 1), -cross_entropy)
    best = max(candidates, key=lambda wd: scored[wd])
    log.info(
        "Linear probe weight decay %g, chosen on %d held-out training examples (top-1: %s).",
        best,
        len(held),
        ", ".join(f"{wd:g} {100 * acc:.1f}%" for wd, (acc, _) in scored.items()),
    )
    return best, {wd: acc for wd, (acc, _) in scored.items()}


def classification_accuracy(
    model: Callable,
    dataset: tf.data.Dataset,
    *,
    max_batches: int | None = None,
    source: str = "The evaluation split",
) -> dict[str, float]:
    """Top-1 (and top-5, with more than 5 classes) of the model's supervised logits
    ("logits_sup") on the labelled images (label >= 0) of {"image","label"} data (`source`
    names it in the error when it has none)."""
    scores, labels = extract_features(
        model, dataset, feature_key="logits_sup", max_batches=max_batches
    )
    return logits_accuracy(scores, labels, source=source)


def logits_accuracy(
    scores: np.ndarray, labels: np.ndarray, *, source: str = "The evaluation split"
) -> dict[str, float]:
    """Top-1 (and top-5, with more than 5 classes) of class scores [N, C] on the labelled rows
    (label >= 0); ValueError naming `source` when no row is labelled."""
    scores, labels = labelled_only(scores, labels, source=source)
    return _topk_metrics("", scores, labels)
