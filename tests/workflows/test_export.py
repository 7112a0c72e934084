"""Tests for tf_simclr.workflows.export: the exported module against the in-memory model, per consumer.

One ResNet-18 (width 0.25, synchronised batch norm) SimCLRModel is exported once per module;
every consumer (tf.saved_model / hub.load, hub.KerasLayer in tf-keras, Keras 3 TFSMLayer,
re-saving, the examples) is checked against that model. Atomicity and pruning use a tiny model.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import runpy
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.network.model import build_model
from tf_simclr.workflows import export

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
SIZE = 16
NUM_CLASSES = 3
ENDPOINTS = (
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
)


def _images(n, size=SIZE, seed=0):
    return np.random.RandomState(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def _assert_outputs_close(got, expected, atol=1e-4, rtol=1e-4):
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(
            np.asarray(got[key]), np.asarray(expected[key]), atol=atol, rtol=rtol, err_msg=key
        )


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)]


@contextlib.contextmanager
def _restoring(model):
    """Undo whatever a test does to the shared model's variables (BN statistics, weights)."""
    saved = _values(model.variables)
    try:
        yield
    finally:
        for v, value in zip(model.variables, saved, strict=True):
            v.assign(value)


def _randomise(model, seed=0):
    # Fresh ResNets start with zero gamma on each block's last BN and identity BN statistics,
    # which would hide wrong inference/training graphs and zero many gradients.
    rng = np.random.RandomState(seed)
    for v in model.variables:
        if "gamma" in v.path or "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif "beta" in v.path or "moving_mean" in v.path or "bias" in v.path:
            v.assign(rng.uniform(-0.2, 0.2, v.shape).astype("float32"))


