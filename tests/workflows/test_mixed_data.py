"""Pretraining, evaluation and the semi-supervised recipe on a TFDS dataset with labelled and
unlabelled images (tests/helpers/mixed_tfds.py: 12 labelled training images of 3 classes,
20 unlabelled ones, 9 test images), read as --dataset=mixed3 --data_dir=... with
--train_split=train+unlabelled, as STL-10 is."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import mixed_tfds as mixed
from helpers.configs import tiny_config

from tf_simclr import factory
from tf_simclr.config import Config, ConfigError
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.training import history as history_lib
from tf_simclr.workflows import runner, semi_supervised


def _mixed_config(model_dir, data_dir, **changes):
    values = dict(
        dataset=mixed.NAME,
        data_dir=str(data_dir),
        train_split=mixed.MIXED_SPLIT,
        eval_split="test",
        train_batch_size=mixed.NUM_MIXED,  # one batch = the whole split, every image once
        random_init_baseline=False,
        eval_batch_size=16,
        eval_steps=0,
        knn_k=5,
        neighbour_images=3,
        projector_embeddings=0,
    )
    values.update(changes)
    return tiny_config(model_dir, **values)


def test_pretraining_on_labelled_and_unlabelled_images(mixed_tfds, tmp_path, monkeypatch, caplog):
    """Every image in the contrastive loss, the online head on the labelled ones: each step's
    batch is the whole split, and the head reports its 12 labelled images; the kNN bank holds
    exactly those 12; an evaluation split without labels is refused naming the flag."""
    banks = []
    knn_classify = eval_lib.knn_classify

    def recording_knn(train_features, train_labels, *args, **kwargs):
        banks.append(np.asarray(train_labels))
        return knn_classify(train_features, train_labels, *args, **kwargs)

    monkeypatch.setattr(eval_lib, "knn_classify", recording_knn)
    config = _mixed_config(
        tmp_path / "run", mixed_tfds, mode="train_then_eval", train_steps=2, steps_per_loop=1
    )
    caplog.set_level("INFO")
    result = runner.run(config)
    history = history_lib.read_history(config.model_dir)
    assert [r["step"] for r in history] == [1, 2]
    for record in history:
        assert record["sup_labelled_examples"] == mixed.NUM_TRAIN
        assert np.isfinite(record["sup_loss"]) and np.isfinite(record["contrastive_loss"])
    metrics = result["metrics"]
    assert 0.0 <= metrics["knn_top1"] <= 1.0 and 0.0 <= metrics["linear_top1"] <= 1.0
    assert len(banks) == 1
    assert np.bincount(banks[0]).tolist() == [mixed.TRAIN_PER_CLASS] * 3
    assert (
        f"--train_split='{mixed.MIXED_SPLIT}': {mixed.NUM_TRAIN} labelled examples used, "
        f"{mixed.NUM_UNLABELLED} unlabelled" in caplog.text
    )
    assert os.path.isfile(result["neighbours"])
    with open(os.path.join(config.model_dir, "config.json")) as f:
        assert json.load(f)["train_split"] == mixed.MIXED_SPLIT

    with pytest.raises(ValueError, match="--eval_split='unlabelled' has no labelled example"):
        runner.run(config.replace(mode="eval", eval_split="unlabelled"))


def test_the_recipe_stages_train_on_all_images_or_on_the_labelled_ones(mixed_tfds, tmp_path):
    """Without training: the stages' epochs count all 32 images (pretraining, distillation)
    or the 12 labelled ones (fine-tuning, baseline, --label_fraction=1), and the recipe's
    pre-check counts the labelled subset per class."""
    config = _mixed_config(
        tmp_path / "recipe", mixed_tfds, mode="semi_supervised", label_fraction=1.0
    )
    configs = semi_supervised.stage_configs(config)
    examples = {stage: factory.num_train_examples(c) for stage, c in configs.items()}
    assert examples == {
        "pretrain": mixed.NUM_MIXED,
        "finetune": mixed.NUM_TRAIN,
        "distill": mixed.NUM_MIXED,
        "supervised": mixed.NUM_TRAIN,
    }
    counts = semi_supervised.check_stages_fit_data(
        config, {s: c.replace(train_batch_size=8) for s, c in configs.items()}
    )
    assert counts == dict.fromkeys(mixed.CLASS_NAMES, mixed.TRAIN_PER_CLASS)
    half = config.replace(label_fraction=0.5)
    assert factory.num_train_examples(semi_supervised.stage_configs(half)["finetune"]) == 6


@pytest.mark.slow
def test_the_recipe_fine_tunes_on_the_labelled_images_and_distils_on_all(mixed_tfds, tmp_path):
    """--mode=semi_supervised on train+unlabelled: pretraining and distillation run over all
    32 images, fine-tuning and the baseline over the labelled 12 (--label_fraction=1: all of
    them), the probe is trained on those 12. (Slow: four tiny runs, about 90 s on a busy
    2-core machine.)"""
    config = _mixed_config(
        tmp_path / "recipe",
        mixed_tfds,
        mode="semi_supervised",
        label_fraction=1.0,
        train_steps=2,
        semi_finetune_epochs=2,
        semi_finetune_batch_size=6,
        knn_eval=False,
        linear_eval_epochs=2,
        neighbour_images=0,
    )
    result = runner.run(config)
    stages = result["stages"]
    assert result["labelled_examples"] == mixed.NUM_TRAIN
    # 2 epochs of the 12 labelled images in batches of 6; distillation 2 steps of all 32.
    assert stages["finetune"]["total_steps"] == stages["supervised"]["total_steps"] == 4
    assert stages["pretrain"]["total_steps"] == stages["distill"]["total_steps"] == 2
    for stage in ("pretrain", "finetune", "distill", "supervised"):
        saved = Config.load(os.path.join(config.model_dir, stage))
        assert saved.train_split == mixed.MIXED_SPLIT
    history = history_lib.read_history(os.path.join(config.model_dir, "pretrain"))
    assert all(r["sup_labelled_examples"] == mixed.NUM_TRAIN for r in history)
    assert set(result["table"]) == {"supervised", "linear_probe", "finetuned", "distilled"}
    assert all(0.0 <= v <= 1.0 for v in result["table"].values())


def test_the_recipe_on_a_split_without_labels_is_refused_before_any_stage(mixed_tfds, tmp_path):
    config = _mixed_config(
        tmp_path / "recipe", mixed_tfds, mode="semi_supervised", label_fraction=0.5
    )
    with pytest.raises(ConfigError, match="--train_split='unlabelled' has no labelled image"):
        runner.run(config.replace(train_split="unlabelled", train_batch_size=8))
    assert not os.path.exists(os.path.join(config.model_dir, "pretrain"))


def _nothing_trained(model_dir) -> bool:
    """No checkpoint (nor its index) was written into `model_dir`."""
    names = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    return not any(name.startswith("ckpt") or name == "checkpoint" for name in names)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(eval_split="unlabelled"),
            r"--eval_split='unlabelled' has no labelled example",
        ),
        (
            dict(train_split="unlabelled", train_batch_size=8),
            r"--train_split='unlabelled' has no labelled example.*the kNN bank.*"
            r"--eval_dataset=<labelled data>.*--mode=train to pretrain only",
        ),
        (
            dict(eval_dataset=mixed.NAME, eval_split="unlabelled"),
            r"--eval_split='unlabelled' of --eval_dataset=mixed3 has no labelled example",
        ),
    ],
    ids=["eval split", "kNN bank split", "eval split of --eval_dataset"],
)
def test_a_split_without_labels_is_refused_before_training(mixed_tfds, tmp_path, changes, message):
    """--mode=train_then_eval scores labelled images and fits the kNN bank and the probe on
    labelled ones: a split whose every label is -1 stops the run before any step is taken."""
    config = _mixed_config(
        tmp_path / "run", mixed_tfds, mode="train_then_eval", train_steps=1, **changes
    )
    with pytest.raises(ValueError, match=message):
        runner.run(config)
    assert _nothing_trained(config.model_dir)


def test_a_split_has_a_labelled_example_as_its_stored_labels_say(mixed_tfds, tmp_path):
    """data.has_labelled_example against the labels the dataset was written with
    (helpers.mixed_tfds.split_labels), for TFDS splits and their unions, and for an image
    folder (labels from its class folders)."""
    from PIL import Image

    from tf_simclr import data as data_lib

    folder = tmp_path / "images" / "train" / "cat"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    assert data_lib.has_labelled_example(str(tmp_path / "images"), split="train")

    for split in ("train", "unlabelled", "test", "train+unlabelled", "unlabelled+test"):
        stored = np.concatenate([mixed.split_labels(s) for s in split.split("+")])
        found = data_lib.has_labelled_example(mixed.NAME, data_dir=str(mixed_tfds), split=split)
        assert found == bool(np.any(stored >= 0)), split
