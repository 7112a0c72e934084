"""TFDS data with an unlabelled split (label -1), as STL-10's: the test dataset of
tests/helpers/mixed_tfds.py reads like a prepared TFDS dataset, a union of splits
("train+unlabelled") reads as one split, and label subsets are drawn from the labelled images
only."""

import numpy as np
import pytest
from helpers import mixed_tfds as mixed

from tf_simclr import data as data_lib
from tf_simclr.data import identity as identity_lib


def _labels(data_dir, split):
    ds, info = data_lib.load_source(mixed.NAME, data_dir=str(data_dir), split=split)
    return np.array([int(d["label"]) for d in ds]), info


def test_the_mixed_dataset_reads_like_a_prepared_tfds_dataset(mixed_tfds):
    for split in ("train", "unlabelled", "test"):
        labels, info = _labels(mixed_tfds, split)
        np.testing.assert_array_equal(np.sort(labels), np.sort(mixed.split_labels(split)))
    assert info.kind == "tfds" and info.num_classes == 3
    assert info.class_names == mixed.CLASS_NAMES
    assert info.num_examples == {
        "train": mixed.NUM_TRAIN,
        "unlabelled": mixed.NUM_UNLABELLED,
        "test": mixed.NUM_TEST,
    }


def test_a_union_of_splits_reads_as_one_split(mixed_tfds):
    labels, info = _labels(mixed_tfds, mixed.MIXED_SPLIT)
    assert len(labels) == info.num_examples[mixed.MIXED_SPLIT] == mixed.NUM_MIXED
    assert np.sum(labels < 0) == mixed.NUM_UNLABELLED
    assert np.bincount(labels[labels >= 0]).tolist() == [mixed.TRAIN_PER_CLASS] * 3
    # Its identity is its own (another split's fingerprint, the bytes of both splits).
    union = identity_lib.data_identity(mixed.NAME, str(mixed_tfds), mixed.MIXED_SPLIT)
    train = identity_lib.data_identity(mixed.NAME, str(mixed_tfds), "train")
    assert union["num_examples"] == mixed.NUM_MIXED
    assert union["fingerprint"] != train["fingerprint"]
    with pytest.raises(ValueError, match=r"'train\+unlabeled'.*'train\+unlabelled' work too"):
        data_lib.load_source(mixed.NAME, data_dir=str(mixed_tfds), split="train+unlabeled")


def test_label_fractions_are_drawn_from_the_labelled_images_only():
    labels = np.array([-1, 0, 1, -1, 2, 0, 1, 2, -1, 0, 1, 2, -1, -1, 0, 1, 2, -1])
    for fraction, per_class in ((1.0, 4), (0.5, 2), (0.01, 1)):
        chosen = data_lib.label_fraction_indices(labels, fraction, seed=1)
        assert np.all(labels[chosen] >= 0)
        # round(fraction * 12 labelled / 3 classes) per class, not of all 18 images.
        assert np.bincount(labels[chosen]).tolist() == [per_class] * 3
    assert len(data_lib.label_fraction_indices(np.full(5, -1), 0.5)) == 0


def test_counts_and_subsets_of_a_mixed_split_leave_the_unlabelled_out(mixed_tfds):
    kw = dict(data_dir=str(mixed_tfds), split=mixed.MIXED_SPLIT)
    assert data_lib.count_examples(mixed.NAME, **kw) == mixed.NUM_MIXED
    assert data_lib.count_examples(mixed.NAME, label_fraction=1.0, **kw) == mixed.NUM_TRAIN
    assert data_lib.count_examples(mixed.NAME, label_fraction=0.5, **kw) == 6
    counts, total = data_lib.labelled_class_counts(
        mixed.NAME, str(mixed_tfds), mixed.MIXED_SPLIT, 1.0, None, 0
    )
    assert counts == dict.fromkeys(mixed.CLASS_NAMES, mixed.TRAIN_PER_CLASS)
    assert total == mixed.NUM_MIXED
    # The fine-tuning pipeline of fraction 1 holds the 12 labelled images, every one once.
    ds, info = data_lib.build_finetune_dataset(
        mixed.NAME, batch_size=mixed.NUM_TRAIN, image_size=16, label_fraction=1.0, **kw
    )
    assert info.num_examples[mixed.MIXED_SPLIT] == mixed.NUM_TRAIN
    batch = next(iter(ds))
    assert sorted(batch["label"].numpy().tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_listed_ids_of_unlabelled_images_are_left_out(mixed_tfds, tmp_path, caplog):
    ids = tmp_path / "ids.txt"
    ids.write_text("train_000\ntrain_005\nunlabelled_003\n")
    positions = data_lib.labelled_subset_indices(
        mixed.NAME, str(mixed_tfds), mixed.MIXED_SPLIT, None, str(ids), 0
    )
    assert len(positions) == 2
    assert "1 of the ids" in caplog.text and "unlabelled_003" in caplog.text