@pytest.fixture(scope="module")
def simclr(tmp_path_factory):
    """(model, export path): SimCLRModel with sync BN and a supervised head, exported at step 7."""
    keras.utils.set_random_seed(0)
    model = build_model(
        resnet_depth=18, width_multiplier=0.25, global_bn=True, num_classes=NUM_CLASSES
    )
    model(_images(2), training=False)
    _randomise(model)
    base = tmp_path_factory.mktemp("model_dir") / "saved_model"
    path = export.export_saved_model(model, str(base), step=7, image_size=SIZE)
    return model, path


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the module itself
@pytest.mark.parametrize("loader, mode_arg", [("tf", "training"), ("hub", "trainable")])
def test_reloaded_module_matches_model_in_both_modes(simclr, loader, mode_arg):
    model, path = simclr
    if loader == "hub":
        hub = pytest.importorskip("tensorflow_hub")
        module = hub.load(path)
    else:
        module = tf.saved_model.load(path)
    x = _images(4)

    expected = model(x, training=False)
    assert set(expected) == set(ENDPOINTS)
    _assert_outputs_close(module(x), expected)
    _assert_outputs_close(module(x, **{mode_arg: False}), expected)
    if loader == "tf":  # the same object either way: check the rest once
        _assert_outputs_close(module.serve(x), expected)
        signature = module.signatures["serving_default"]
        _assert_outputs_close(signature(images=tf.constant(x)), expected)
        spec = signature.structured_input_signature[1]["images"]
        assert spec.shape.as_list() == [None, SIZE, SIZE, 3]
        # Any batch and spatial size for __call__ (the signature is fixed to SIZE here).
        x_big = _images(3, size=24, seed=1)
        _assert_outputs_close(module(x_big), model(x_big, training=False))
        assert len(module.variables) == len(model.variables)
        assert len(module.trainable_variables) == len(model.trainable_variables)
        assert list(module.regularization_losses) == []  # SimCLRModel has no regularisers

    # Training mode: batch statistics in the outputs, and the moving statistics are updated
    # exactly as the in-memory model updates its own.
    before = _values(module.variables)
    with _restoring(model):
        expected_train = model(x, training=True)
        expected_vars = _values(model.variables)
    got_train = module(x, **{mode_arg: True})
    # Batch statistics over 4 images amplify float32 rounding differences (graph vs eager).
    _assert_outputs_close(got_train, expected_train, atol=1e-3, rtol=1e-3)
    changed = _changed(before, module.variables)
    moving = ["moving_mean" in v.name or "moving_variance" in v.name for v in module.variables]
    assert changed == moving  # all moving statistics move, nothing else does
    for got, want in zip(_values(module.variables), expected_vars, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_gradients_through_reloaded_sync_bn_module_then_resave(simclr, tmp_path):
    """Consumer 4 too: a module fine-tuned in user code is saved again and reloaded."""
    model, path = simclr
    bns = [x for x in model._flatten_layers() if isinstance(x, keras.layers.BatchNormalization)]
    assert bns and all(bn.synchronized for bn in bns)  # what the reference export broke on
    module = tf.saved_model.load(path)
    x = _images(4, seed=2)
    rng = np.random.RandomState(3)
    weights = {k: rng.normal(size=v.shape).astype("float32") for k, v in model(x).items()}

    def loss_of(outputs):
        return tf.add_n([tf.reduce_sum(outputs[k] * w) for k, w in weights.items()])

    with _restoring(model):
        with tf.GradientTape() as tape:
            expected_loss = loss_of(model(x, training=True))
        expected = tape.gradient(expected_loss, model.trainable_variables)
    with tf.GradientTape() as tape:
        got_loss = loss_of(module(x, training=True))
    got = tape.gradient(got_loss, module.trainable_variables)

    np.testing.assert_allclose(got_loss.numpy(), expected_loss.numpy(), rtol=1e-4)
    assert all(g is not None for g in got)
    for g, e, v in zip(got, expected, module.trainable_variables, strict=True):
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(g.numpy() / scale, e.numpy() / scale, atol=2e-4, err_msg=v.name)
        assert float(np.abs(g.numpy()).max()) > 0, v.name

    # One SGD step in user code, then save the reloaded object again and reload it.
    original = model(x, training=False)["final_avg_pool"].numpy()
    lr = 0.05 / max(float(np.abs(g.numpy()).max()) for g in got)  # a small, finite step
    for v, g in zip(module.trainable_variables, got, strict=True):
        v.assign_sub(lr * g)
    tuned = module(x)["final_avg_pool"].numpy()
    assert np.abs(tuned - original).max() > 1e-3
    tf.saved_model.save(module, str(tmp_path / "tuned"))
    again = tf.saved_model.load(str(tmp_path / "tuned"))
    for out in (
        again(x),
        again(x, trainable=False),
        again.serve(x),
        again.signatures["serving_default"](images=tf.constant(x)),
    ):
        np.testing.assert_allclose(out["final_avg_pool"].numpy(), tuned, atol=1e-5)
    assert len(again.trainable_variables) == len(model.trainable_variables)


# ---------------------------------------------------------------- consumer: hub.KerasLayer
@pytest.mark.parametrize("trainable", [True, False])
def test_hub_keras_layer_in_tf_keras(simclr, trainable):
    hub = pytest.importorskip("tensorflow_hub")
    tf_keras = pytest.importorskip("tf_keras")
    model, path = simclr
    tf_keras.utils.set_random_seed(0)
    layer = hub.KerasLayer(path, trainable=trainable, output_key="final_avg_pool")
    clf = tf_keras.Sequential(
        [tf_keras.Input((SIZE, SIZE, 3)), layer, tf_keras.layers.Dense(NUM_CLASSES)]
    )
    x, y = _images(8, seed=4), np.arange(8) % NUM_CLASSES
    np.testing.assert_allclose(
        layer(x).numpy(), model(x)["final_avg_pool"].numpy(), atol=1e-4, rtol=1e-4
    )
    assert len(layer.trainable_weights) == (len(model.trainable_variables) if trainable else 0)
    assert len(layer.weights) == len(model.variables)

    before = _values(layer.weights)
    clf.compile(
        tf_keras.optimizers.SGD(0.1),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    clf.fit(x, y, batch_size=4, epochs=1, verbose=0)
    changed = dict(
        zip([w.name for w in layer.weights], _changed(before, layer.weights), strict=True)
    )
    if not trainable:
        assert not any(changed.values())
        return
    # The encoder learns (stem conv, block kernels) and all BN statistics move (the module
    # runs whole in training mode); the supervised head is not on the path to final_avg_pool.
    conv = [n for n in changed if "conv" in n and "kernel" in n and "head" not in n]
    assert conv and all(changed[n] for n in conv)
    assert all(changed[n] for n in changed if "moving_mean" in n)
    # The supervised head is not in this loss; only its input norm's moving statistics move.
    head = [n for n in changed if "head_supervised" in n and "moving" not in n]
    assert head and not any(changed[n] for n in head)


# ---------------------------------------------------------------- consumer: Keras 3
def _keras3_classifier(path, trainable):
    inputs = keras.Input((SIZE, SIZE, 3))
    encoder = export.SimCLRHubLayer(path, output_key="final_avg_pool", trainable=trainable)
    logits = keras.layers.Dense(NUM_CLASSES, name="linear_head")(encoder(inputs))
    clf = keras.Model(inputs, logits)
    clf.compile(
        keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return clf, encoder


def test_keras3_linear_eval_on_frozen_module(simclr, tmp_path):
    model, path = simclr
    keras.utils.set_random_seed(0)
    clf, encoder = _keras3_classifier(path, trainable=False)
    x, y = _images(8, seed=5), np.arange(8) % NUM_CLASSES
    assert encoder.trainable_weights == [] and len(encoder.weights) == len(model.variables)
    before = _values(encoder.weights)
    head_before = _values(clf.get_layer("linear_head").weights)
    clf.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not any(_changed(before, encoder.weights))  # frozen, BN in inference mode
    assert all(_changed(head_before, clf.get_layer("linear_head").weights))
    # Independent path: in-memory features times the trained head.
    kernel, bias = (w.numpy() for w in clf.get_layer("linear_head").weights)
    features = model(x, training=False)["final_avg_pool"].numpy()
    np.testing.assert_allclose(
        clf.predict(x, verbose=0), features @ kernel + bias, atol=1e-4, rtol=1e-4
    )

    # Plain keras.layers.TFSMLayer with the module's endpoints gives the whole output dict.
    raw = keras.layers.TFSMLayer(path, call_endpoint="serve", call_training_endpoint="serve_train")
    _assert_outputs_close(raw(x), model(x, training=False))


# Keras' own .keras weight saving calls np.array() on TF variables (numpy 2 deprecation noise).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras3_fine_tuning_and_resave(simclr, tmp_path):
    model, path = simclr
    keras.utils.set_random_seed(0)
    clf, encoder = _keras3_classifier(path, trainable=True)
    x, y = _images(8, seed=6), np.arange(8) % NUM_CLASSES
    assert len(encoder.trainable_weights) == len(model.trainable_variables)
    before = _values(encoder.weights)
    clf.fit(x, y, batch_size=4, epochs=1, verbose=0)
    names = [w.name for w in encoder.weights]
    changed = dict(zip(names, _changed(before, encoder.weights), strict=True))
    conv = [n for n in changed if "conv" in n and "kernel" in n and "head" not in n]
    assert conv and all(changed[n] for n in conv)
    assert any(changed[n] for n in changed if "moving_mean" in n)

    # A fine-tuned Keras 3 model saves and reloads with the fine-tuned weights.
    expected = clf.predict(x, verbose=0)
    clf.save(tmp_path / "clf.keras")
    reloaded = keras.saving.load_model(tmp_path / "clf.keras", safe_mode=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-5)


# ---------------------------------------------------------------- examples
def _write_image_folder(root, n_per_class=4):
    rng = np.random.RandomState(8)
    for c in ("cat", "dog"):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n_per_class):
            png = tf.io.encode_png(rng.randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
            tf.io.write_file(os.path.join(root, c, f"{i}.png"), png)
    return root


def test_example_linear_eval_keras3(simclr, tmp_path):
    _, path = simclr
    data = _write_image_folder(str(tmp_path / "images"))
    example = _load_example("linear_eval_keras3")
    clf, results = example.main(
        ["--module", path, "--train_dir", data, "--val_dir", data, "--image_size", str(SIZE)]
        + ["--batch_size", "4", "--epochs", "1"]
    )
    assert 0.0 <= results["accuracy"] <= 1.0
    assert clf.output_shape == (None, 2)


def test_example_finetune_hub_tf_keras(simclr, tmp_path):
    pytest.importorskip("tensorflow_hub")
    pytest.importorskip("tf_keras")
    model, path = simclr
    data = _write_image_folder(str(tmp_path / "images"))
    example = _load_example("finetune_hub_tf_keras")
    clf, results = example.main(
        ["--module", path, "--train_dir", data, "--image_size", str(SIZE)]
        + ["--batch_size", "4", "--epochs", "1"]
    )
    assert results == {}
    # The hub layer's weights are the module's, in the model's order: fine-tuning moved them.
    tuned = clf.layers[0].trainable_weights
    assert len(tuned) == len(model.trainable_variables)
    assert any(_changed(_values(model.trainable_variables), tuned))


def test_example_extract_embeddings_script(simclr, tmp_path, monkeypatch):
    model, path = simclr
    data = _write_image_folder(str(tmp_path / "images"))
    out = str(tmp_path / "emb.npy")
    script = os.path.join(EXAMPLES, "extract_embeddings.py")
    args = ["--module", path, "--images", data, "--output", out, "--image_size", str(SIZE)]
    # Run as a script (__main__), in-process: a subprocess would pay TF's import again.
    monkeypatch.setattr(sys, "argv", [script, *args, "--batch_size", "3"])
    runpy.run_path(script, run_name="__main__")
    embeddings = np.load(out)
    with open(str(tmp_path / "emb.txt")) as f:
        paths = f.read().split()
    assert paths == sorted(paths) and len(paths) == 8
    images = np.stack([tf.io.decode_png(tf.io.read_file(p)).numpy() for p in paths])
    expected = model(images.astype("float32") / 255.0, training=False)["final_avg_pool"]
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- atomic export, pruning
def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(synchronized=True, name="bn")(x)
    pool = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(
        2, kernel_regularizer=keras.regularizers.L2(0.1), name="head_supervised"
    )(pool)
    return keras.Model(inputs, {"final_avg_pool": pool, "logits_sup": logits})


def _entries(base):
    return sorted(os.listdir(base))


def test_export_keeps_newest_and_replaces_same_step(tmp_path):
    model = _tiny_model()
    model(_images(1, 8))
    base = str(tmp_path / "saved_model")
    for step in (1, 2, 10):
        path = export.export_saved_model(model, base, step=step, keep_max=2, image_size=8)
        assert path == os.path.join(base, str(step))
    assert _entries(base) == ["10", "2"]  # numeric order: step 1 was pruned, not step 10
    assert export.latest_export(base) == os.path.join(base, "10")

    model.get_layer("conv").kernel.assign(tf.ones_like(model.get_layer("conv").kernel))
    export.export_saved_model(model, base, step=10, keep_max=2)
    module = tf.saved_model.load(os.path.join(base, "10"))
    x = _images(2, 8)
    _assert_outputs_close(module(x), model(x))
    assert _entries(base) == ["10", "2"]
    # Regularisation losses: one function per regularised weight, equal to model.losses.
    assert len(module.regularization_losses) == 1
    np.testing.assert_allclose(module.regularization_losses[0]().numpy(), model.losses[0], 1e-6)

    os.makedirs(os.path.join(base, "notes"))
    assert export.prune_exports(base, 1) == [os.path.join(base, "2")]
    assert _entries(base) == ["10", "notes"]


def test_export_traces_the_network_once_per_mode(tmp_path, monkeypatch):
    """The saver traces its functions in its own context: the network is traced there once
    per mode (inference, training), not also before saving."""
    model = _tiny_model()
    model(_images(1, 8))
    modes = []
    real_forward = export._HubModule._forward_py

    def counting_forward(self, images, training):
        modes.append(training)
        return real_forward(self, images, training)

    monkeypatch.setattr(export._HubModule, "_forward_py", counting_forward)
    path = export.export_saved_model(model, str(tmp_path / "saved_model"), step=1, image_size=8)
    assert sorted(modes) == [False, True]
    monkeypatch.undo()
    module = tf.saved_model.load(path)
    x = _images(2, 8)
    _assert_outputs_close(module(x), model(x))


def test_call_forms_of_the_reloaded_module(tmp_path):
    """`m(images)` has a function for each dtype and call form: float32 and uint8 answer like
    the model in the form's mode; those of a refused dtype only fail with the message, so
    they capture none of the module's variables."""
    model = _tiny_model()
    model(_images(1, 8))
    path = export.export_saved_model(model, str(tmp_path / "saved_model"), step=1)
    module = tf.saved_model.load(path)
    x = _images(3, 8, seed=9)
    pixels = np.round(x * 255).astype("uint8")
    forms = [
        ({}, False),
        ({"training": False}, False),
        ({"training": True}, True),
        ({"trainable": False}, False),
        ({"trainable": True}, True),
        ({"training": True, "trainable": True}, True),
    ]
    for kwargs, training in forms:
        for images, as_float in ((x, x), (pixels, pixels.astype("float32") / 255.0)):
            expected = model(as_float, training=training)
            _assert_outputs_close(module(images, **kwargs), expected, atol=1e-5, rtol=1e-5)
    accepted = {tf.float32, tf.uint8}
    by_dtype = {}
    for fn in module.__call__.concrete_functions:
        args, kwargs = fn.structured_input_signature
        images = args[0] if args else kwargs["images"]
        by_dtype.setdefault(images.dtype, []).append(fn)
    assert set(by_dtype) == accepted | set(export._REFUSED_DTYPES)
    # m(x), training=True, trainable=False, trainable=True, training=True with trainable=True.
    assert all(len(fns) == 5 for fns in by_dtype.values())
    for dtype, fns in by_dtype.items():
        for fn in fns:
            assert bool(fn.captured_inputs) == (dtype in accepted), (dtype, fn.name)
    with pytest.raises(tf.errors.InvalidArgumentError, match="got dtype float16"):
        module(_images(1, 8).astype("float16"), training=True)


def test_interrupted_export_leaves_no_partial_module(tmp_path, monkeypatch):
    model = _tiny_model()
    model(_images(1, 8))
    base = str(tmp_path / "saved_model")
    export.export_saved_model(model, base, step=1)
    real_save = tf.saved_model.save

    def save_then_crash(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise KeyboardInterrupt("simulated interruption after writing")

    monkeypatch.setattr(export.tf.saved_model, "save", save_then_crash)
    for step in (2, 1):  # a new step, and replacing an existing one
        with pytest.raises(KeyboardInterrupt):
            export.export_saved_model(model, base, step=step)
        assert _entries(base) == ["1"]  # no temp dirs left, the old export intact
    monkeypatch.undo()
    x = _images(2, 8)
    _assert_outputs_close(tf.saved_model.load(os.path.join(base, "1"))(x), model(x))


def test_next_export_recovers_from_a_killed_one(tmp_path, caplog):
    import shutil

    model = _tiny_model()
    model(_images(1, 8))
    base = str(tmp_path / "saved_model")
    export.export_saved_model(model, base, step=1)
    # What a SIGKILL can leave: an unfinished module, a replaced export that was not yet
    # deleted, and a complete export of step 3 moved aside just before its replacement.
    os.makedirs(os.path.join(base, ".tmp-export-2-0badc0de", "variables"))
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, ".old-export-1-12345678"))
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, ".old-export-3-87654321"))
    assert export.list_exports(base) == [os.path.join(base, "1")]
    with caplog.at_level("WARNING"):
        export.export_saved_model(model, base, step=4)
    assert _entries(base) == ["1", "3", "4"]
    assert "killed before it finished" in caplog.text and "Restoring" in caplog.text
    x = _images(2, 8)
    _assert_outputs_close(tf.saved_model.load(os.path.join(base, "3"))(x), model(x))


