"""Transfer (issue 16): a model pretrained on the embedded dataset, evaluated (frozen features:
kNN, linear probe) and fine-tuned on an image folder of another task, with other classes and
images of other, mixed sizes; and the errors for a --checkpoint that is not a model, encoder
flags that contradict it, and mode combinations that make no sense."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from helpers.cli import config_from_argv
from helpers.configs import tiny_config
from helpers.numpy_refs import weighted_knn_top1
from PIL import Image

from tf_simclr import factory
from tf_simclr.config import Config, ConfigError
from tf_simclr.evaluation import visualize
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import runner, warm_start

# Another task than shapes10's 10 shapes: 3 colour classes, images larger and smaller than the
# encoder's 16 px input, not square, of mixed sizes.
COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}
SIZES = ((24, 24), (40, 30), (12, 20))
PER_CLASS = {"train": 16, "test": 8}
# The settings of tests/helpers/configs.tiny_config that are not the encoder's, as flags.
SMALL = [
    "--eval_batch_size=64",
    "--knn_k=10",
    "--linear_eval_epochs=30",
    "--seed=3",
    "--precision=float32",
    "--nosummaries",
    "--noexport",
]


@pytest.fixture(scope="module")
def other_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in PER_CLASS.items():
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                h, w = SIZES[i % len(SIZES)]
                pixels = rng.normal(colour, 45, (h, w, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:02d}.png")
    return root


def _restored_by_hand(model_dir, prefix):
    """The pretraining run's own network (its 10-class head included), its weights read
    straight from the checkpoint file by tf.train.Checkpoint."""
    model = factory.build_model(Config.load(str(model_dir)), 10)
    weights = {w.path: w for w in model.weights}
    tf.train.Checkpoint(model_weights=weights).read(str(prefix)).assert_existing_objects_matched()
    return model


def _features_by_hand(model, root, split, size):
    """final_avg_pool of every image of root/split, in the folder's sorted order, each image
    resized (bicubic, no crop at <= 32 px: the evaluation preprocessing) to size x size."""
    images, labels = [], []
    for label, name in enumerate(sorted(os.listdir(root / split))):
        for file in sorted(os.listdir(root / split / name)):
            pixels = np.asarray(Image.open(root / split / name / file).convert("RGB"))
            resized = tf.image.resize(pixels[None] / 255.0, (size, size), method="bicubic")
            images.append(tf.clip_by_value(resized, 0.0, 1.0)[0])
            labels.append(label)
    features = model(tf.stack(images), training=False)["final_avg_pool"].numpy()
    return features, np.array(labels)


def _projector_features(model_dir):
    directory = os.path.join(model_dir, visualize.PROJECTOR_DIR)
    return np.loadtxt(os.path.join(directory, visualize.PROJECTOR_FEATURES), delimiter="\t")


# ------------------------------------------------------------------------------------------
# Linear evaluation and kNN of the frozen features
# ------------------------------------------------------------------------------------------
def test_frozen_features_of_a_pretrained_model_on_another_task(
    pretrained_run, other_task, tmp_path
):
    out = tmp_path / "transfer"
    flags = [
        "--mode=eval",
        f"--checkpoint={pretrained_run}",
        f"--dataset={other_task}",
        f"--model_dir={out}",
        *SMALL,
    ]
    config = config_from_argv(*flags)
    # The encoder, and its input size, are the checkpoint run's.
    assert (config.width_multiplier, config.proj_out_dim, config.image_size) == (0.125, 16, 16)
    pretrained_result = (pretrained_run / "result.json").read_bytes()
    result = runner.run(config)

    # The results are in --model_dir, the pretrained run is left alone.
    assert (pretrained_run / "result.json").read_bytes() == pretrained_result
    assert not (pretrained_run / visualize.NEIGHBOURS_FILENAME).exists()
    saved = json.loads((out / "result.json").read_text())
    assert saved["checkpoint"] == str(pretrained_run / "ckpt-2") and saved["step"] == 2
    assert saved["image_size"] == 16 and saved["dataset"] == str(other_task)
    metrics = result["metrics"]
    assert saved["metrics"] == pytest.approx(metrics)
    # Only the frozen-feature evaluations: the pretrained head is for shapes10's classes.
    assert not any(name.startswith(("sup_head", "finetune")) for name in metrics)

    # An independent path: the pretraining run's network restored by hand, the images resized
    # by hand, the kNN in NumPy.
    model = _restored_by_hand(pretrained_run, pretrained_run / "ckpt-2")
    train_x, train_y = _features_by_hand(model, other_task, "train", 16)
    test_x, test_y = _features_by_hand(model, other_task, "test", 16)
    np.testing.assert_allclose(_projector_features(out), test_x, rtol=1e-4, atol=1e-5)
    assert metrics["knn_top1"] == pytest.approx(
        weighted_knn_top1(train_x, train_y, test_x, test_y, 10, config.knn_temperature, 3)
    )
    # A learnable task: the L2-regularised probe, its weight decay chosen on held-out training
    # images, is far above chance (1/3).
    assert metrics["linear_top1"] >= 0.75, metrics
    assert metrics["linear_weight_decay"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert {"random_init_linear_top1", "random_init_knn_top1", "linear_top1_gain"} <= set(metrics)


def test_frozen_features_at_another_input_size(pretrained_run, other_task, tmp_path):
    """--checkpoint=model_dir/ckpt-N, and --image_size=24 (not the run's 16)."""
    out = tmp_path / "at24"
    config = config_from_argv(
        f"--checkpoint={pretrained_run / 'ckpt-2'}",
        f"--model_dir={out}",
        f"--dataset={other_task}",
        "--mode=eval",
        "--image_size=24",
        "--nolinear_eval",
        "--norandom_init_baseline",
        *SMALL,
    )
    assert config.image_size == 24
    assert runner.run(config)["step"] == 2
    model = _restored_by_hand(pretrained_run, pretrained_run / "ckpt-2")
    test_x, _ = _features_by_hand(model, other_task, "test", 24)
    np.testing.assert_allclose(_projector_features(out), test_x, rtol=1e-4, atol=1e-5)


def test_the_weight_decay_is_chosen_on_held_out_training_examples():
    from tf_simclr.evaluation import evaluate

    labels = np.repeat(np.arange(3), [10, 5, 1])
    fit, held = evaluate.holdout_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([fit, held])) == list(range(16))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # a lone example stays
    # Few examples of many noisy dimensions, one of them informative: the weight decay matters.
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    x = rng.normal(size=(200, 1000)).astype(np.float32)
    x[:, 0] += 0.8 * (2 * y - 1)
    probe = dict(num_classes=2, epochs=50, batch_size=32, seed=0)
    chosen, scores = evaluate.choose_weight_decay(x, y, **probe)
    assert list(scores) == list(evaluate.WEIGHT_DECAY_CANDIDATES)
    assert scores[chosen] == max(scores.values()) and len(set(scores.values())) > 1, scores
    # Each score is a probe fit on the rest of the training examples, scored on the held-out.
    fit, held = evaluate.holdout_split(y, evaluate.HOLDOUT_FRACTION, seed=0)
    for weight_decay in (1e-6, chosen):
        alone = evaluate.linear_eval(
            x[fit], y[fit], x[held], y[held], weight_decay=weight_decay, **probe
        )
        assert alone["linear_top1"] == scores[weight_decay]


