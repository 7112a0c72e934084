"""tf_simclr.factory: a run's training batches follow its objective's declaration."""

from __future__ import annotations

import pytest
from helpers import mixed_tfds as mixed
from helpers.configs import tiny_config

from tf_simclr import factory, objectives


def test_every_objective_takes_batches_the_factory_builds():
    kinds = {cls.batches for cls in objectives.OBJECTIVES.values()}
    assert kinds <= set(factory.TRAINING_BATCHES)
    assert {cls.train_mode for cls in objectives.OBJECTIVES.values()} == set(objectives.OBJECTIVES)


@pytest.mark.parametrize(
    "declared, keys, size",
    [
        ("two_views", {"view1", "view2", "label"}, mixed.NUM_MIXED),
        # Half the labelled images (6 of 12): fine-tuning's labelled subset, unlabelled left out.
        ("labelled_subset", {"image", "label"}, mixed.NUM_TRAIN // 2),
        ("all_images", {"image", "label"}, mixed.NUM_MIXED),
    ],
)
def test_the_training_batches_are_chosen_by_the_objective(
    mixed_tfds, monkeypatch, declared, keys, size
):
    """An objective registered for --train_mode=finetune that declares other batches gets
    those: the factory reads the objective's `batches`, not the mode's name."""

    class Standin(objectives.SupervisedFineTuning):
        batches = declared

    monkeypatch.setitem(objectives.OBJECTIVES, "finetune", Standin)
    config = tiny_config(
        "/unused",
        train_mode="finetune",
        dataset=mixed.NAME,
        data_dir=str(mixed_tfds),
        train_split=mixed.MIXED_SPLIT,
        label_fraction=0.5,
        train_batch_size=4,
    )
    assert factory.num_train_examples(config) == size
    batch = next(iter(factory.training_dataset_fn(config, 4)(None)))
    assert set(batch) == keys


@pytest.mark.parametrize("train_mode", ["pretrain", "finetune"])
def test_the_shuffle_buffer_setting_reaches_the_training_pipeline(train_mode):
    """--shuffle_buffer=1 leaves the training stream in the split's stored order (the order
    the evaluation reads it in); the default buffer does not."""
    config = tiny_config("/unused", train_mode=train_mode, train_batch_size=64)
    whole_split = config.replace(eval_batch_size=64, eval_steps=0)
    stored = next(iter(factory.eval_dataset(whole_split, "train")))

    def first_labels(buffer):
        batch = next(iter(factory.training_dataset_fn(config.replace(shuffle_buffer=buffer), 64)()))
        return batch["label"].numpy().tolist()

    assert first_labels(1) == stored["label"].numpy().tolist()
    assert first_labels(10_000) != first_labels(1)
