"""Checkpoint discovery and fallback past damaged checkpoints."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr import checkpoints


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
