"""kNN and linear-probe evaluation against NumPy references."""

import numpy as np
import pytest
import tensorflow as tf
from helpers.numpy_refs import (
    softmax_regression_optimum,
    weighted_knn_scores,
    weighted_knn_top1,
)

from tf_simclr.evaluation import evaluate

# The probe's class probabilities against its objective's optimum (the test below): measured
# 0.0135 at most (AMD EPYC, AVX2); halving or doubling the weight decay moves the optimum's
# probabilities by 0.075, no weight decay by 0.28.
PROBE_PROB_ATOL = 0.04


def test_knn_scores_match_numpy_reference():
    rng = np.random.default_rng(1)
    train_x = rng.normal(size=(300, 12)).astype(np.float32)
    train_y = rng.integers(0, 4, size=300)
    test_x = rng.normal(size=(50, 12)).astype(np.float32)
    got = evaluate.knn_classify(
        train_x, train_y, test_x, num_classes=4, k=25, temperature=0.1, chunk_size=16
    )
    want = weighted_knn_scores(train_x, train_y, test_x, 4, 25, 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_topk_accuracy_counts_hits():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([1, 1, 0])
    assert evaluate.topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert evaluate.topk_accuracy(scores, labels, 2) == pytest.approx(3 / 3)


def _blobs(rng, n, centers, noise):
    y = rng.integers(0, len(centers), size=n)
    return (centers[y] + noise * rng.normal(size=(n, centers.shape[1]))).astype(np.float32), y


def test_linear_probe_learns_separable_classes_and_not_random_labels():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(5, 20)) * 1.5
    x, y = _blobs(rng, 1200, centers, 1.0)
    result = evaluate.linear_eval(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=5, epochs=30)
    # Independent reference: nearest class mean on the true centres is near-optimal here.
    dists = ((x[1000:, None, :] - centers[None]) ** 2).sum(-1)
    bayes_like = float(np.mean(dists.argmin(1) == y[1000:]))
    assert result["linear_top1"] >= bayes_like - 0.05
    assert "linear_top5" not in result  # 5 classes: top-5 would be 1.0 whatever the probe
    shuffled = rng.permutation(y)
    chance = evaluate.linear_eval(
        x[:1000], shuffled[:1000], x[1000:], shuffled[1000:], num_classes=5, epochs=30
    )
    assert chance["linear_top1"] < 0.35


def test_linear_probe_reaches_the_optimum_of_its_objective():
    """The probe (SGD + momentum, cosine schedule, mini-batches) ends at the minimiser of its
    convex objective, found in float64 by full-batch gradient descent in NumPy: the same test
    predictions and accuracy, class probabilities within PROBE_PROB_ATOL."""
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(3, 8))
    x, y = _blobs(rng, 600, centers, 1.0)  # overlapping classes: the boundary matters
    train_x, train_y, test_x, test_y = x[:400], y[:400], x[400:], y[400:]
    decay = 1e-2
    optimum = softmax_regression_optimum(train_x, train_y, 3, decay)
    want = optimum(test_x)
    result = evaluate.linear_eval(
        train_x, train_y, test_x, test_y, num_classes=3, epochs=100, weight_decay=decay
    )
    assert result["linear_top1"] == pytest.approx(np.mean(want.argmax(1) == test_y), abs=2 / 200)
    trainer = evaluate._ProbeTrainer(8, 3, batch_size=256, learning_rate=0.1)
    logits, _ = trainer.fit(train_x, train_y, epochs=100, weight_decay=decay, seed=0)
    got = logits(test_x)

    def probs(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    assert np.abs(probs(got) - probs(want)).max() < PROBE_PROB_ATOL
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert 0.5 < np.mean(want.argmax(1) == test_y) < 0.95  # neither trivial nor hopeless


def test_extract_features_reads_dict_outputs_in_order():
    images = np.arange(10 * 2 * 2 * 3, dtype=np.float32).reshape(10, 2, 2, 3)
    labels = np.arange(10)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(4)

    def model(x, training=False):
        return {"final_avg_pool": tf.reduce_mean(x, axis=[1, 2])}

    feats, got_labels = evaluate.extract_features(model, ds)
    np.testing.assert_allclose(feats, images.mean(axis=(1, 2)))
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(KeyError, match="feature_key='nope'"):
        evaluate.extract_features(model, ds, feature_key="nope")


def test_extract_outputs_keeps_several_outputs_of_one_pass():
    """Features and logits of one pass over the data (each batch read once), equal to what the
    model gives; the observers see the first key's outputs; the head's accuracy of those
    logits is top-k of them on the labelled rows."""
    rng = np.random.default_rng(1)
    images = rng.random((10, 2, 2, 3), dtype=np.float32)
    labels = np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2])
    reads = []
    ds = (
        tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
        .batch(4)
        .map(lambda b: {**b, "read": tf.py_function(lambda: reads.append(1) or 0, [], tf.int32)})
    )
    weights = rng.normal(size=(3, 3)).astype(np.float32)

    def model(x, training=False):
        pooled = tf.reduce_mean(x, axis=[1, 2])
        return {"final_avg_pool": pooled, "logits_sup": pooled @ weights, "unused": pooled}

    seen = []
    outputs, got_labels = evaluate.extract_outputs(
        model,
        ds,
        ("final_avg_pool", "logits_sup"),
        on_batch=[lambda feats, batch: seen.append(feats.shape)],
    )
    assert len(reads) == 3 and seen == [(4, 3), (4, 3), (2, 3)]
    assert set(outputs) == {"final_avg_pool", "logits_sup"}
    pooled = images.mean(axis=(1, 2))
    np.testing.assert_allclose(outputs["final_avg_pool"], pooled, rtol=1e-6)
    np.testing.assert_allclose(outputs["logits_sup"], pooled @ weights, rtol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)
    accuracy = evaluate.logits_accuracy(outputs["logits_sup"], got_labels)
    keep = labels >= 0
    want = np.mean((pooled @ weights)[keep].argmax(axis=1) == labels[keep])
    assert set(accuracy) == {"top1"} and accuracy["top1"] == pytest.approx(want)
    with pytest.raises(ValueError, match="--eval_split='u' has no labelled example"):
        evaluate.logits_accuracy(
            outputs["logits_sup"][:1], np.array([-1]), source="--eval_split='u'"
        )