def test_export_rejects_bad_arguments(tmp_path):
    model = _tiny_model()
    base = str(tmp_path / "saved_model")
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="image_size"):
        export.export_saved_model(unbuilt, base, step=0)  # not built, size unknown
    model(_images(1, 8))
    with pytest.raises(ValueError, match="step"):
        export.export_saved_model(model, base, step=-1)
    with pytest.raises(ValueError, match="keep_max"):
        export.export_saved_model(model, base, step=1, keep_max=0)
    with pytest.raises(ValueError, match="image_size"):
        export.export_saved_model(model, base, step=1, image_size=(8, 8, 3))
    plain = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(TypeError, match="dict"):
        export.export_saved_model(plain, base, step=1)
    assert not os.path.exists(os.path.join(base, "1"))
    assert [n for n in os.listdir(base) if n.startswith(".")] == []


def _package_modules(package: str) -> list[str]:
    """Every .py file under `package`, subpackages included, relative to it."""
    return sorted(
        os.path.relpath(os.path.join(root, name), package)
        for root, _, names in os.walk(package)
        for name in names
        if name.endswith(".py")
    )


def _imported_modules(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    mods = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods.append(node.module or "")
    return mods


def test_core_package_does_not_import_consumer_dependencies():
    """tensorflow_hub and tf_keras are test/consumer-only: no tf_simclr module (subpackages
    augment/, data/, reference/ included) imports them."""
    package = os.path.join(ROOT, "tf_simclr")
    modules = _package_modules(package)
    for sub in ("augment", "data", "reference"):  # the walk reaches the subpackages
        assert any(m.startswith(sub + os.sep) for m in modules), sub
    for name in modules:
        for mod in _imported_modules(os.path.join(package, name)):
            assert mod.split(".")[0] not in ("tensorflow_hub", "tf_keras"), (name, mod)
    requirements = os.path.join(ROOT, "requirements.txt")
    if os.path.exists(requirements):
        with open(requirements) as f:
            text = f.read().lower()
        assert "tensorflow-hub" not in text and "tf-keras" not in text


@pytest.mark.slow
def test_export_of_model_built_under_mirrored_strategy(tmp_path):
    """train.py may export a model whose variables are MirroredVariables (2 logical CPUs)."""
    script = os.path.join(ROOT, "tests", "helpers", "export_mirrored_check.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "OK" in proc.stdout
