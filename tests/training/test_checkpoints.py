"""Checkpoint discovery and fallback past damaged checkpoints."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.training import checkpoints


def _save_three(directory):
    weights = tf.Variable(np.zeros(4, np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(weights=weights, step=step)
    manager = tf.train.CheckpointManager(ckpt, directory, max_to_keep=5)
    for n in (10, 20, 30):
        weights.assign(np.full(4, n, np.float32))
        step.assign(n)
        manager.save(checkpoint_number=n)
    return weights, step


def _fresh():
    weights = tf.Variable(np.zeros(4, np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    return weights, step, tf.train.Checkpoint(weights=weights, step=step)


def test_lists_checkpoints_in_numeric_order_without_state_file(tmp_path):
    _save_three(str(tmp_path))
    os.remove(tmp_path / "checkpoint")  # the state file is not needed to find them
    names = [os.path.basename(p) for p in checkpoints.list_checkpoints(str(tmp_path))]
    assert names == ["ckpt-10", "ckpt-20", "ckpt-30"]


def test_restores_newest_intact_checkpoint(tmp_path):
    _save_three(str(tmp_path))
    weights, step, ckpt = _fresh()
    restored = checkpoints.restore_latest_valid(ckpt, str(tmp_path))
    assert restored.endswith("ckpt-30") and int(step.numpy()) == 30


@pytest.mark.parametrize("damage", ["truncate", "delete_data", "delete_index"])
def test_falls_back_past_a_damaged_newest_checkpoint(tmp_path, damage, caplog):
    _save_three(str(tmp_path))
    newest = str(tmp_path / "ckpt-30")
    data_file = [f for f in os.listdir(tmp_path) if f.startswith("ckpt-30.data")][0]
    if damage == "truncate":
        with open(tmp_path / data_file, "r+b") as f:
            f.truncate(3)
    elif damage == "delete_data":
        os.remove(tmp_path / data_file)
    else:
        os.remove(newest + ".index")
    weights, step, ckpt = _fresh()
    restored = checkpoints.restore_latest_valid(ckpt, str(tmp_path))
    assert restored.endswith("ckpt-20")
    assert int(step.numpy()) == 20
    np.testing.assert_array_equal(weights.numpy(), np.full(4, 20.0))
    if damage != "delete_index":  # without its index the checkpoint is simply not there
        assert "ckpt-30 is damaged" in caplog.text


def test_all_damaged_raises_instead_of_starting_over(tmp_path):
    _save_three(str(tmp_path))
    for name in os.listdir(tmp_path):
        if ".data" in name:
            with open(tmp_path / name, "r+b") as f:
                f.truncate(2)
    _, _, ckpt = _fresh()
    with pytest.raises(checkpoints.CheckpointError, match="are damaged"):
        checkpoints.restore_latest_valid(ckpt, str(tmp_path))


def test_empty_directory_restores_nothing(tmp_path):
    _, _, ckpt = _fresh()
    assert checkpoints.restore_latest_valid(ckpt, str(tmp_path)) is None


def _small_classifier(num_classes, width=4, seed=0):
    """A Keras model with dotted and nested layer paths and a head named like tf_simclr's."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(width, name="block.1")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    outputs = keras.layers.Dense(num_classes, name="head_supervised")(hidden)
    return keras.Model(inputs, outputs)


def test_model_weights_restore_by_path_with_a_new_class_count(tmp_path):
    source = _small_classifier(10, seed=1)
    prefix = checkpoints.training_checkpoint(source).save(str(tmp_path / "ckpt"))
    target = _small_classifier(3, seed=2)
    before = {w.path: w.numpy() for w in target.weights}
    values = checkpoints.read_model_weights(prefix, [w.path for w in target.weights])
    # Every weight is found under its escaped key ("block.1" holds a dot, paths hold "/").
    assert set(values) == {w.path for w in target.weights}
    counts = checkpoints.assign_weights_by_path(
        target.weights, values, replaceable=("head_supervised",)
    )
    assert counts == {"copied": 6, "kept_replaceable": 2, "missing": 0}
    saved = {w.path: w.numpy() for w in source.weights}
    for weight in target.weights:
        if "head_supervised" in weight.path:  # 3 classes now: keeps its fresh initial value
            np.testing.assert_array_equal(weight.numpy(), before[weight.path])
        else:
            np.testing.assert_array_equal(weight.numpy(), saved[weight.path])


def test_model_weights_of_another_architecture_are_refused_untouched(tmp_path):
    source = _small_classifier(10, width=4, seed=1)
    prefix = checkpoints.training_checkpoint(source).save(str(tmp_path / "ckpt"))
    target = _small_classifier(10, width=6, seed=2)
    before = [w.numpy() for w in target.weights]
    values = checkpoints.read_model_weights(prefix, [w.path for w in target.weights])
    with pytest.raises(ValueError, match=r"block\.1/kernel.*another architecture"):
        checkpoints.assign_weights_by_path(target.weights, values, replaceable=("head",))
    for weight, value in zip(target.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_remove_interrupted_saves_deletes_only_save_scratch_dirs(tmp_path):
    _save_three(str(tmp_path))
    os.makedirs(tmp_path / "ckpt-40_temp" / "part-00000-of-00001")
    os.makedirs(tmp_path / "ckpt-notes_temp")  # not a save's scratch directory
    removed = checkpoints.remove_interrupted_saves(str(tmp_path))
    assert removed == [str(tmp_path / "ckpt-40_temp")]
    assert (tmp_path / "ckpt-notes_temp").is_dir()
    assert [os.path.basename(p) for p in checkpoints.list_checkpoints(str(tmp_path))] == [
        "ckpt-10",
        "ckpt-20",
        "ckpt-30",
    ]
