"""Tests for tf_simclr.objectives.loss against a NumPy implementation written from the paper's formula.

(Multi-replica equality is tested in test_distribute.py, in a subprocess.)"""

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.objectives.loss import contrastive_metrics, nt_xent_loss


def np_nt_xent(z1, z2, tau, hidden_norm=True):
    """Paper eq.: views ordered (x_1, x'_1, x_2, x'_2, ...); per-anchor losses in that order."""
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    n = z1.shape[0]
    views = np.empty((2 * n, z1.shape[1]))
    views[0::2], views[1::2] = z1, z2
    if hidden_norm:
        views = views / np.linalg.norm(views, axis=1, keepdims=True)
    sim = views @ views.T / tau
    per_anchor = np.empty(2 * n)
    for i in range(2 * n):
        j = i + 1 if i % 2 == 0 else i - 1
        others = np.array([sim[i, k] for k in range(2 * n) if k != i])
        m = others.max()
        per_anchor[i] = -(sim[i, j] - (m + np.log(np.exp(others - m).sum())))
    return per_anchor.mean(), per_anchor


def np_metrics(z1, z2, tau, mode):
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    n = z1.shape[0]
    if mode == "reference":  # view-1 anchors against the N view-2 candidates
        logits, labels = z1 @ z2.T / tau, np.arange(n)
    else:
        anchors = np.concatenate([z1, z2])
        logits = anchors @ anchors.T / tau
        np.fill_diagonal(logits, -np.inf)
        labels = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    acc = np.mean(np.argmax(logits, 1) == labels)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return acc, np.mean(-np.sum(p * np.log(p + 1e-8), 1))


def rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "n, d, tau, hidden_norm",
    [(1, 3, 0.5, True), (4, 8, 0.1, True), (7, 5, 1.0, True), (5, 4, 0.5, False)],
)
def test_loss_matches_numpy(n, d, tau, hidden_norm):
    z1, z2 = rand((n, d), 0), rand((n, d), 1)
    if not hidden_norm:
        z1, z2 = 0.3 * z1, 0.3 * z2
    out = nt_xent_loss(z1, z2, temperature=tau, hidden_norm=hidden_norm)
    expected, _ = np_nt_xent(z1, z2, tau, hidden_norm)
    assert out.loss.dtype == tf.float32 and out.loss.shape == ()
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5, atol=1e-6)
    ref = nt_xent_loss(z1, z2, temperature=tau, hidden_norm=hidden_norm, loss_scale="reference")
    np.testing.assert_allclose(float(ref.loss), 2 * expected, rtol=1e-5, atol=1e-6)


def test_logits_layout_and_labels():
    n, tau = 4, 0.5
    z1, z2 = rand((n, 6), 2), rand((n, 6), 3)
    out = nt_xent_loss(z1, z2, temperature=tau)
    assert out.logits.shape == (2 * n, 2 * n) and out.logits.dtype == tf.float32
    np.testing.assert_array_equal(out.labels.numpy(), [4, 5, 6, 7, 0, 1, 2, 3])
    logits = out.logits.numpy()
    # Self-similarity: finite and far below everything else.
    diag = np.diag(logits)
    assert np.all(np.isfinite(diag)) and np.all(diag < -1e30)
    off = logits[~np.eye(2 * n, dtype=bool)]
    assert np.all(np.abs(off) <= 1 / tau + 1e-5)
    # Per-anchor cross-entropy from the returned logits reproduces the formula, anchor by anchor.
    _, per_anchor = np_nt_xent(z1, z2, tau)
    ours = tf.nn.sparse_softmax_cross_entropy_with_logits(out.labels, out.logits).numpy()
    paper_order = np.empty(2 * n)
    paper_order[0::2], paper_order[1::2] = ours[:n], ours[n:]
    np.testing.assert_allclose(paper_order, per_anchor, rtol=1e-5)


def test_gradient_matches_finite_differences():
    n, d, tau = 3, 4, 0.3
    z1, z2 = rand((n, d), 4), rand((n, d), 5)
    t1, t2 = tf.constant(z1), tf.constant(z2)
    with tf.GradientTape() as tape:
        tape.watch([t1, t2])
        loss = nt_xent_loss(t1, t2, temperature=tau).loss
    g1, g2 = tape.gradient(loss, [t1, t2])
    eps = 1e-5
    for z, g, first in ((z1, g1.numpy(), True), (z2, g2.numpy(), False)):
        num = np.zeros_like(g, dtype=np.float64)
        for idx in np.ndindex(*z.shape):
            zp, zm = z.astype(np.float64), z.astype(np.float64)
            zp[idx] += eps
            zm[idx] -= eps
            lp = np_nt_xent(zp, z2, tau)[0] if first else np_nt_xent(z1, zp, tau)[0]
            lm = np_nt_xent(zm, z2, tau)[0] if first else np_nt_xent(z1, zm, tau)[0]
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(g, num, atol=2e-4)


def test_aligned_views_give_known_loss_and_full_accuracy():
    z = np.eye(6, dtype=np.float32)[:4] * 5.0
    out = nt_xent_loss(z, z, temperature=0.1)
    m = contrastive_metrics(out.logits, out.labels)
    assert float(m["contrastive_acc"]) == 1.0
    assert float(m["contrastive_entropy"]) < 1e-2
    # Positive logit 1/0.1 = 10, the 6 negatives 0 (orthogonal): l = log(1 + 6 e^-10).
    assert float(out.loss) == pytest.approx(np.log1p(6 * np.exp(-10.0)), rel=1e-4)