# ------------------------------------------------------------------------------------------
# Fine-tuning on the other task
# ------------------------------------------------------------------------------------------
def test_finetuning_on_another_task_starts_from_the_pretrained_encoder_and_learns(
    pretrained_run, other_task, tmp_path, monkeypatch
):
    config = config_from_argv(
        "--train_mode=finetune",
        f"--checkpoint={pretrained_run}",
        f"--dataset={other_task}",
        f"--model_dir={tmp_path / 'ft'}",
        "--mode=train_then_eval",
        "--train_steps=24",
        "--train_batch_size=16",
        "--steps_per_loop=8",
        "--checkpoint_steps=24",
        "--warmup_epochs=0",
        *SMALL,
    )
    assert config.image_size == 16  # the pretraining run's
    started_from = {}
    restore = warm_start.restore_initial_weights

    def recording(config, model):
        restore(config, model)
        started_from.update({w.path: w.numpy() for w in model.weights})

    monkeypatch.setattr(warm_start, "restore_initial_weights", recording)
    result = runner.run(config)

    pre = tf.train.load_checkpoint(str(pretrained_run / "ckpt-2"))
    network = [p for p in started_from if "head_supervised" not in p]
    assert len(network) > 100
    for path in network:
        stored = pre.get_tensor(ckpt_lib.checkpoint_key(path))
        np.testing.assert_array_equal(started_from[path], stored, err_msg=path)
    # A head for the 3 colours (the pretrained one has 10), and the encoder trained.
    fine = tf.train.load_checkpoint(str(tmp_path / "ft" / "ckpt-24"))
    head = fine.get_tensor(ckpt_lib.checkpoint_key("simclr/head_supervised/kernel"))
    assert head.shape[-1] == 3
    kernel = "initial_conv/conv/conv2d/kernel"
    assert kernel in network
    assert not np.array_equal(
        fine.get_tensor(ckpt_lib.checkpoint_key(kernel)),
        pre.get_tensor(ckpt_lib.checkpoint_key(kernel)),
    )
    assert result["metrics"]["finetune_top1"] >= 0.75, result["metrics"]


