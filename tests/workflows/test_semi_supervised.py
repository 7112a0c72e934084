"""--mode=semi_supervised: the four stages in their folders, the table they give, the chart, and
a rerun that picks up finished stages."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from helpers.configs import tiny_config
from PIL import Image

from tf_simclr import data as data_lib
from tf_simclr import factory
from tf_simclr.config import Config, ConfigError, changed_settings
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import report, run_data, runner, semi_supervised

FRACTION = 0.02  # 10 labelled images per class of the embedded dataset's 5,000


def _recipe(root, **changes):
    values = dict(
        mode="semi_supervised",
        label_fraction=FRACTION,
        train_steps=2,
        semi_finetune_epochs=1,
        # The pretrain stage's frozen-feature evaluations and pictures: checked elsewhere
        # (tests/workflows/test_train.py), not read here (the table's probe row is the
        # fine-tuning stage's probe on the labelled subset).
        knn_eval=False,
        linear_eval=False,
        random_init_baseline=False,
        neighbour_images=0,
        projector_embeddings=0,
        eval_steps=1,
        eval_batch_size=200,
        linear_eval_epochs=2,
    )
    values.update(changes)
    return tiny_config(root, **values)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("semi")
    config = _recipe(root / "run")
    return config, runner.run(config)


def _stage_result(config, stage):
    with open(os.path.join(config.model_dir, stage, "result.json")) as f:
        return json.load(f)


def test_each_stage_runs_in_its_folder_with_the_recipes_settings(recipe):
    config, _ = recipe
    root = config.model_dir
    saved = {s: Config.load(os.path.join(root, s)) for s in semi_supervised.STAGES}
    assert saved["pretrain"].train_mode == "pretrain" and saved["pretrain"].label_fraction is None
    finetune = saved["finetune"]
    assert finetune.train_mode == "finetune" and finetune.label_fraction == FRACTION
    assert finetune.checkpoint == os.path.join(root, "pretrain")
    assert finetune.learning_rate == config.semi_finetune_learning_rate
    assert saved["distill"].teacher == os.path.join(root, "finetune")
    assert saved["distill"].train_mode == "distill" and saved["distill"].checkpoint is None
    assert saved["supervised"].random_init and saved["supervised"].checkpoint is None
    # Fine-tuning and the baseline run the same schedule over the same labelled images.
    labelled = data_lib.count_examples("embedded", label_fraction=FRACTION, seed=config.seed)
    assert labelled == 100
    for stage in ("finetune", "supervised"):
        result = _stage_result(config, stage)
        assert result["total_steps"] == config.replace(
            train_steps=0, train_epochs=1
        ).train_steps_for(labelled)


def _top1_by_hand(stage_dir):
    """Top-1 of the supervised head of the stage's final checkpoint on its evaluation images,
    computed here: the weights read from the checkpoint file, the logits' argmax counted."""
    stage = Config.load(stage_dir)
    model = factory.build_model(stage, 10)
    weights = {w.path: w for w in model.weights}
    prefix = ckpt_lib.list_checkpoints(stage_dir)[-1]
    tf.train.Checkpoint(model_weights=weights).read(prefix).assert_existing_objects_matched()
    hits = total = 0
    for batch in factory.eval_dataset(stage, stage.eval_split):
        logits = model(batch["image"], training=False)["logits_sup"].numpy()
        hits += int(np.sum(logits.argmax(axis=1) == batch["label"].numpy()))
        total += len(logits)
    assert total == stage.eval_steps * stage.eval_batch_size
    return hits / total