@pytest.mark.parametrize("mode", ["reference", "all"])
def test_metrics_match_numpy(mode):
    n, tau = 8, 0.5
    z1 = rand((n, 4), 6)
    z2 = z1 + rand((n, 4), 7)  # partially aligned: accuracy strictly between 0 and 1
    out = nt_xent_loss(z1, z2, temperature=tau)
    m = contrastive_metrics(out.logits, out.labels, mode=mode)
    acc, ent = np_metrics(z1.astype(np.float64), z2.astype(np.float64), tau, mode)
    assert 0 < acc < 1
    assert float(m["contrastive_acc"]) == pytest.approx(acc)
    assert float(m["contrastive_entropy"]) == pytest.approx(ent, rel=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs(dtype):
    n, d, tau = 16, 32, 0.05
    z1, z2 = rand((n, d), 8), rand((n, d), 9)
    z2 = z1 + 0.5 * z2
    t1, t2 = tf.cast(z1, dtype), tf.cast(z2, dtype)
    with tf.GradientTape() as tape:
        tape.watch([t1, t2])
        out = nt_xent_loss(t1, t2, temperature=tau)
    grads = tape.gradient(out.loss, [t1, t2])
    assert out.loss.dtype == tf.float32 and out.logits.dtype == tf.float32
    assert np.isfinite(float(out.loss))
    assert all(
        g.dtype == dtype and np.all(np.isfinite(g.numpy().astype(np.float32))) for g in grads
    )
    # Exactly the float32 computation on the rounded inputs...
    rounded = nt_xent_loss(
        tf.cast(t1, tf.float32), tf.cast(t2, tf.float32), temperature=tau
    ).loss.numpy()
    np.testing.assert_allclose(float(out.loss), rounded, rtol=1e-6)
    # ...and close to the full-precision loss.
    full = nt_xent_loss(z1, z2, temperature=tau).loss.numpy()
    np.testing.assert_allclose(float(out.loss), full, rtol=2e-2)


def test_large_unnormalised_float16_inputs_stay_finite():
    # hidden_norm=False with large activations: dot products overflow float16 but not float32.
    z = tf.cast(rand((4, 64), 10) * 100.0, tf.float16)
    out = nt_xent_loss(z, z[::-1], temperature=0.1, hidden_norm=False)
    assert np.isfinite(float(out.loss))


def test_works_in_tf_function_with_unknown_batch():
    fn = tf.function(
        lambda a, b: nt_xent_loss(a, b, temperature=0.5).loss,
        input_signature=[tf.TensorSpec([None, 3], tf.float32)] * 2,
    )
    z1, z2 = rand((5, 3), 11), rand((5, 3), 12)
    np.testing.assert_allclose(float(fn(z1, z2)), np_nt_xent(z1, z2, 0.5)[0], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=0.5, loss_scale="mean"), "loss_scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    z = rand((2, 3), 13)
    with pytest.raises(ValueError, match=match):
        nt_xent_loss(z, z, **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(rand((2, 3), 0), rand((3, 3), 1), temperature=0.5)
    with pytest.raises(ValueError, match=r"\[batch, dim\]"):
        nt_xent_loss(rand((2, 3, 1), 0), rand((2, 3, 1), 1), temperature=0.5)
    with pytest.raises(ValueError, match="mode"):
        contrastive_metrics(tf.zeros((2, 2)), tf.zeros((2,), tf.int32), mode="top5")


def test_labelled_cross_entropy_matches_numpy_and_skips_unlabelled_rows():
    from tf_simclr.objectives.loss import labelled_cross_entropy

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(10, 4)).astype(np.float32) * 3
    labels = np.array([0, -1, 3, 2, -1, 1, 1, -1, 0, 2], dtype=np.int32)
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        result = labelled_cross_entropy(logits_t, labels)
    rows = labels >= 0
    x = logits.astype(np.float64)
    log_probs = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(
        float(result.share), -log_probs[rows, labels[rows]].mean(), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(result.accuracy), (x.argmax(axis=1)[rows] == labels[rows]).mean(), rtol=1e-6
    )
    assert float(result.count) == float(result.global_count) == rows.sum()
    grad = tape.gradient(result.share, logits_t).numpy()
    assert not np.any(grad[~rows])  # unlabelled rows get no gradient
    # d(mean CE)/d logits = (softmax - one_hot) / number of labelled rows.
    expected = np.exp(log_probs[rows]) - np.eye(4)[labels[rows]]
    np.testing.assert_allclose(grad[rows], expected / rows.sum(), rtol=1e-5, atol=1e-7)

    none = labelled_cross_entropy(logits_t, np.full(10, -1, np.int32))
    assert float(none.share) == 0.0 and float(none.accuracy) == 0.0 and float(none.count) == 0
    assert float(none.global_count) == 0.0
    none_grad = tf.GradientTape()
    with none_grad:
        none_grad.watch(logits_t)
        share = labelled_cross_entropy(logits_t, np.full(10, -1, np.int32)).share
    gradient = none_grad.gradient(share, logits_t).numpy()
    assert np.all(np.isfinite(gradient)) and not np.any(gradient)  # no NaN from 0 / 0