def test_a_head_trained_on_another_dataset_starts_afresh(pretrained_run, tmp_path):
    """Fine-tuning: the pretrained head (10 shapes10 classes) is copied for shapes10, not for
    another dataset of 10 classes (another label space)."""
    stored = tf.train.load_checkpoint(str(pretrained_run / "ckpt-2")).get_tensor(
        ckpt_lib.checkpoint_key("simclr/head_supervised/kernel")
    )
    ten_other_classes = tmp_path / "ten_other_classes"
    for split in ("train", "test"):
        for c in range(10):
            (ten_other_classes / split / f"class{c}").mkdir(parents=True)
            Image.new("RGB", (16, 16), (20 * c, 80, 160)).save(
                ten_other_classes / split / f"class{c}" / "0.png"
            )
    for dataset, copied in (("embedded", True), (str(ten_other_classes), False)):
        config = tiny_config(
            tmp_path / "ft", train_mode="finetune", checkpoint=str(pretrained_run), dataset=dataset
        )
        model = factory.build_model(config, 10)
        warm_start.restore_initial_weights(config, model)
        (kernel,) = [w for w in model.weights if w.path == "simclr/head_supervised/kernel"]
        assert np.array_equal(kernel.numpy(), stored) == copied, dataset


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def _not_a_model(kind, other_task, tmp_path) -> tuple[str, str]:
    """(a --checkpoint that is not a model, the error it gets)."""
    if kind == "missing":
        return str(tmp_path / "nowhere" / "ckpt-3"), r"is not a checkpoint \(no .*ckpt-3\.index\)"
    if kind == "image_folder":
        return str(other_task), r"is a directory without ckpt-\* files or a saved_model.pb: not a"
    if kind == "image_file":
        return str(other_task / "train" / "red" / "00.png"), r"is a file, not a model"
    if kind == "exports_only":
        (tmp_path / "exported" / "saved_model" / "7").mkdir(parents=True)
        return str(tmp_path / "exported"), r"only exports: give one of them, e.g. .*saved_model/7"
    assert kind == "foreign_checkpoint"
    path = tf.train.Checkpoint(step=tf.Variable(1)).write(str(tmp_path / "other" / "ckpt-1"))
    return path, r"holds none of this model's weights: it is not a tf_simclr training checkpoint"