def test_one_inference_function_serves_every_dataset_and_output():
    """An InferenceFunction is traced once (per input shape) for features and logits of
    several datasets, and gives what the model gives; a bare model is traced per call."""
    traces = []

    def model(x, training=False):
        traces.append(training)  # runs once per trace
        pooled = tf.reduce_mean(x, axis=[1, 2])
        return {"final_avg_pool": pooled, "logits_sup": 2.0 * pooled}

    rng = np.random.default_rng(0)
    datasets = [
        tf.data.Dataset.from_tensor_slices(
            {"image": rng.random((8, 2, 2, 3), dtype=np.float32), "label": np.arange(8) % 3}
        ).batch(4)
        for _ in range(2)
    ]
    inference = evaluate.InferenceFunction(model)
    assert evaluate.as_inference(inference) is inference
    for ds in datasets:
        images = np.concatenate([b["image"].numpy() for b in ds])
        feats, _ = evaluate.extract_features(inference, ds)
        np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), rtol=1e-6)
        logits, _ = evaluate.extract_features(inference, ds, feature_key="logits_sup")
        np.testing.assert_allclose(logits, 2 * images.mean(axis=(1, 2)), rtol=1e-6)
    assert traces == [False]
    evaluate.extract_features(model, datasets[0])
    evaluate.extract_features(model, datasets[1])
    assert traces == [False] * 3


def test_unlabelled_images_are_left_out_of_the_knn_bank_and_the_probe(caplog):
    """Label -1 (an unlabelled image): the kNN bank and the probe hold the labelled rows only,
    and unlabelled test rows are not scored; a set without any label is refused, named."""
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(3, 8)) * 3
    train_x, train_y = _blobs(rng, 60, centers, 1.0)
    test_x, test_y = _blobs(rng, 30, centers, 1.0)
    hidden = rng.random(60) < 0.4  # these training images lose their label
    train_y_mixed = np.where(hidden, -1, train_y)
    test_y_mixed = np.where(np.arange(30) % 5 == 0, -1, test_y)
    keep, scored = ~hidden, test_y_mixed >= 0
    caplog.set_level("INFO")
    got = evaluate.knn_accuracy(
        train_x, train_y_mixed, test_x, test_y_mixed, num_classes=3, k=7, temperature=0.1
    )
    want = weighted_knn_top1(
        train_x[keep], train_y[keep], test_x[scored], test_y[scored], 7, 0.1, 3
    )
    assert got["knn_top1"] == pytest.approx(want)
    assert f"{keep.sum()} labelled examples used, {hidden.sum()} unlabelled" in caplog.text
    probe = dict(num_classes=3, epochs=3, seed=2)
    mixed = evaluate.linear_eval(train_x, train_y_mixed, test_x, test_y_mixed, **probe)
    labelled = evaluate.linear_eval(
        train_x[keep], train_y[keep], test_x[scored], test_y[scored], **probe
    )
    assert mixed == labelled
    with pytest.raises(ValueError, match="--train_split='unlabelled' has no labelled example"):
        evaluate.labelled_only(train_x, np.full(60, -1), source="--train_split='unlabelled'")
