"""Tests for tf_simclr.network.model: heads vs NumPy, two-view BN, stop-gradient, fine-tune freezing,
Keras-native compile()/fit() with our ResNet and a keras.applications encoder."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.network import model as model_lib
from tf_simclr.network.model import SimCLRModel, build_model
from tf_simclr.objectives.loss import nt_xent_loss

SIZE = 16
EPS = 1e-5


def _tiny(**kwargs):
    kwargs.setdefault("num_classes", 5)
    return build_model(resnet_depth=18, width_multiplier=0.25, image_size=SIZE, **kwargs)


def _images(n, seed):
    return tf.random.stateless_uniform((n, SIZE, SIZE, 3), seed=[seed, 0])


def _bn_train(x, gamma=None, beta=None):
    mean, var = x.mean(axis=0), x.var(axis=0)
    y = (x - mean) / np.sqrt(var + EPS)
    return y * (1 if gamma is None else gamma) + (0 if beta is None else beta)


@pytest.mark.parametrize("mode", ["nonlinear", "linear", "none"])
def test_projection_head_modes_match_numpy(mode):
    keras.utils.set_random_seed(0)
    model = _tiny(proj_head_mode=mode, num_proj_layers=2, proj_out_dim=8)
    outs = model(_images(6, 1), training=True)
    h = outs["final_avg_pool"].numpy()
    np.testing.assert_allclose(outs["proj_head_input"], h)
    head = model.projection_head
    for d in head.dense_layers:
        assert not d.use_bias  # every Dense is followed by BN
    if mode == "none":
        ref = h
        assert not head.dense_layers
    elif mode == "linear":
        assert len(head.dense_layers) == 1 and not head.bn_layers[0].center
        ref = _bn_train(h @ head.dense_layers[0].kernel.numpy())
    else:
        d0, d1 = head.dense_layers
        bn0, bn1 = head.bn_layers
        assert d0.units == h.shape[-1] and bn0.center and not bn1.center
        x = np.maximum(_bn_train(h @ d0.kernel.numpy()), 0)
        ref = _bn_train(x @ d1.kernel.numpy())
    assert outs["proj_head_output"].shape == (6, h.shape[-1] if mode == "none" else 8)
    np.testing.assert_allclose(outs["proj_head_output"], ref, rtol=1e-3, atol=1e-4)
    # Supervised head: Dense on h (ft_proj_selector=0), standardised by the scale-free BN.
    sup = model.supervised_head
    np.testing.assert_allclose(
        outs["logits_sup"],
        _bn_train(h) @ sup.kernel.numpy() + sup.bias.numpy(),
        rtol=1e-3,
        atol=1e-4,
    )


def test_ft_proj_selector_feeds_middle_layer():
    keras.utils.set_random_seed(1)
    model = _tiny(num_proj_layers=3, ft_proj_selector=2, zero_init_logits_layer=False)
    x = _images(4, 2)
    outs = model(x, training=False)
    hiddens = model.projection_head(outs["final_avg_pool"], training=False)
    sup = model.supervised_head
    assert sup.kernel.shape == (128, 5)
    # Inference: the head's input norm uses its fresh moving statistics (mean 0, variance 1).
    normed = hiddens[2].numpy() / np.sqrt(1.0 + EPS)
    np.testing.assert_allclose(
        outs["logits_sup"], normed @ sup.kernel + sup.bias, rtol=1e-4, atol=1e-5
    )
    zero = _tiny(zero_init_logits_layer=True)
    assert np.all(zero.supervised_head.kernel.numpy() == 0)
    assert model.has_supervised_head
    model.zero_supervised_head()
    assert not np.any(model(x)["logits_sup"].numpy())
    assert "head_supervised" in zero.supervised_head.kernel.path  # LARS excludes it by path


def test_endpoints_and_variable_sets():
    model = _tiny(num_classes=3)
    outs = model(_images(2, 3), training=False)
    expected = {
        "initial_conv",
        "initial_max_pool",
        "block_group1",
        "block_group2",
        "block_group3",
        "block_group4",
        "final_avg_pool",
        "proj_head_input",
        "proj_head_output",
        "logits_sup",
    }
    assert set(outs) == expected
    assert outs["logits_sup"].shape == (2, 3)
    ids = {id(v) for v in model.trainable_variables}
    sup_ids = {id(v) for v in model.supervised_head_variables}
    back_ids = {id(v) for v in model.backbone_trainable_variables}
    assert len(sup_ids) == 2 and not sup_ids & back_ids and sup_ids | back_ids == ids
    assert model.frozen_variables == []
    no_sup = _tiny(num_classes=None)
    assert "logits_sup" not in no_sup(_images(2, 3))
    no_sup = _tiny(lineareval_while_pretraining=False)
    assert no_sup.supervised_head is None


def test_two_views_share_batch_norm_statistics():
    keras.utils.set_random_seed(2)
    model = _tiny()
    v1, v2 = _images(4, 4), _images(4, 5)
    outs = model.forward_two_views(v1, v2, training=True)
    assert outs["proj_head_output"].shape[0] == 8
    conv = outs["initial_conv"].numpy()
    # Stem BN (gamma=1, beta=0 at init) normalised over all 2B images and pixels.
    flat = conv.reshape(-1, conv.shape[-1])
    ref = np.maximum((conv - flat.mean(0)) / np.sqrt(flat.var(0) + EPS), 0)
    np.testing.assert_allclose(outs["initial_max_pool"], ref, rtol=1e-3, atol=1e-4)
    stem_bn = model.encoder.get_layer("initial_max_pool").bn
    np.testing.assert_allclose(stem_bn.moving_mean, 0.1 * flat.mean(0), rtol=1e-4, atol=1e-6)
    # Same as one call on the concatenated batch; not the same as view 1 alone.
    alone = model(v1, training=True)["proj_head_output"]
    assert not np.allclose(outs["proj_head_output"][:4], alone, atol=1e-3)
    again = model(tf.concat([v1, v2], 0), training=True)["proj_head_output"]
    np.testing.assert_allclose(outs["proj_head_output"], again, rtol=1e-4, atol=1e-5)


def test_supervised_head_gradient_is_stopped_in_pretraining():
    keras.utils.set_random_seed(3)
    x = _images(4, 6)
    for mode, expect_encoder_grads in (("pretrain", False), ("finetune", True)):
        model = _tiny(train_mode=mode)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)["logits_sup"]
            loss = tf.reduce_sum(logits**2)
        enc_vars = model.encoder.trainable_variables
        grads = tape.gradient(loss, enc_vars + model.supervised_head_variables)
        has = [g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads]
        assert any(has[: len(enc_vars)]) == expect_encoder_grads, mode
        assert all(has[len(enc_vars) :])


def _snapshot(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def test_finetune_freezes_blocks_and_their_batch_norm():
    keras.utils.set_random_seed(4)
    model = _tiny(
        train_mode="finetune", fine_tune_after_block=2, num_proj_layers=2, ft_proj_selector=1
    )
    assert len(model.weights) == len({id(v) for v in model.weights})  # nothing tracked twice
    frozen_prefixes = ("initial_conv", "initial_max_pool", "block_group1/", "block_group2/")
    trainable_paths = [v.path for v in model.trainable_variables]
    assert not [p for p in trainable_paths if p.startswith(frozen_prefixes)]
    assert any(p.startswith("block_group3/") for p in trainable_paths)
    assert any("nl_0_" in p for p in trainable_paths)
    assert not any("nl_1_" in p for p in trainable_paths)  # after the selector: unused
    frozen_paths = {v.path for v in model.frozen_variables}
    assert any(p.startswith("block_group2/") for p in frozen_paths)
    assert not any("moving_" in p for p in frozen_paths)

    x = _images(8, 7)
    ref = model(x, training=False)
    trained = model(x, training=True)
    # Frozen parts run BN in inference mode even with training=True.
    np.testing.assert_allclose(trained["block_group2"], ref["block_group2"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(trained["block_group3"], ref["block_group3"], atol=1e-4)

    before = _snapshot(model)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    ds = tf.data.Dataset.from_tensors({"image": x, "label": tf.range(8) % 5})
    hist = model.fit(ds, epochs=1, verbose=0)
    assert set(hist.history) == {"loss", "sup_loss", "sup_acc"}
    after = _snapshot(model)
    for path, value in before.items():
        changed = not np.array_equal(value, after[path])
        if path.startswith(frozen_prefixes) or "nl_1_" in path:
            assert not changed, f"frozen variable {path} changed"
    # (conv1 of a block gets no gradient at step 1: its block's last BN gamma starts at zero.)
    for path in ("head_supervised/kernel", "block_group3/block_0/shortcut_conv/conv2d/kernel"):
        assert any(p.endswith(path) and not np.array_equal(before[p], after[p]) for p in before)

    only_head = _tiny(train_mode="finetune", fine_tune_after_block=4, proj_head_mode="none")
    assert {v.path for v in only_head.trainable_variables} == {
        v.path for v in only_head.supervised_head_variables
    }
    everything = _tiny(train_mode="finetune", fine_tune_after_block=-1)
    assert len(everything.encoder.trainable_variables) == len(everything.encoder.trainable_weights)
    # ft_proj_selector=0: the whole projection head is unused in fine-tuning, so it is frozen.
    assert everything.frozen_variables
    assert all("projection_head" in v.path for v in everything.frozen_variables)


def _two_view_batch(n=8, seed=0):
    base = _images(n, seed)
    noise = 0.05 * tf.random.stateless_normal(base.shape, seed=[seed, 1])
    return {"view1": base, "view2": tf.clip_by_value(base + noise, 0, 1), "label": tf.range(n) % 5}


def test_fit_overfits_fixed_batch_with_resnet():
    keras.utils.set_random_seed(5)
    model = _tiny(temperature=0.5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    batch = _two_view_batch()
    ds = tf.data.Dataset.from_tensors(batch).repeat(8)
    hist = model.fit(ds, epochs=2, verbose=0).history
    assert set(hist) == {
        "loss",
        "contrastive_loss",
        "contrastive_acc",
        "contrastive_entropy",
        "sup_loss",
        "sup_acc",
        "sup_labelled_examples",
    }
    assert all(np.isfinite(hist["loss"]))
    assert hist["loss"][-1] < hist["loss"][0] - 0.2
    assert hist["contrastive_loss"][-1] < hist["contrastive_loss"][0]
    assert hist["sup_loss"][-1] < hist["sup_loss"][0]
    # The reported contrastive loss is the NT-Xent loss of the current model (eval-mode BN).
    model.reset_metrics()
    res = model.test_step(batch)  # what evaluate() runs per batch (eager here: no extra trace)
    outs = model.forward_two_views(batch["view1"], batch["view2"], training=False)
    z1, z2 = tf.split(outs["proj_head_output"], 2)
    ref = float(nt_xent_loss(z1, z2, temperature=0.5).loss)
    np.testing.assert_allclose(float(res["contrastive_loss"]), ref, rtol=1e-4)
    # Labelled eval batches report the supervised head only.
    model.reset_metrics()
    res = model.test_step({"image": batch["view1"], "label": batch["label"]})
    assert set(res) == {"loss", "sup_loss", "sup_acc"}


def _objective_by_hand(model, data):
    """The pretraining objective written out from its definition (SimCLR Eq. 1, averaged over
    the 2N anchors, + the supervised head's cross-entropy for both views' labels)."""
    n = data["view1"].shape[0]
    outs = model(tf.concat([data["view1"], data["view2"]], 0), training=True)
    z = tf.math.l2_normalize(tf.cast(outs["proj_head_output"], tf.float32), axis=1)
    sim = tf.matmul(z, z, transpose_b=True) / model.objective.temperature
    sim = tf.where(tf.eye(2 * n, dtype=tf.bool), -1e9, sim)  # an anchor is not its own negative
    positives = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
    contrastive = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=sim)
    )
    labels = tf.concat([data["label"], data["label"]], 0)
    supervised = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outs["logits_sup"])
    )
    return contrastive + supervised


def test_fit_with_keras_applications_encoder_takes_the_objectives_gradient_step():
    """fit() around a keras.applications encoder: one plain-SGD step moves every trainable
    weight by -lr times the gradient of the objective written out by hand, and reports its
    value."""
    keras.utils.set_random_seed(6)
    # A small keras.applications net (quick to trace); returns a [B, 1, 1, C] map that the model
    # pools.
    encoder = keras.applications.VGG16(input_shape=(32, 32, 3), include_top=False, weights=None)
    model = SimCLRModel(encoder, num_classes=3, proj_out_dim=16, num_proj_layers=2)
    outs = model(tf.zeros((2, 32, 32, 3)))
    assert outs["final_avg_pool"].shape == (2, encoder.output.shape[-1])
    data = {
        "view1": tf.random.stateless_uniform((4, 32, 32, 3), seed=[1, 2]),
        "view2": tf.random.stateless_uniform((4, 32, 32, 3), seed=[1, 3]),
        "label": tf.constant([0, 1, 2, 0]),
    }
    before = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        expected_loss = _objective_by_hand(model, data)
    grads = tape.gradient(expected_loss, model.trainable_variables)
    lr = 0.05
    model.compile(optimizer=keras.optimizers.SGD(lr), head_optimizer="shared")  # one optimizer
    hist = model.fit(tf.data.Dataset.from_tensors(data), verbose=0).history
    assert hist["loss"][0] == pytest.approx(float(expected_loss), rel=1e-5)
    moved = 0
    for v, w0, g in zip(model.trainable_variables, before, grads, strict=True):
        np.testing.assert_allclose(
            v.numpy(), w0 - lr * g.numpy(), rtol=1e-5, atol=1e-6, err_msg=v.path
        )
        moved += bool(np.any(g.numpy() != 0))
    assert moved > len(before) // 2


def test_vector_encoder_and_bad_inputs():
    enc = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(6)])
    model = SimCLRModel(enc, num_classes=None, proj_head_mode="linear", proj_out_dim=4)
    outs = model(tf.zeros((2, 4, 4, 3)))
    assert outs["proj_head_output"].shape == (2, 4)
    with pytest.raises(ValueError, match="view1"):
        model.train_step({"image": tf.zeros((2, 4, 4, 3))})

    tiny = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten()])
    cases = [
        (dict(proj_head_mode="deep"), "proj_head_mode"),
        (dict(train_mode="eval"), "train_mode"),
        (dict(fine_tune_after_block=2), "fine_tune_after_block"),
        (dict(proj_head_mode="none", ft_proj_selector=1), "ft_proj_selector"),
        (dict(num_proj_layers=2, ft_proj_selector=3), "ft_proj_selector"),
        (dict(train_mode="finetune", num_classes=None), "num_classes"),
        (dict(train_mode="finetune", fine_tune_after_block=2), "block groups"),
        (dict(temperature=0.0), "temperature"),
    ]
    for kwargs, match in cases:
        kwargs.setdefault("num_classes", 2)
        with pytest.raises(ValueError, match=match):
            SimCLRModel(tiny, **kwargs)

    class TupleEncoder(keras.layers.Layer):
        def call(self, x):
            return x, x

    with pytest.raises(ValueError, match="dict"):
        SimCLRModel(TupleEncoder(), num_classes=2)(tf.zeros((1, 4, 4, 3)))
    assert model_lib.PROJ_HEAD_MODES == ("nonlinear", "linear", "none")


_MIRRORED_SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from tf_simclr.network.model import build_model

def make(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        m = build_model(resnet_depth=18, width_multiplier=0.25, image_size=16, num_classes=3,
                        global_bn=True, proj_out_dim=16)
        m.compile(optimizer=keras.optimizers.SGD(0.5))
    return m

v1 = tf.random.stateless_uniform((8, 16, 16, 3), seed=[0, 1])
batch = {"view1": v1, "view2": tf.clip_by_value(v1 + 0.1, 0, 1), "label": tf.range(8) % 3}
ds = tf.data.Dataset.from_tensors(batch).repeat(2)
single = make(tf.distribute.get_strategy())
mirrored = make(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
mirrored.set_weights(single.get_weights())
h1 = single.fit(ds, verbose=0).history
h2 = mirrored.fit(ds, verbose=0).history
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights()))
print(json.dumps({"h1": h1, "h2": h2, "weight_diff": diff,
                  "replicas": mirrored.distribute_strategy.num_replicas_in_sync}))
"""


