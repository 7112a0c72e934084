"""tf_simclr as a Keras library: keras.applications backbones with compile() + fit() and
keras.saving, the paper's augmentation as a layer and a tf.data map, the kNN monitor callback,
and examples/keras_fit.py."""

import os
import re
import runpy
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.numpy_refs import weighted_knn_top1

from tf_simclr.augment import augment_batch
from tf_simclr.augment.keras_layers import SimCLRAugmentation, TwoViews
from tf_simclr.evaluation import evaluate
from tf_simclr.evaluation.callbacks import KNNMonitor
from tf_simclr.network.model import SimCLRModel, build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _uint8_images(n, size=20, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


def test_two_views_map_draws_each_batch_two_seeds_from_its_generator():
    images, labels = _uint8_images(6), np.arange(6) % 3
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    mapped = batches.map(TwoViews(16, "cifar", seed=4))
    first_epoch = list(mapped)
    # A second path: the same draws made by hand.
    generator = tf.random.Generator.from_seed(4)
    for batch, (x, y) in zip(first_epoch, batches, strict=True):
        seeds = generator.make_seeds(2)
        for view, column in (("view1", 0), ("view2", 1)):
            want = augment_batch(x, seeds[:, column], image_size=16, augmentations="cifar")
            np.testing.assert_array_equal(batch[view].numpy(), want.numpy())
        np.testing.assert_array_equal(batch["label"].numpy(), y.numpy())
        assert batch["view1"].dtype == tf.float32 and batch["view1"].shape == (3, 16, 16, 3)
    second_epoch = list(mapped)
    assert not np.array_equal(first_epoch[0]["view1"], second_epoch[0]["view1"])
    # Unlabelled images (a plain tensor, or a dict without "label") get label -1.
    for data in (images, {"image": images}):
        unlabelled = next(iter(tf.data.Dataset.from_tensor_slices(data).batch(3).map(TwoViews(8))))
        np.testing.assert_array_equal(unlabelled["label"].numpy(), [-1, -1, -1])
    with pytest.raises(ValueError, match="Unknown augmentation"):
        TwoViews(16, "crop,sharpen")


def test_augmentation_layer_draws_a_new_view_each_training_call_and_saves():
    images = _uint8_images(4)
    layer = SimCLRAugmentation(16, "cifar", seed=9)
    seeds = keras.random.SeedGenerator(9)
    views = [layer(images, training=True) for _ in range(2)]
    for view in views:
        want = augment_batch(
            images, tf.cast(seeds.next()[:2], tf.int32), image_size=16, augmentations="cifar"
        )
        np.testing.assert_array_equal(view.numpy(), want.numpy())
    assert not np.array_equal(views[0], views[1])
    resized = tf.image.resize(images.astype(np.float32) / 255, [16, 16], "bicubic")
    np.testing.assert_allclose(layer(images, training=False), resized, atol=1e-6)
    clone = SimCLRAugmentation.from_config(layer.get_config())
    assert (clone.image_size, clone.augmentations, clone.seed) == (16, "cifar", 9)


def test_knn_monitor_logs_the_knn_accuracy_of_the_current_features(tmp_path, monkeypatch):
    keras.utils.set_random_seed(1)
    model = build_model(resnet_depth=18, width_multiplier=0.125, image_size=16, num_classes=None)
    rng = np.random.default_rng(2)
    train_x, test_x = (
        rng.random((24, 16, 16, 3), np.float32),
        rng.random((10, 16, 16, 3), np.float32),
    )
    train_y, test_y = np.arange(24) % 4, rng.integers(0, 4, 10)
    monitor = KNNMonitor(
        tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(8),
        tf.data.Dataset.from_tensor_slices({"image": test_x, "label": test_y}).batch(8),
        k=5,
        temperature=0.2,
        every=2,
        log_dir=str(tmp_path / "logs"),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    two_views = tf.data.Dataset.from_tensor_slices(
        {"view1": train_x, "view2": train_x[::-1].copy()}
    ).batch(8)
    made = []  # the models an InferenceFunction (one tf.function) is made for

    class Counted(evaluate.InferenceFunction):
        def __init__(self, model):
            made.append(model)
            super().__init__(model)

    monkeypatch.setattr(evaluate, "InferenceFunction", Counted)
    history = model.fit(two_views, epochs=2, callbacks=[monitor], verbose=0).history
    # Epoch 1 is skipped (every=2); epoch 2's value is the kNN of the trained features.
    assert len(history["knn_top1"]) == 1
    feats = lambda x: model(x, training=False)["final_avg_pool"].numpy()  # noqa: E731
    want = weighted_knn_top1(feats(train_x), train_y, feats(test_x), test_y, 5, 0.2, 4)
    assert history["knn_top1"][0] == pytest.approx(want, abs=1e-9)
    events = [f for f in os.listdir(tmp_path / "logs") if f.startswith("events")]
    logged = [
        (e.step, tf.make_ndarray(v.tensor))
        for record in tf.data.TFRecordDataset(str(tmp_path / "logs" / events[0]))
        for e in [tf.compat.v1.Event.FromString(record.numpy())]
        for v in e.summary.value
        if v.tag == "knn_top1"
    ]
    assert logged == [(2, pytest.approx(want))]
    # Evaluated again, by the same traced inference function: the same value, no new one.
    assert monitor.evaluate() == pytest.approx(want, abs=1e-9)
    assert made == [model]
    with pytest.raises(ValueError, match="kNN accuracy needs them"):
        KNNMonitor(tf.data.Dataset.from_tensor_slices(train_x).batch(8), monitor.test_data)


_HEADS = ("projection_head", "head_supervised")


@pytest.mark.parametrize(
    "backbone",
    [
        lambda: keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), include_top=False, weights=None, minimalistic=True
        ),
        # The same behaviour as the MobileNet case, with other families' layers (slow:
        # minutes each on 2 CPU cores).
        pytest.param(
            lambda: keras.applications.ResNet50(
                input_shape=(32, 32, 3), include_top=False, weights=None
            ),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            lambda: keras.applications.EfficientNetB0(
                input_shape=(32, 32, 3), include_top=False, weights=None
            ),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["mobilenet_v3", "resnet50", "efficientnet_b0"],
)
def test_keras_applications_backbones_fit_unbuilt_and_reload(backbone, tmp_path):
    """Three families as the encoder of an unbuilt SimCLRModel: compile() + fit() trains every
    part (the step changes the encoder, the projection head and the online head), and
    keras.saving reloads a model that computes the same outputs."""
    keras.utils.set_random_seed(3)
    model = SimCLRModel(backbone(), num_classes=3, proj_out_dim=16)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    images = _uint8_images(8, size=32, seed=5)
    data = (
        tf.data.Dataset.from_tensor_slices((images, np.arange(8) % 3))
        .batch(4)
        .map(TwoViews(32, "cifar", seed=0))
    )
    model.fit(data.take(1), verbose=0)  # builds the model
    before = {v.path: v.numpy() for v in model.trainable_variables}
    model.fit(data, verbose=0)
    after = {v.path: v.numpy() for v in model.trainable_variables}
    part = lambda path: next((h for h in _HEADS if h in path.split("/")), "encoder")  # noqa: E731
    moved = {part(p) for p in before if not np.array_equal(before[p], after[p])}
    assert moved == {"encoder", *_HEADS}
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = tf.constant(images[:2].astype(np.float32) / 255)
    ours, theirs = model(x, training=False), reloaded(x, training=False)
    for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())


def test_the_keras_example_trains_monitors_and_saves(tmp_path, monkeypatch, capsys):
    out = tmp_path / "simclr.keras"
    script = os.path.join(ROOT, "examples", "keras_fit.py")
    args = ["--image_size=16", "--batch_size=64", "--epochs=2", "--steps_per_epoch=2"]
    args.append("--monitor_images=500")
    # Run as a script (__main__), in-process: a subprocess would pay TF's import again.
    monkeypatch.setattr(sys, "argv", [script, *args, "--width=0.125", f"--out={out}"])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(script, run_name="__main__")
    stdout = capsys.readouterr().out
    epochs = re.findall(r"epoch (\d): loss ([\d.]+), kNN top-1 ([\d.]+)", stdout)
    assert [e[0] for e in epochs] == ["1", "2"]
    assert all(0.0 <= float(top1) <= 1.0 and float(loss) > 0 for _, loss, top1 in epochs)
    reloaded = keras.saving.load_model(str(out))
    assert isinstance(reloaded, SimCLRModel)