@pytest.mark.parametrize(
    "kind", ["missing", "image_folder", "image_file", "exports_only", "foreign_checkpoint"]
)
def test_a_checkpoint_that_is_not_a_model_is_named(kind, other_task, tmp_path):
    checkpoint, message = _not_a_model(kind, other_task, tmp_path)
    common = dict(checkpoint=checkpoint, dataset=str(other_task), train_batch_size=16)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        runner.run(tiny_config(tmp_path / "eval", mode="eval", **common))
    assert not (tmp_path / "eval" / "result.json").exists()
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        runner.run(tiny_config(tmp_path / "ft", mode="train", train_mode="finetune", **common))
    assert not list((tmp_path / "ft").glob("ckpt-*"))


def test_encoder_flags_that_contradict_the_checkpoint(pretrained_run, other_task, tmp_path):
    common = [
        f"--checkpoint={pretrained_run}",
        f"--dataset={other_task}",
        f"--model_dir={tmp_path}",
    ]
    for mode in (["--mode=eval"], ["--train_mode=finetune"]):
        with pytest.raises(
            ConfigError, match=r"--width_multiplier=0.25 \(the checkpoint's run has 0.125\)"
        ):
            config_from_argv(*mode, *common, "--width_multiplier=0.25")
        with pytest.raises(
            ConfigError, match=r"--image_size=64 \(the checkpoint's run has 16, the CIFAR stem"
        ):
            config_from_argv(*mode, *common, "--image_size=64")
        assert (
            config_from_argv(
                *mode, *common, "--width_multiplier=0.125", "--image_size=32"
            ).image_size
            == 32
        )
    # Without the run's config.json, the weights themselves tell.
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in pretrained_run.glob("ckpt-2.*"):
        (bare / file.name).write_bytes(file.read_bytes())
    config = tiny_config(
        tmp_path / "out", mode="eval", checkpoint=str(bare), dataset=str(other_task)
    )
    with pytest.raises(ValueError, match=r"with shape .* trained with another architecture"):
        runner.run(config.replace(width_multiplier=0.25))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(mode="train"), r"--checkpoint only applies to .*; --mode=train pretrains, resum"),
        (dict(mode="train_then_eval"), r"--mode=train_then_eval pretrains.* or use --mode=eval"),
        (dict(mode="export"), r"--mode=export exports the newest checkpoint in --model_dir"),
        (dict(mode="preview"), r"--mode=preview uses no model"),
        (dict(mode="eval", eval_timeout=60), r"--eval_timeout waits for new checkpoints"),
    ],
)
def test_mode_combinations_that_make_no_sense(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(checkpoint="/runs/pretrained", **changes)


def test_eval_with_checkpoint_and_finetune_or_into_a_run_is_refused(
    pretrained_run, other_task, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained_run, run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    # Nothing fine-tuned to evaluate in a new --model_dir.
    config = config_from_argv(
        "--mode=eval",
        "--train_mode=finetune",
        f"--checkpoint={run_dir}",
        f"--dataset={other_task}",
        f"--model_dir={tmp_path / 'new'}",
    )
    with pytest.raises(
        ConfigError, match=r"and it has none\. To evaluate the frozen features .* drop"
    ):
        runner.run(config)
    # Results of another dataset are not written into a run's model_dir (here its own).
    config = config_from_argv("--mode=eval", f"--checkpoint={run_dir}", f"--model_dir={run_dir}")
    with pytest.raises(ConfigError, match=r"holds a run \(config.json and ckpt-\* files\)"):
        runner.run(config)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    # Without --checkpoint, --mode=eval evaluates the run in --model_dir, as before.
    config = config_from_argv(
        "--mode=eval", f"--model_dir={run_dir}", "--noknn_eval", "--nolinear_eval"
    )
    assert not config.evaluates_checkpoint()
    result = runner.run(config)
    assert result["checkpoint"] == str(run_dir / "ckpt-2") and "sup_head_top1" in result["metrics"]
