"""SimCLRv2 distillation (--train_mode=distill): the loss against NumPy, the labelled subset, the
teacher (model_dir, checkpoint or export; frozen; another depth than the student), resume after
a kill, and the errors for a teacher or student that cannot work."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from helpers.configs import tiny_config
from helpers.interrupted import run_until_saved
from helpers.rel_proc import (
    checkpoint_numbers,
    kill_group,
    metrics_records,
    read_text,
    resumed_steps,
    start,
    tiny_flags,
    wait_for,
)
from helpers.runs import untrained_run
from PIL import Image

from tf_simclr import data as data_lib
from tf_simclr import factory
from tf_simclr.config import Config, ConfigError
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.objectives import distillation
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import distill, runner


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_objective(student, teacher, labels, temperature, alpha):
    """SimCLRv2 Eq. 3 with alpha on the supervised term, written out in float64."""
    s, t = student.astype(np.float64), teacher.astype(np.float64)
    targets = np.exp(_np_log_softmax(t / temperature))
    distill_term = -(targets * _np_log_softmax(s / temperature)).sum(axis=-1).mean()
    labelled = labels >= 0
    ce = -_np_log_softmax(s)[np.arange(len(s)), np.maximum(labels, 0)]
    sup = ce[labelled].mean() if labelled.any() else 0.0
    return (1 - alpha) * distill_term, alpha * sup


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_soft_targets_sum_to_one_and_the_loss_matches_numpy(temperature):
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(7, 5)).astype(np.float32) * 3
    student = rng.normal(size=(7, 5)).astype(np.float32)
    targets = distillation.soft_targets(teacher, temperature).numpy()
    np.testing.assert_allclose(targets.sum(axis=-1), 1.0, rtol=1e-6)
    # A higher temperature flattens the targets.
    assert np.all(targets.max(axis=-1) <= distillation.soft_targets(teacher, 0.25).numpy().max(-1))
    want = -(
        np.exp(_np_log_softmax(teacher / temperature)) * _np_log_softmax(student / temperature)
    )
    got = distillation.distillation_loss(teacher, student, temperature).numpy()
    np.testing.assert_allclose(got, want.sum(axis=-1), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9])
def test_distillation_terms_match_numpy_with_unlabelled_images(alpha):
    rng = np.random.default_rng(1)
    student = rng.normal(size=(9, 4)).astype(np.float32)
    teacher = rng.normal(size=(9, 4)).astype(np.float32)
    labels = np.array([2, -1, 0, -1, -1, 3, 1, -1, -1], np.int32)
    shares, rates = distillation.distillation_terms(
        student, teacher, labels, temperature=2.0, alpha=alpha
    )
    want_distill, want_sup = _np_objective(student, teacher, labels, 2.0, alpha)
    assert float(shares["distill_loss"]) == pytest.approx(want_distill, rel=1e-5)
    if alpha:
        assert float(shares["sup_loss"]) == pytest.approx(want_sup, rel=1e-5)
    else:
        assert "sup_loss" not in shares
    agree = np.mean(student.argmax(-1) == teacher.argmax(-1))
    assert float(rates["teacher_agreement"]) == pytest.approx(agree)


def test_gradient_reaches_the_student_only_and_no_labels_means_no_supervised_term():
    student = tf.Variable(np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32))
    teacher = tf.Variable(np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        shares, _ = distillation.distillation_terms(
            student, teacher, -np.ones(4, np.int32), temperature=1.0, alpha=0.5
        )
        total = shares["distill_loss"] + shares["sup_loss"]
    assert float(shares["sup_loss"]) == 0.0
    assert tape.gradient(total, teacher) is None
    grad = tape.gradient(total, student).numpy()
    # d/ds of 0.5 * mean CE(softmax(t), softmax(s)) = 0.5 * (softmax(s) - softmax(t)) / B.
    want = 0.5 * (
        np.exp(_np_log_softmax(student.numpy())) - np.exp(_np_log_softmax(teacher.numpy()))
    )
    np.testing.assert_allclose(grad, want / 4, rtol=1e-5, atol=1e-7)


def test_student_objective_is_the_distillation_formula_plus_the_head_l2(tmp_path):
    config = tiny_config(
        tmp_path, train_mode="distill", teacher="x", distill_alpha=0.4, distill_temperature=2.0
    )
    model = factory.build_model(config, 10)
    images = tf.random.stateless_uniform([6, 16, 16, 3], seed=[1, 2])
    teacher = np.random.default_rng(4).normal(size=(6, 10)).astype(np.float32)
    labels = np.array([1, -1, 4, -1, 9, -1], np.int32)
    objective = model.compute_objective(
        {"image": images, "label": labels, "teacher_logits": teacher}, training=False
    )
    student = model(images, training=False)["logits_sup"].numpy()
    want_distill, want_sup = _np_objective(student, teacher, labels, 2.0, 0.4)
    kernel = model.supervised_head.kernel.numpy().astype(np.float64)
    l2 = config.weight_decay * 0.5 * (kernel**2).sum()  # LARS: the head's L2 term in the loss
    assert float(objective.shares["distill_loss"]) == pytest.approx(want_distill, rel=1e-5)
    assert float(objective.shares["sup_loss"]) == pytest.approx(want_sup, rel=1e-5)
    assert float(objective.total) == pytest.approx(want_distill + want_sup + l2, rel=1e-5)
    assert model.objective_metric_names() == (
        ["loss", "distill_loss", "sup_loss", "weight_decay_loss"],
        ["teacher_agreement"],
    )
    with pytest.raises(ValueError, match="teacher_logits"):
        model.compute_objective({"image": images, "label": labels})


def test_distill_dataset_keeps_the_labels_of_the_fine_tuning_subset_only():
    kw = dict(split="train", label_fraction=0.1, label_ids_file=None, seed=3)
    positions = data_lib.labelled_subset_indices("embedded", None, kw["split"], 0.1, None, 3)
    _, info = data_lib.load_source("embedded", split="train")
    # In stored order (no training shuffle): exactly the subset keeps its labels.
    ds, _ = data_lib.build_dataset(
        "embedded",
        training=False,
        split="train",
        batch_size=1000,
        image_size=16,
        labelled_ids=lambda: data_lib.labels.labelled_subset_ids(
            "embedded", None, "train", 0.1, None, 3, False
        ),
    )
    got = np.concatenate([b["label"].numpy() for b in ds])
    raw = data_lib.labels._open_raw("embedded", None, "train", False, None)
    full, _ = data_lib.LabelCache().labels_and_ids(raw, ("embedded", None, "train"))
    assert len(got) == info.num_examples["train"] == 5000
    np.testing.assert_array_equal(np.flatnonzero(got >= 0), positions)
    np.testing.assert_array_equal(got[positions], full[positions])
    assert len(positions) == 500
    # The training pipeline streams every image, about a tenth of them labelled.
    train, _ = data_lib.build_distill_dataset(
        "embedded",
        batch_size=250,
        image_size=16,
        **{k: kw[k] for k in ("split", "seed")},
        label_fraction=0.1,
    )
    labels = np.concatenate([b["label"].numpy() for b in train.take(4)])
    assert 0.04 < np.mean(labels >= 0) < 0.2 and set(labels[labels >= 0]) <= set(range(10))


# -- end to end ----------------------------------------------------------------------------------


def _restored_teacher_model(teacher_run):
    config = Config.load(str(teacher_run))
    model = factory.build_model(config, 10)
    prefix = ckpt_lib.latest_valid_checkpoint(str(teacher_run))
    ckpt_lib.training_checkpoint(model).restore(prefix).expect_partial()
    return model, prefix


def test_distil_into_a_deeper_student_keeps_the_teacher_frozen_and_resumes_after_dying(
    finetuned_run, tmp_path, monkeypatch, caplog
):
    """A ResNet-34 student of the ResNet-18 teacher, in one 4-step run that dies right after
    saving ckpt-2 (an exception out of the save: nothing else runs, as with a kill; the
    in-process version of the SIGKILL test below) and is rerun: it resumes from ckpt-2 with
    its teacher and finishes, one record per logged step, none repeated; every teacher it
    loaded is the checkpoint's, unchanged by the steps; result.json scores the teacher as a
    second path does. (One run checks both: each run traces the deeper student anew.)"""
    teacher_run = finetuned_run
    loaded = []
    real_load = distill.load_teacher

    def recording_load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(distill, "load_teacher", recording_load)
    model_dir = str(tmp_path / "student")
    config = tiny_config(
        model_dir,
        train_mode="distill",
        teacher=str(teacher_run),
        resnet_depth=34,
        label_fraction=0.1,
        distill_alpha=0.5,
        distill_temperature=2.0,
    )
    run_until_saved(monkeypatch, config, step=2)
    assert checkpoint_numbers(model_dir) == [2]
    with caplog.at_level(logging.INFO):
        result = runner.run(config)
    assert result["step"] == 4
    assert resumed_steps(caplog.text) == [2]
    assert 4 in checkpoint_numbers(model_dir)
    history = metrics_records(model_dir)
    assert [r["step"] for r in history] == [2, 4]
    assert all(r["distill_loss"] > 0 and "teacher_agreement" in r for r in history)
    # The teachers used in training (one per run, then the evaluation's) are the checkpoint's.
    model, prefix = _restored_teacher_model(teacher_run)
    values = ckpt_lib.read_model_weights(prefix, [w.path for w in model.weights])
    assert len(loaded) >= 2
    for teacher in loaded:
        assert len(teacher.variables) == len(model.weights) > 50
        for variable in teacher.variables:
            np.testing.assert_array_equal(variable.numpy(), values[variable.path], variable.path)
    # The student is a ResNet-34 (16 residual blocks; the teacher a ResNet-18's 8).
    student_paths = ckpt_lib.stored_model_weight_paths(ckpt_lib.latest_valid_checkpoint(model_dir))
    assert any("block_group3" in p and "block_5" in p for p in student_paths)
    assert not any("block_5" in p for p in ckpt_lib.stored_model_weight_paths(prefix))
    # result.json: the teacher's accuracy on the same split, as a second path computes it.
    metrics = result["metrics"]
    want = eval_lib.classification_accuracy(model, factory.eval_dataset(config, "test"))
    assert metrics["teacher_top1"] == pytest.approx(want["top1"])
    assert 0.0 <= metrics["student_top1"] <= 1.0


def test_an_exported_teacher_gives_the_checkpoint_teachers_logits(finetuned_run):
    export_base = finetuned_run / "saved_model"
    export = export_base / os.listdir(export_base)[0]
    from_export = distill.load_teacher(str(export), image_size=16)
    from_run = distill.load_teacher(str(finetuned_run), image_size=16)
    images = tf.random.stateless_uniform([5, 16, 16, 3], seed=[7, 8])
    assert from_export.num_classes == from_run.num_classes == 10
    np.testing.assert_allclose(
        from_export.logits(images).numpy(), from_run.logits(images).numpy(), atol=1e-4
    )
    # Inference mode: the same images give the same logits (no batch statistics).
    np.testing.assert_array_equal(from_run.logits(images), from_run.logits(images))


@pytest.mark.slow
def test_distillation_resumes_after_a_kill(finetuned_run, tmp_path):
    model_dir = str(tmp_path / "student")
    flags = tiny_flags(model_dir, 6, "--train_mode=distill", f"--teacher={finetuned_run}")
    logs = [str(tmp_path / "first.log"), str(tmp_path / "second.log")]
    proc = start(flags, logs[0])
    try:
        wait_for(lambda: checkpoint_numbers(model_dir), proc, logs[0], 300, "a checkpoint")
        kill_group(proc, signal.SIGKILL)
        killed_at = max(checkpoint_numbers(model_dir))
        assert killed_at < 6
        proc = start(flags, logs[1])
        assert proc.wait(timeout=300) == 0, read_text(logs[1])[-3000:]
    finally:
        kill_group(proc)
    assert resumed_steps(read_text(logs[1])) == [killed_at]
    steps = [r["step"] for r in metrics_records(model_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert 6 in checkpoint_numbers(model_dir)


# -- bad input -----------------------------------------------------------------------------------


def _folder(root, classes=3, size=20):
    for split in ("train", "test"):
        for c in range(classes):
            os.makedirs(root / split / f"class{c}", exist_ok=True)
            for i in range(8):
                value = np.full((size, size, 3), 40 * c + i, np.uint8)
                Image.fromarray(value).save(root / split / f"class{c}" / f"{i}.png")
    return str(root)


def _no_training_happened(model_dir):
    return not os.path.isdir(model_dir) or not checkpoint_numbers(str(model_dir))


def test_a_teacher_of_other_classes_is_refused_before_training(pretrained_run, tmp_path):
    # A fine-tuning run on a 3-class folder, as it lays out config.json and its checkpoint
    # (untrained: only its head's classes matter here).
    other = tiny_config(
        tmp_path / "teacher3",
        mode="train",
        train_mode="finetune",
        checkpoint=str(pretrained_run),
        dataset=_folder(tmp_path / "three"),
        train_batch_size=8,
        train_steps=2,
    )
    untrained_run(other, num_classes=3)
    config = tiny_config(tmp_path / "s", train_mode="distill", teacher=other.model_dir)
    with pytest.raises(distill.TeacherError, match="predicts 3 classes but embedded has 10"):
        runner.run(config)
    assert _no_training_happened(tmp_path / "s")


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "file", "no_head", "not_tf_simclr"])
def test_a_teacher_that_is_not_a_model_is_named(tmp_path, kind):
    path = tmp_path / kind
    if kind == "empty_dir":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    elif kind == "no_head":  # a pretraining run without the linear head (untrained)
        untrained_run(
            tiny_config(path, mode="train", train_steps=1, lineareval_while_pretraining=False),
            num_classes=10,
        )
    elif kind == "not_tf_simclr":
        path.mkdir()
        tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(path / "ckpt"))
    match = "no supervised head" if kind == "no_head" else "is not a model"
    config = tiny_config(tmp_path / "s", train_mode="distill", teacher=str(path))
    with pytest.raises(distill.TeacherError, match=match):
        runner.run(config)
    assert _no_training_happened(tmp_path / "s")


def test_a_student_that_cannot_be_built_is_named(pretrained_run, finetuned_run, tmp_path):
    config = tiny_config(
        tmp_path / "s",
        train_mode="distill",
        teacher=str(finetuned_run),
        proj_head_mode="none",
        ft_proj_selector=1,
    )
    with pytest.raises(ValueError, match=r"The student \(--resnet_depth=18 .*ft_proj_selector=1"):
        runner.run(config)
    assert _no_training_happened(tmp_path / "s")
    # A student warm-started from a checkpoint of another architecture: named, nothing trained.
    wider = tiny_config(
        tmp_path / "w",
        train_mode="distill",
        teacher=str(finetuned_run),
        checkpoint=str(pretrained_run),
        width_multiplier=0.25,
    )
    with pytest.raises(ValueError, match="another architecture"):
        runner.run(wider)
    assert _no_training_happened(tmp_path / "w")


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(train_mode="distill"), "needs --teacher"),
        (dict(teacher="/x"), "only applies to --train_mode=distill"),
        (dict(train_mode="distill", teacher="/x", distill_alpha=1.5), "distill_alpha"),
        (dict(train_mode="distill", teacher="/x", distill_alpha=1.0), "ignores the teacher"),
        (dict(train_mode="distill", teacher="/x", distill_temperature=0.0), "temperature"),
        (dict(random_init=True), "needs --train_mode=finetune"),
        (dict(train_mode="finetune", random_init=True, checkpoint="/x"), "no --checkpoint"),
    ],
)
def test_distillation_flags_are_checked(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(tmp_path, **changes)


@pytest.mark.slow
@pytest.mark.parametrize("teacher_kind", ["run", "export"])
def test_distillation_under_mirrored_matches_one_device(finetuned_run, tmp_path, teacher_kind):
    """MirroredStrategy over 2 logical CPUs (subprocesses: logical devices must be set before
    TensorFlow starts) distils from a checkpoint or an exported teacher with the per-step losses
    of one device. (A SavedModel loaded under the strategy's scope cannot be called from its
    replicas; load_teacher loads exports outside it.)"""
    teacher = finetuned_run
    if teacher_kind == "export":
        teacher = teacher / "saved_model" / os.listdir(teacher / "saved_model")[0]
    flags = ["--train_mode=distill", f"--teacher={teacher}", "--precision=float32"]
    runs = {}
    for name, extra in [("one", []), ("mirrored", ["--strategy=mirrored", "--num_cpu_devices=2"])]:
        model_dir = str(tmp_path / name)
        proc = start(tiny_flags(model_dir, 4, *flags, *extra), str(tmp_path / f"{name}.log"))
        try:
            assert proc.wait(timeout=600) == 0, read_text(str(tmp_path / f"{name}.log"))[-3000:]
        finally:
            kill_group(proc)
        runs[name] = metrics_records(model_dir)
    assert [r["step"] for r in runs["one"]] == [r["step"] for r in runs["mirrored"]] == [1, 2, 3, 4]
    for one, mirrored in zip(runs["one"], runs["mirrored"], strict=True):
        assert mirrored["distill_loss"] == pytest.approx(one["distill_loss"], rel=1e-4)
        assert mirrored["teacher_agreement"] == pytest.approx(one["teacher_agreement"], abs=1e-6)