def test_the_table_holds_each_stages_own_result(recipe):
    config, result = recipe
    table = result["table"]
    assert set(table) == {"supervised", "linear_probe", "finetuned", "distilled"}
    # Each classifier's accuracy, recomputed from its stage's checkpoint.
    for key, stage in (("supervised", "supervised"), ("finetuned", "finetune")):
        assert table[key] == pytest.approx(_top1_by_hand(os.path.join(config.model_dir, stage)))
    distill_dir = os.path.join(config.model_dir, "distill")
    assert table["distilled"] == pytest.approx(_top1_by_hand(distill_dir))
    # The distill run's teacher is the fine-tuned model, evaluated on the same images.
    assert result["teacher_top1_in_distill_run"] == pytest.approx(table["finetuned"])
    # The probe row is the fine-tuning stage's probe of its pretrained encoder on the same
    # labelled images: equal to one computed here from the pretrain stage's checkpoint.
    finetune = result["stages"]["finetune"]["metrics"]
    assert table["linear_probe"] == finetune["labelled_linear_top1"]
    configs = semi_supervised.stage_configs(config)
    again = semi_supervised.labelled_linear_probe(configs["pretrain"], configs["finetune"])
    assert again["labelled_linear_top1"] == pytest.approx(table["linear_probe"], abs=1e-6)
    # The probe saw the labelled images only; the usual probe of the pretrain stage saw all.
    assert finetune["labelled_examples"] == result["labelled_examples"] == 100
    # It belongs to this recipe's labelled subset, not to the pretrain stage (which recipes
    # of other label fractions share).
    assert "labelled_linear_top1" not in _stage_result(config, "pretrain")["metrics"]
    with open(os.path.join(config.model_dir, "result.json")) as f:
        assert json.load(f)["table"] == table
    with Image.open(result["chart"]) as chart:
        assert chart.size[0] > 300 and chart.size[1] > 150
    text = report.format_report(result, config)
    assert "100 labelled training images" in text
    for label, key in [
        ("supervised from scratch", "supervised"),
        ("distilled student", "distilled"),
    ]:
        assert f"{label}" in text and f"{100 * table[key]:5.1f}%" in text


def _refuse_probe(*args):
    raise AssertionError("the labelled probe was computed again")


