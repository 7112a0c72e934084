"""Learning from unlabelled images: --unlabelled pretraining on a folder without class folders
(trains, checkpoints, exports, resumes; its data identity refuses other images), the results
table that says nothing could be evaluated, and --eval_dataset, the labelled data the kNN and
linear probe use instead (its kNN equals the transfer evaluation of the same checkpoint on that
folder; a run recorded with one refuses another)."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from helpers.cli import config_from_argv
from helpers.configs import tiny_config
from helpers.logs import log_messages
from PIL import Image

from tf_simclr.config import Config, ConfigError
from tf_simclr.data.identity import data_identity
from tf_simclr.evaluation import visualize
from tf_simclr.training import history as history_lib
from tf_simclr.workflows import run_data, runner
from tf_simclr.workflows.report import format_report

COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}
# Small enough for seconds: batch 8 of 16 px views, a 12-image evaluation batch, k = 4.
SMALL = dict(train_batch_size=8, eval_batch_size=12, eval_steps=0, knn_k=4, linear_eval_epochs=3)
# The same evaluation settings as flags, for the command-line paths.
SMALL_FLAGS = [
    "--eval_batch_size=12",
    "--eval_steps=0",
    "--knn_k=4",
    "--linear_eval_epochs=3",
    "--seed=3",
    "--precision=float32",
    "--nosummaries",
    "--noexport",
]
NUM_UNLABELLED = 40
DIRECT = 24  # of them directly in the folder, the others in trip/


# The labelled evaluation classes: greys a little apart under strong noise, so that neither
# the kNN nor the probe is perfect and equal accuracies mean equal features.
GREYS = ((110, 110, 110), (130, 120, 110), (110, 120, 130))


def _labelled(root, names=tuple(COLOURS), seed=0):
    """root/{train,test}/<class>/*.png: 8 and 6 noisy grey images of 16 px per class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", 8), ("test", 6)):
        for colour, name in zip(GREYS, names, strict=True):
            os.makedirs(root / split / name)
            for i in range(count):
                pixels = rng.normal(colour, 60, (16, 16, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:02d}.png")
    return root


def _projector_features(model_dir):
    directory = os.path.join(model_dir, visualize.PROJECTOR_DIR)
    return np.loadtxt(os.path.join(directory, visualize.PROJECTOR_FEATURES), delimiter="\t")


def _unlabelled(root):
    """NUM_UNLABELLED colour images of 16-24 px, no class folders: DIRECT PNGs at the top,
    the rest JPEGs in trip/."""
    rng = np.random.default_rng(1)
    colours = list(COLOURS.values())
    os.makedirs(root / "trip")
    for i in range(NUM_UNLABELLED):
        size = 16 + 4 * (i % 3)
        pixels = rng.normal(colours[i % 3], 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
        if i < DIRECT:
            Image.fromarray(pixels).save(root / f"{i:02d}.png")
        else:
            Image.fromarray(pixels).save(root / "trip" / f"{i:02d}.jpg", quality=95)
    return root


def _ckpts(model_dir) -> list[int]:
    names = os.listdir(model_dir)
    return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"ckpt-(\d+)\.index", n)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled_data")
    return {
        "root": root,
        "unlabelled": _unlabelled(root / "photos"),
        "labelled": _labelled(root / "colours"),
        "renamed": _labelled(root / "renamed", ("cat", "dog", "fox"), seed=2),
    }


@pytest.fixture(scope="module")
def pretrained(data):
    """--unlabelled --mode=train on data["unlabelled"] for 4 steps, with its export; the
    result, its config and what it logged."""
    config = tiny_config(
        data["root"] / "run",
        mode="train",
        dataset=str(data["unlabelled"]),
        unlabelled=True,
        train_steps=4,
        export=True,
        projector_embeddings=1000,  # the eval tests compare the projector's features
        **SMALL,
    )
    with log_messages() as messages:
        result = runner.run(config)
    return {"dir": data["root"] / "run", "result": result, "config": config, "log": messages}


def test_pretraining_on_unlabelled_images_trains_checkpoints_exports_and_says_why_no_results(
    pretrained, data
):
    result, model_dir = pretrained["result"], pretrained["dir"]
    assert result["step"] == result["total_steps"] == 4 and _ckpts(model_dir) == [2, 4]
    assert result["export_path"] == str(model_dir / "saved_model" / "4")
    assert os.path.isfile(os.path.join(result["export_path"], "saved_model.pb"))
    assert "metrics" not in result
    saved = Config.load(str(model_dir))
    assert saved.unlabelled and not saved.lineareval_while_pretraining
    identity = saved.data_identity
    assert identity == data_identity(str(data["unlabelled"]), None, "train", unlabelled=True)
    assert (identity["num_examples"], identity["class_names"]) == (NUM_UNLABELLED, [])
    # One history record per loop of 2 steps, none with a supervised-head metric.
    records = history_lib.read_history(str(model_dir))
    assert [r["step"] for r in records] == [2, 4]
    assert not [k for r in records for k in r if k.startswith("sup")]

    assert (
        f"Reading {data['unlabelled']} as unlabelled images: {NUM_UNLABELLED} images in 1 "
        f"sub-folder(s) and {DIRECT} directly in it; labels (class folders) ignored."
    ) in pretrained["log"]
    assert any("online linear head is not trained" in m for m in pretrained["log"])
    report = format_report(result, pretrained["config"])
    assert "Nothing could be evaluated: the training data has no labels (--unlabelled)" in report
    assert "--eval_dataset=<labelled data> adds the evaluation" in report


def test_a_rerun_resumes_and_other_images_are_refused(pretrained, data, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pretrained["dir"], copy)
    config = Config.load(str(copy)).replace(
        model_dir=str(copy), mode="train", train_steps=6, export=False
    )
    result = runner.run(config)
    assert result["step"] == 6 and _ckpts(copy) == [2, 4, 6]
    assert [r["step"] for r in history_lib.read_history(str(copy))] == [2, 4, 6]

    other = tmp_path / "more_photos"
    shutil.copytree(data["unlabelled"], other)
    shutil.copy(other / "00.png", other / "trip" / "copy.png")
    with pytest.raises(run_data.DataMismatchError, match="Resuming would go on training"):
        runner.run(config.replace(dataset=str(other), train_steps=8))
    assert _ckpts(copy) == [2, 4, 6]


def test_eval_dataset_scores_the_run_as_the_transfer_evaluation_does(pretrained, data, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pretrained["dir"], copy)
    labelled = str(data["labelled"])
    config = config_from_argv(
        "--mode=eval",
        f"--model_dir={copy}",
        f"--eval_dataset={labelled}",
        "--norandom_init_baseline",
    )
    assert config.unlabelled and config.knn_k == 4  # the run's settings
    result = runner.run(config)
    metrics = result["metrics"]
    assert set(metrics) >= {"knn_top1", "linear_top1"} and "sup_head_top1" not in metrics
    saved = json.loads((copy / "result.json").read_text())
    assert saved["eval_dataset"] == labelled and saved["step"] == 4
    assert f"Results on split 'test' of {labelled}:" in format_report(result, config)

    # A second code path: the frozen features of the same checkpoint, with the labelled folder
    # as --dataset.
    transfer = config_from_argv(
        "--mode=eval",
        f"--checkpoint={copy}",
        f"--model_dir={tmp_path / 'transfer'}",
        f"--dataset={labelled}",
        "--norandom_init_baseline",
        *SMALL_FLAGS,
    )
    transferred = runner.run(transfer)["metrics"]
    assert transferred["knn_top1"] == metrics["knn_top1"]
    # The same test-split features (the projector's file), hence the same kNN.
    features = _projector_features(copy)
    assert features.shape[0] == 18
    np.testing.assert_allclose(features, _projector_features(tmp_path / "transfer"), atol=1e-5)


def test_train_then_eval_on_an_eval_dataset_records_it_and_refuses_another(data, tmp_path):
    model_dir = tmp_path / "run"
    labelled = str(data["labelled"])
    config = tiny_config(
        model_dir,
        mode="train_then_eval",
        dataset=str(data["unlabelled"]),
        unlabelled=True,
        eval_dataset=labelled,
        train_steps=2,
        random_init_baseline=True,
        **SMALL,
    )
    result = runner.run(config)
    metrics = result["metrics"]
    assert metrics["knn_top1_gain"] == pytest.approx(
        metrics["knn_top1"] - metrics["random_init_knn_top1"]
    )
    assert "linear_top1" in metrics and "sup_head_top1" not in metrics
    recorded = Config.load(str(model_dir)).data_identity["eval_dataset"]
    assert recorded == data_identity(labelled, None, "train")

    # --mode=eval of the run reads the same labelled data (from its config.json). (Only its
    # kNN is compared: the evaluations and pictures it does not need are left out.)
    again = config_from_argv(
        "--mode=eval",
        f"--model_dir={model_dir}",
        "--nolinear_eval",
        "--norandom_init_baseline",
        "--neighbour_images=0",
        "--projector_embeddings=0",
    )
    assert again.eval_dataset == labelled
    assert runner.run(again)["metrics"]["knn_top1"] == metrics["knn_top1"]

    before = (model_dir / "result.json").read_bytes()
    other = config_from_argv(
        "--mode=eval", f"--model_dir={model_dir}", f"--eval_dataset={data['renamed']}"
    )
    with pytest.raises(run_data.DataMismatchError, match=r"evaluated on the labelled data"):
        runner.run(other)
    assert (model_dir / "result.json").read_bytes() == before
    # Resuming with another evaluation dataset too, before any step.
    resume = config.replace(mode="train", train_steps=4, eval_dataset=str(data["renamed"]))
    with pytest.raises(run_data.DataMismatchError, match=r"Resuming it would report"):
        runner.run(resume)
    assert _ckpts(model_dir) == [2]


def test_a_run_is_not_resumed_with_the_other_reading_of_its_data(pretrained, pretrained_copy):
    labelled = Config.load(str(pretrained_copy)).replace(
        model_dir=str(pretrained_copy), mode="train", unlabelled=True
    )
    with pytest.raises(
        ConfigError, match=r"trained with labels \(--unlabelled=False\).*new --model_dir"
    ):
        runner.run(labelled)
    run_dir = pretrained["dir"]
    unlabelled = Config.load(str(run_dir)).replace(model_dir=str(run_dir), unlabelled=False)
    with pytest.raises(ConfigError, match=r"trained without labels.*--unlabelled=true"):
        runner.run(unlabelled.replace(mode="export"))
    assert _ckpts(pretrained_copy) == [2] and _ckpts(run_dir) == [2, 4]
