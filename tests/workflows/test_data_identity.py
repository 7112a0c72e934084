"""A run knows its data (issue 22): the identity recorded in config.json (absolute dataset, split,
class names, example count, fingerprint), and the one check every reader of a run makes:
resume (from another working directory), eval, export, fine-tuning --checkpoint, the distillation
--teacher, transfer, and the semi-supervised recipe's stages. Other data that would give a wrong
number is refused before any step; a moved folder or transfer to other data is allowed and
logged; runs from before identities load with a warning."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
from helpers.configs import tiny_config
from PIL import Image

from tf_simclr import cli, factory
from tf_simclr.config import Config
from tf_simclr.data.identity import data_identity
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.network.model import SUPERVISED_HEAD_NAME
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import run_data, runner, warm_start

COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}
PER_SPLIT = {"train": 8, "test": 4}


def _folder(root, class_names=tuple(COLOURS), seed=0, extra=0):
    """An image folder root/<split>/<class>/*.png of 16 px colour images (one colour per class
    position, so folders with other class names hold the same kind of images); `extra` more
    training images in the first class."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    for split, count in PER_SPLIT.items():
        for position, name in enumerate(class_names):
            os.makedirs(root / split / name, exist_ok=True)
            n = count + (extra if split == "train" and position == 0 else 0)
            for i in range(n):
                pixels = rng.normal(colours[position], 40, (16, 16, 3)).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i:02d}.png")
    return root


def _ckpts(model_dir) -> list[int]:
    names = os.listdir(model_dir) if os.path.isdir(model_dir) else []
    return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"ckpt-(\d+)\.index", n)))


def _small(model_dir, **changes):
    values = dict(train_batch_size=8, eval_batch_size=12, eval_steps=0, knn_k=4)
    values.update(changes)
    return tiny_config(model_dir, **values)


def _cli(*argv) -> Config:
    cli.FLAGS(["tf-simclr", *argv])
    try:
        return cli.config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Folders: `colours` (blue, green, red), `moved` (the same files elsewhere), `renamed` (3
    classes as well, other names), `reordered` (the same names, in another label order is
    impossible for folders: sorted; so `other_images`: the same classes, one more image)."""
    root = tmp_path_factory.mktemp("identity_data")
    colours = _folder(root / "work" / "colours")
    moved = root / "elsewhere" / "colours"
    shutil.copytree(colours, moved)
    return {
        "root": root,
        "colours": colours,
        "moved": moved,
        "renamed": _folder(root / "renamed", ("cat", "dog", "fox"), seed=1),
        "other_images": _folder(root / "other_images", seed=2, extra=1),
    }


@pytest.fixture(scope="module")
def runs(data):
    """A pretraining run started with a RELATIVE --dataset from data["root"]/work, and a run
    fine-tuned from it on the same folder (its head predicts blue, green, red)."""
    root = data["root"]
    cwd = os.getcwd()
    os.chdir(root / "work")
    try:
        pretrain = _small(root / "pretrain", mode="train", dataset="colours", train_steps=2)
        runner.run(pretrain)
    finally:
        os.chdir(cwd)
    finetune = _small(
        root / "finetune",
        mode="train",
        train_mode="finetune",
        checkpoint=str(root / "pretrain"),
        dataset=str(data["colours"]),
        train_steps=2,
    )
    runner.run(finetune)
    return {"pretrain": root / "pretrain", "finetune": root / "finetune"}


# -- the identity itself ------------------------------------------------------------------------


def test_a_folders_identity_names_its_files_classes_and_location(data):
    identity = data_identity(str(data["colours"]), None, "train")
    assert identity["kind"] == "folder" and identity["split"] == "train"
    assert identity["dataset"] == str(data["colours"])
    assert identity["class_names"] == sorted(os.listdir(data["colours"] / "train"))
    assert identity["num_examples"] == 3 * PER_SPLIT["train"]
    # Where it lies is not part of the fingerprint; its files and their sizes are.
    moved = data_identity(str(data["moved"]), None, "train")
    assert moved["fingerprint"] == identity["fingerprint"]
    assert moved["dataset"] == str(data["moved"]) != identity["dataset"]
    other = data_identity(str(data["other_images"]), None, "train")
    assert other["class_names"] == identity["class_names"]
    assert other["fingerprint"] != identity["fingerprint"]
    assert (
        data_identity(str(data["colours"]), None, "test")["fingerprint"]
        != (identity["fingerprint"])
    )


def test_a_changed_file_size_changes_the_fingerprint(tmp_path):
    root = _folder(tmp_path / "f")
    before = data_identity(str(root), None, "train")["fingerprint"]
    victim = root / "train" / "red" / "00.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert data_identity(str(root), None, "train")["fingerprint"] != before


def test_the_embedded_identity_is_its_tfds_info():
    import tensorflow_datasets as tfds

    from tf_simclr.data import EMBEDDED_DIR

    identity = data_identity("embedded", None, "train")
    builder = tfds.builder_from_directory(os.path.join(EMBEDDED_DIR, "shapes10", "1.0.0"))
    assert identity["kind"] == "embedded" and identity["version"] == "1.0.0"
    assert identity["class_names"] == builder.info.features["label"].names
    assert identity["num_examples"] == builder.info.splits["train"].num_examples == 5000
    assert identity == data_identity("embedded", None, "train")


def test_the_identity_is_recorded_in_config_json_and_not_a_setting(runs, data):
    saved = Config.load(str(runs["pretrain"]))
    # Started with the relative --dataset=colours from data["root"]/work: recorded absolute.
    assert saved.dataset == str(data["colours"])
    assert saved.data_identity == data_identity(str(data["colours"]), None, "train")
    assert saved.hash() == saved.replace(data_identity=None).hash()
    assert "data_identity" not in cli.FLAGS  # a record, not a flag


# -- the same run, read again -------------------------------------------------------------------


def test_a_run_evaluated_from_another_directory_reads_its_own_data(runs, data, monkeypatch):
    # From a directory where "colours" is another folder (3 other classes): without --dataset the
    # run's recorded folder is read; with the relative --dataset, the other folder is refused.
    elsewhere = data["root"] / "cwd2"
    elsewhere.mkdir(exist_ok=True)
    if not (elsewhere / "colours").exists():
        shutil.copytree(data["renamed"], elsewhere / "colours")
    monkeypatch.chdir(elsewhere)
    config = _cli("--mode=eval", f"--model_dir={runs['pretrain']}")
    assert config.dataset == str(data["colours"])
    given = _cli("--mode=eval", f"--model_dir={runs['pretrain']}", "--dataset=colours")
    before = (runs["pretrain"] / "result.json").read_bytes()
    with pytest.raises(run_data.DataMismatchError) as err:
        runner.run(given)
    message = str(err.value)
    assert str(elsewhere / "colours") in message and str(data["colours"]) in message
    assert "3 classes as well, but other ones" in message
    assert f"--dataset={data['colours']}" in message
    assert (runs["pretrain"] / "result.json").read_bytes() == before


def test_resuming_from_another_directory_on_other_data_is_refused_before_any_step(
    runs, data, monkeypatch
):
    monkeypatch.chdir(data["root"])
    config = Config.load(str(runs["pretrain"])).replace(
        mode="train", dataset="renamed", train_steps=4
    )
    with pytest.raises(run_data.DataMismatchError, match="Resuming would go on training"):
        runner.run(config)
    assert _ckpts(runs["pretrain"]) == [2]


def test_eval_of_a_fine_tuned_run_on_other_data_of_the_same_class_count_is_refused(runs, data):
    before = (runs["finetune"] / "result.json").read_bytes()
    for other, why in [
        ("renamed", "3 classes as well, but other ones"),
        ("other_images", "the same classes but other examples (24 vs 25"),
    ]:
        config = Config.load(str(runs["finetune"])).replace(mode="eval", dataset=str(data[other]))
        with pytest.raises(run_data.DataMismatchError, match=re.escape(why)):
            runner.run(config)
    assert (runs["finetune"] / "result.json").read_bytes() == before


def test_export_on_other_data_is_refused(runs, data):
    config = Config.load(str(runs["finetune"])).replace(mode="export", dataset=str(data["renamed"]))
    with pytest.raises(run_data.DataMismatchError, match="export"):
        runner.run(config)
    assert not (runs["finetune"] / "saved_model").exists()


def test_a_moved_folder_is_the_same_data(runs, data, tmp_path, caplog):
    run = tmp_path / "finetune"
    shutil.copytree(runs["finetune"], run)
    config = Config.load(str(run)).replace(
        mode="eval", model_dir=str(run), dataset=str(data["moved"])
    )
    with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.run_data"):
        result = runner.run(config)
    assert "moved" in caplog.text and str(data["moved"]) in caplog.text
    # The same files: the same accuracy as the run's checkpoint scores on the original folder
    # (the evaluation's classifier alone, not a second whole evaluation with its probes).
    model = factory.build_model(config, 3)
    prefix = ckpt_lib.latest_valid_checkpoint(str(run))
    ckpt_lib.training_checkpoint(model).restore(prefix).expect_partial()
    original = eval_lib.classification_accuracy(
        model, factory.eval_dataset(config.replace(dataset=str(data["colours"])), "test")
    )
    assert result["metrics"]["finetune_top1"] == pytest.approx(original["top1"])


def test_a_run_resumes_on_its_moved_folder(runs, data, tmp_path, caplog):
    run = tmp_path / "pretrain"
    shutil.copytree(runs["pretrain"], run)
    config = Config.load(str(run)).replace(
        mode="train", model_dir=str(run), dataset=str(data["moved"]), train_steps=4
    )
    with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.run_data"):
        runner.run(config)
    assert "moved" in caplog.text
    assert _ckpts(run)[-1] == 4
    # The record follows the data to where it is now.
    assert Config.load(str(run)).data_identity["dataset"] == str(data["moved"])


def test_a_run_from_before_identities_loads_with_one_warning(
    runs, data, tmp_path, caplog, monkeypatch
):
    run = tmp_path / "old"
    shutil.copytree(runs["finetune"], run)
    values = json.loads((run / "config.json").read_text())
    del values["data_identity"]  # as written before this change: the dataset as given
    values["dataset"] = "colours"
    (run / "config.json").write_text(json.dumps(values))
    monkeypatch.chdir(data["root"] / "work")
    config = Config.load(str(run)).replace(mode="eval", model_dir=str(run))
    with caplog.at_level(logging.WARNING, logger="tf_simclr.workflows.run_data"):
        result = runner.run(config)
    assert caplog.text.count("cannot be checked") == 1
    assert "--dataset=colours was stored as given, a relative path" in caplog.text
    assert 0.0 <= result["metrics"]["finetune_top1"] <= 1.0


# -- one run reading another ----------------------------------------------------------------------


def test_a_teacher_of_the_same_class_count_but_other_classes_is_refused_before_any_step(
    runs, data, tmp_path
):
    student = _small(
        tmp_path / "student",
        mode="train",
        train_mode="distill",
        teacher=str(runs["finetune"]),
        dataset=str(data["renamed"]),
    )
    with pytest.raises(run_data.DataMismatchError, match="teacher_top1") as err:
        runner.run(student)
    assert "blue" in str(err.value) and "cat" in str(err.value)
    assert _ckpts(tmp_path / "student") == []


def test_a_teacher_of_the_same_classes_on_other_images_is_allowed_and_said(runs, data, caplog):
    config = _small("/unused", train_mode="distill", teacher=str(runs["finetune"]))
    for other in ("other_images", "moved"):
        current = data_identity(str(data[other]), None, "train")
        with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.run_data"):
            run_data.check_teacher(config.replace(dataset=str(data[other])), current)
    assert caplog.text.count("fine-tuned on other data with the same classes") == 1


def test_eval_of_a_distilled_run_with_a_teacher_of_other_classes_is_refused(runs, data, tmp_path):
    renamed_teacher = tmp_path / "teacher"
    shutil.copytree(runs["finetune"], renamed_teacher)
    values = json.loads((renamed_teacher / "config.json").read_text())
    values["data_identity"]["class_names"] = ["cat", "dog", "fox"]
    (renamed_teacher / "config.json").write_text(json.dumps(values))
    config = _small(
        tmp_path / "student", train_mode="distill", teacher=str(renamed_teacher)
    ).replace(mode="eval", dataset=str(data["colours"]))
    with pytest.raises(run_data.DataMismatchError, match="teacher_top1"):
        runner.evaluate_checkpoints(config, None)


def _head(values):
    return {p: v for p, v in values.items() if SUPERVISED_HEAD_NAME in p}


@pytest.mark.parametrize(
    "other, kept", [("moved", True), ("other_images", True), ("renamed", False)]
)
def test_fine_tuning_keeps_a_head_only_for_the_same_class_names(runs, data, other, kept, caplog):
    config = _small("/unused", train_mode="finetune", checkpoint=str(runs["finetune"])).replace(
        dataset=str(data[other])
    )
    model = factory.build_model(config, 3)
    fresh = {w.path: w.numpy().copy() for w in model.weights}
    with caplog.at_level(logging.INFO):
        warm_start.restore_initial_weights(config, model)
    prefix = ckpt_lib.latest_valid_checkpoint(str(runs["finetune"]))
    stored = ckpt_lib.read_model_weights(prefix, [w.path for w in model.weights])
    now = {w.path: w.numpy() for w in model.weights}
    assert _head(now)
    for path in _head(now):
        np.testing.assert_array_equal(now[path], stored[path] if kept else fresh[path])
    assert ("starts afresh" in caplog.text) is not kept


def test_fine_tuning_and_transfer_from_a_run_on_other_data_are_logged(runs, data, caplog):
    current = data_identity(str(data["renamed"]), None, "train")
    config = _small(
        "/unused", mode="eval", checkpoint=str(runs["pretrain"]), dataset=str(data["renamed"])
    )
    with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.run_data"):
        recorded = run_data.pretrained_identity(config, current, purpose="fine-tuning")
        run_data.pretrained_identity(
            config.replace(dataset=str(data["colours"])),
            data_identity(str(data["colours"]), None, "train"),
            purpose="fine-tuning",
        )
    assert recorded == Config.load(str(runs["pretrain"])).data_identity
    # Logged once: for the other data, not for the pretraining run's own.
    assert caplog.text.count("Transfer:") == 1 and str(data["renamed"]) in caplog.text


def test_paths_are_made_absolute_against_the_invocations_directory(runs, monkeypatch):
    monkeypatch.chdir(runs["finetune"].parent)
    config = _small("/unused", train_mode="distill", teacher="finetune")
    absolute = runner.with_absolute_paths(config)
    assert absolute.teacher == str(runs["finetune"])
    assert absolute.dataset == "embedded"  # names stay names
    assert runner.with_absolute_paths(config.replace(dataset="cifar10")).dataset == "cifar10"
    prefix = runner.with_absolute_paths(
        config.replace(train_mode="finetune", teacher=None, checkpoint="finetune/ckpt-2")
    ).checkpoint
    assert prefix == str(runs["finetune"] / "ckpt-2")


@pytest.mark.parametrize(
    "source, subset, kept",
    [("pretrain", None, True), ("pretrain", 0.5, False), ("finetune", 0.5, False)],
)
def test_a_head_that_saw_labels_outside_the_labelled_subset_starts_afresh(
    runs, data, source, subset, kept, caplog
):
    """Fine-tuning on a labelled subset never starts from a head trained on other labels: a
    pretraining run's online head learned from every training label, and a run fine-tuned on
    all of them (or on another subset) too; kept, they would put those labels into the
    fine-tuned accuracy. With all labels, the head is kept."""
    config = _small(
        "/unused",
        train_mode="finetune",
        checkpoint=str(runs[source]),
        dataset=str(data["colours"]),
        label_fraction=subset,
    )
    model = factory.build_model(config, 3)
    fresh = {w.path: w.numpy().copy() for w in model.weights}
    with caplog.at_level(logging.INFO):
        warm_start.restore_initial_weights(config, model)
    prefix = ckpt_lib.latest_valid_checkpoint(str(runs[source]))
    stored = ckpt_lib.read_model_weights(prefix, [w.path for w in model.weights])
    now = {w.path: w.numpy() for w in model.weights}
    for path in now:
        want = fresh[path] if SUPERVISED_HEAD_NAME in path and not kept else stored[path]
        np.testing.assert_array_equal(now[path], want, err_msg=path)
    assert ("labels outside this run's labelled subset" in caplog.text) is not kept
    # The same subset (fraction and seed) as the checkpoint's own fine-tuning keeps it.
    same = Config.load(str(runs["finetune"])).replace(label_fraction=0.5)
    assert not warm_start._head_saw_other_labels(same, config.replace(label_fraction=0.5))
    assert warm_start._head_saw_other_labels(same, config.replace(label_fraction=0.5, seed=7))
    assert warm_start._head_saw_other_labels(None, config.replace(label_fraction=0.5))