def test_a_rerun_skips_finished_stages_and_changed_settings_are_refused_until_deleted(
    recipe, caplog, monkeypatch
):
    config, first = recipe
    # The labelled probe comes with the fine-tuning stage's result: not computed again.
    monkeypatch.setattr(semi_supervised, "probe_on_labelled", _refuse_probe)
    with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.semi_supervised"):
        again = runner.run(config)
    assert again["table"] == first["table"]
    assert caplog.text.count("done before") == 4
    # The distill folder holds a finished run at temperature 1: training would find it done
    # and the table would report it as the temperature-2 student.
    changed = config.replace(distill_temperature=2.0)
    distill_dir = os.path.join(config.model_dir, "distill")
    with pytest.raises(
        semi_supervised.StageMismatchError, match="--distill_temperature: 1.0 there, 2.0 now"
    ):
        runner.run(changed)
    shutil.rmtree(distill_dir)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.semi_supervised"):
        result = runner.run(changed)
    assert caplog.text.count("done before") == 3
    assert "Stage 3/4, distill, in" in caplog.text
    assert Config.load(distill_dir).distill_temperature == 2.0
    assert (
        result["table"]["distilled"] == _stage_result(config, "distill")["metrics"]["student_top1"]
    )
    # A stage rerun under a finished later stage would leave that one stale: refused.
    shutil.rmtree(os.path.join(config.model_dir, "finetune"))
    with pytest.raises(semi_supervised.StageMismatchError, match="holds a finished distill stage"):
        runner.run(changed)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(label_fraction=None), "needs the labelled subset"),
        (dict(train_mode="finetune", checkpoint="/x"), "runs every stage itself"),
        (dict(semi_finetune_epochs=0), "semi_finetune_epochs"),
    ],
)
def test_recipe_flags_are_checked(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        _recipe(tmp_path, **changes)


# -- issue 22: the recipe checks its settings against the data before its first stage ----------


def test_a_batch_larger_than_the_labelled_subset_is_refused_before_pretraining(tmp_path):
    # 0.2% of the embedded 5,000 training images: 1 labelled image per class, 10 in all.
    config = _recipe(tmp_path / "run", label_fraction=0.002)
    with pytest.raises(ConfigError, match="--semi_finetune_batch_size=8 ") as err:
        runner.run(config)
    assert "larger than the 10 labelled examples" in str(err.value)
    assert "--train_batch_size=32" in str(err.value)  # what pretraining keeps
    assert not os.path.exists(os.path.join(config.model_dir, "pretrain"))


def test_the_fine_tuning_batch_leaves_the_pretraining_stage_as_it_was(tmp_path):
    config = _recipe(tmp_path / "run", label_fraction=0.002)
    fixed = config.replace(semi_finetune_batch_size=8)
    before, after = semi_supervised.stage_configs(config), semi_supervised.stage_configs(fixed)
    # A finished pretraining stage of the first command is the second one's too.
    assert before["pretrain"].hash() == after["pretrain"].hash()
    assert not changed_settings(before["pretrain"], after["pretrain"])
    assert after["finetune"].train_batch_size == after["supervised"].train_batch_size == 8
    assert after["distill"].train_batch_size == after["pretrain"].train_batch_size == 32
    counts = semi_supervised.check_stages_fit_data(fixed, after)
    assert sum(counts.values()) == 10 and set(counts.values()) == {1}


def test_the_labelled_subset_is_logged_per_class_before_any_stage(tmp_path, caplog):
    for split, count in (("train", 6), ("test", 2)):
        for name in ("ant", "bee", "cow"):
            os.makedirs(tmp_path / "data" / split / name)
            for i in range(count):
                Image.new("RGB", (8, 8), (40 * i, 90, 30)).save(
                    tmp_path / "data" / split / name / f"{i}.png"
                )
    ids = tmp_path / "ids.txt"
    ids.write_text("ant/0.png\nant/3.png\nant/5.png\nbee/1.png\n")
    config = _recipe(
        tmp_path / "run",
        dataset=str(tmp_path / "data"),
        label_fraction=None,
        label_ids_file=str(ids),
        train_batch_size=4,
    )
    configs = semi_supervised.stage_configs(config)
    with caplog.at_level(logging.INFO, logger="tf_simclr.workflows.semi_supervised"):
        counts = semi_supervised.check_stages_fit_data(config, configs)
    assert counts == {"ant": 3, "bee": 1, "cow": 0}
    assert "Labelled subset: 4 of the 18 training examples; per class: ant 3, bee 1, cow 0" in (
        caplog.text
    )
    assert "No labelled example of class(es) cow" in caplog.text


def test_a_stage_schedule_flag_replaces_train_steps_in_every_stage_alike(tmp_path):
    config = _recipe(tmp_path, train_steps=7, semi_finetune_epochs=3, semi_distill_epochs=2)
    stages = semi_supervised.stage_configs(config)
    assert stages["pretrain"].train_steps == 7
    for name, epochs in (("finetune", 3), ("supervised", 3), ("distill", 2)):
        assert (stages[name].train_steps, stages[name].train_epochs) == (0, epochs), name
    notes = semi_supervised.stage_notes(config, "distill", stages["distill"])
    assert "--train_steps=7 is 0 here (its schedule is --semi_distill_epochs)" in notes
    notes = semi_supervised.stage_notes(config, "finetune", stages["finetune"])
    assert "--train_steps=7 is 0 here (its schedule is --semi_finetune_epochs)" in notes
    assert any(note.startswith("--learning_rate=") for note in notes)
    notes = semi_supervised.stage_notes(config, "pretrain", stages["pretrain"])
    assert notes == [f"--label_fraction={FRACTION} is None here (pretraining uses no labels)"]
    # Without --semi_distill_epochs, distillation runs the pretraining schedule.
    distill = semi_supervised.stage_configs(config.replace(semi_distill_epochs=0))["distill"]
    assert (distill.train_steps, distill.train_epochs) == (7, config.train_epochs)


def test_a_stage_trained_on_other_data_is_neither_reused_nor_resumed(recipe, tmp_path):
    config, _ = recipe
    copy = tmp_path / "run"
    shutil.copytree(config.model_dir, copy)
    # The pretrain stage's folder as if its images had changed since (same path).
    stage_config = copy / "pretrain" / "config.json"
    values = json.loads(stage_config.read_text())
    values["data_identity"]["fingerprint"] = "0" * 16
    stage_config.write_text(json.dumps(values))
    with pytest.raises(run_data.DataMismatchError, match="reuse \\(or resume\\) that stage") as err:
        runner.run(config.replace(model_dir=str(copy)))
    assert "the data at that path changed since" in str(err.value)


def test_many_classes_are_logged_as_a_range_and_the_fewest():
    counts = {f"c{i:02d}": 10 + i % 3 for i in range(30)} | {"rare": 2}
    line = semi_supervised._per_class(counts)
    assert line.startswith("2 to 12 over 31 classes (fewest: rare 2, c00 10, c03 10")