@pytest.mark.slow
def test_mirrored_global_bn_matches_single_device(tmp_path):
    """2 logical CPUs with global BN == one device on the same global batch (fit, 2 steps)."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "mirrored_check.py"
    script.write_text(_MIRRORED_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, str(script), root], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["replicas"] == 2
    for key in ("loss", "contrastive_loss", "sup_loss", "contrastive_acc"):
        np.testing.assert_allclose(res["h2"][key], res["h1"][key], rtol=1e-4, atol=1e-5)
    # After two lr-0.5 steps; sync BN's E[x^2]-E[x]^2 vs the fused kernel's variance differ in
    # float32 round-off: measured 5.5e-5 at most on AMD EPYC (AVX2) (~3e-4 was noted before, in
    # early conv kernels of magnitude ~0.2-1).
    assert res["weight_diff"] < 5e-4


def test_fit_on_an_unbuilt_model_equals_fit_on_a_built_one():
    """The documented usage, SimCLRModel(encoder) + compile() + fit() with no build(): it
    trains, and exactly as the same model built first does (the head optimizer's slots are
    created outside the traced step; the supervised head is trained by the head optimizer,
    never by the main one). The backbone is a small Sequential without an input shape, the
    most unbuilt kind; tests/test_keras_library.py fits keras.applications backbones."""
    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(
        {"view1": images, "view2": images[::-1].copy(), "label": np.arange(8) % 3}
    ).batch(8)

    def fitted(build_first: bool) -> SimCLRModel:
        keras.utils.set_random_seed(0)
        encoder = keras.Sequential(
            [
                keras.layers.Conv2D(8, 3, strides=2, padding="same"),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.Conv2D(16, 3, strides=2, padding="same"),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.GlobalAveragePooling2D(),
            ]
        )
        assert not encoder.built
        model = SimCLRModel(encoder, num_classes=3, proj_out_dim=16)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        keras.utils.set_random_seed(1)  # the heads' initial weights, drawn when built
        if build_first:
            model.build((None, 32, 32, 3))
        model.fit(data, epochs=2, verbose=0)
        return model

    unbuilt, built = fitted(False), fitted(True)
    assert len(unbuilt.weights) == len(built.weights)
    for ours, theirs in zip(unbuilt.weights, built.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    head_paths = {v.path for v in unbuilt.supervised_head_variables}
    assert not head_paths & {v.path for v in unbuilt.optimizer._trainable_variables}
    assert unbuilt.head_optimizer.built and int(unbuilt.head_optimizer.iterations) == 2
    assert int(unbuilt.optimizer.iterations) == 2


def test_pretraining_head_learns_from_labelled_rows_only():
    """Labels < 0 mark unlabelled images: the online head's loss is the cross-entropy over the
    labelled rows of both views (NumPy), an all-unlabelled batch trains no head, and the
    contrastive loss does not depend on the labels."""
    keras.utils.set_random_seed(3)
    model = _tiny(num_classes=5)
    batch = _two_view_batch(n=6)
    batch["label"] = tf.constant([0, -1, 4, -1, 2, 1])
    objective = model.compute_objective(batch, training=False)
    outs = model.forward_two_views(batch["view1"], batch["view2"], training=False)
    logits = outs["logits_sup"].numpy().astype(np.float64)
    labels = np.concatenate([batch["label"].numpy()] * 2)
    rows = labels >= 0
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_probs[rows, labels[rows]].mean()
    np.testing.assert_allclose(float(objective.shares["sup_loss"]), expected, rtol=1e-5)
    hits = logits.argmax(axis=1)[rows] == labels[rows]
    np.testing.assert_allclose(float(objective.rates["sup_acc"]), hits.mean(), rtol=1e-6)
    assert float(objective.rates["sup_labelled_examples"]) == 4.0  # images, not views

    batch["label"] = tf.constant([0, 3, 4, 1, 2, 1])  # every image labelled
    labelled = model.compute_objective(batch, training=False)
    assert float(labelled.rates["sup_labelled_examples"]) == 6.0
    batch["label"] = tf.fill([6], -1)
    unlabelled = model.compute_objective(batch, training=False)
    assert float(unlabelled.shares["sup_loss"]) == 0.0
    assert float(unlabelled.rates["sup_labelled_examples"]) == 0.0
    assert float(unlabelled.rates["sup_acc"]) == 0.0
    assert np.isfinite(float(unlabelled.total))
    # The labels do not touch the contrastive loss.
    for other in (unlabelled, labelled):
        np.testing.assert_allclose(
            float(other.shares["contrastive_loss"]),
            float(objective.shares["contrastive_loss"]),
            rtol=1e-6,
        )
    with tf.GradientTape() as tape:
        loss = model.compute_objective(batch, training=True).shares["sup_loss"]
    grads = tape.gradient(loss, model.supervised_head_variables)
    assert all(g is None or not np.any(g.numpy()) for g in grads)


@keras.saving.register_keras_serializable(package="tf_simclr_tests")
class _Alignment:
    """A new objective in a few lines: the mean squared distance between the two views'
    normalised projections (no negatives), with its metric names."""

    train_mode = "pretrain"
    metric_names_all = ("alignment_loss",)

    def __init__(self, weight=1.0):
        self.weight = weight

    def __call__(self, model, data, training=True):
        from tf_simclr.objectives.base import with_total

        outs = model.forward_two_views(data["view1"], data["view2"], training=training)
        z1, z2 = tf.split(tf.math.l2_normalize(outs["proj_head_output"], axis=-1), 2)
        loss = self.weight * tf.reduce_mean(tf.reduce_sum(tf.square(z1 - z2), axis=-1))
        return with_total(model, {"alignment_loss": loss}, {})

    def metric_names(self, model):
        return ["loss", "alignment_loss"], []

    def get_config(self):
        return {"weight": self.weight}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_an_objective_of_ones_own_trains_and_saves_with_the_model(tmp_path):
    """The network and its objective are apart: SimCLRModel(objective=...) computes, fits and
    saves with an objective defined outside the package, and the train modes each have one."""
    from tf_simclr import config as config_lib
    from tf_simclr import objectives

    assert tuple(objectives.OBJECTIVES) == config_lib.TRAIN_MODES
    keras.utils.set_random_seed(2)
    model = _tiny(num_classes=None, objective=_Alignment(weight=2.0))
    batch = _two_view_batch(n=4)
    objective = model.compute_objective(batch, training=False)
    z = model.forward_two_views(batch["view1"], batch["view2"], training=False)
    z = z["proj_head_output"].numpy().astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    expected = 2.0 * np.mean(np.sum((z[:4] - z[4:]) ** 2, axis=1))
    np.testing.assert_allclose(float(objective.total), expected, rtol=1e-5)
    assert model.objective_metric_names() == (["loss", "alignment_loss"], [])
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), verbose=0).history
    assert set(history) == {"loss", "alignment_loss"}
    path = str(tmp_path / "aligned.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.objective, _Alignment) and reloaded.objective.weight == 2.0
    with pytest.raises(ValueError, match="is for train_mode='pretrain', but the model is built"):
        _tiny(num_classes=3, train_mode="finetune", objective=_Alignment())


def test_objective_settings_are_keywords_of_the_train_modes_objective_only():
    """The train mode's objective takes its settings as SimCLRModel keywords, refused beside
    objective=; a config saved with them (before the objective was always saved) loads with
    the same objective; the probe's default optimizer comes from the objective."""
    from tf_simclr.objectives import ContrastivePretraining

    def encoder():
        return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten()])

    model = SimCLRModel(encoder(), num_classes=2, temperature=0.2, head_weight_decay=1e-3)
    assert (model.objective.temperature, model.objective.head_weight_decay) == (0.2, 1e-3)
    with pytest.raises(ValueError, match="set them on that objective"):
        SimCLRModel(encoder(), num_classes=2, temperature=0.2, objective=ContrastivePretraining())
    saved = model.get_config()
    settings = dict(hidden_norm=True, loss_scale="paper", distill_temperature=1.0)
    old = {k: v for k, v in saved.items() if k != "objective"}
    old.update(temperature=0.2, head_weight_decay=1e-3, distill_alpha=0.0, **settings)
    for config in (old, {**old, "objective": saved["objective"]}):
        loaded = SimCLRModel.from_config(config).objective
        assert loaded.get_config() == model.objective.get_config()

    model.compile(optimizer=keras.optimizers.SGD(0.5))
    head = model.head_optimizer
    assert type(head) is keras.optimizers.SGD and head.momentum == 0.9
    assert float(head.learning_rate) == pytest.approx(0.1)
    # An objective without default_head_optimizer leaves the head to the main optimizer.
    aligned = SimCLRModel(encoder(), num_classes=2, objective=_Alignment())
    aligned.compile(optimizer=keras.optimizers.SGD(0.5))
    assert aligned.head_optimizer is None
