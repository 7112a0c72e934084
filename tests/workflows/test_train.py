"""End-to-end training on the embedded dataset: pretrain, evaluate, resume, fine-tune, faults."""

import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.configs import tiny_config
from PIL import Image

from tf_simclr import factory
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.objectives.loss import labelled_cross_entropy
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import runner, train


def _history_steps(model_dir):
    return [r["step"] for r in train.read_history(str(model_dir))]


def test_pretrain_evaluates_writes_results_and_resumes(tmp_path, caplog, monkeypatch):
    """A 4-step pretraining run and its evaluation (the random-init baseline, the pictures, the
    projector, summaries), then a longer rerun that resumes with the optimizer state intact and
    a checkpoint that holds every weight and optimizer variable. (One run checks them all:
    each run traces the network anew.)"""
    from tf_simclr.data import labels as labels_lib

    # The trained model's and the random-init baseline's kNN and probe run over the same
    # class-stratified --eval_steps subsets: choosing them reads each split's labels once (a
    # pass over a TFDS split's records), not once per pipeline.
    reads = []
    read = labels_lib._read_labels_and_ids

    def counted(raw):
        labels, ids = read(raw)
        reads.append(len(labels))
        return labels, ids

    monkeypatch.setattr(labels_lib, "_read_labels_and_ids", counted)
    # Each model's evaluation builds each split's pipeline once: the supervised head's accuracy
    # comes from the features' pass over the test split.
    builds = []
    build = factory.data_lib.build_eval_dataset

    def counted_build(*args, **kwargs):
        builds.append(kwargs["split"])
        return build(*args, **kwargs)

    monkeypatch.setattr(factory.data_lib, "build_eval_dataset", counted_build)
    config = tiny_config(
        tmp_path,
        summaries=True,
        neighbour_images=3,
        projector_embeddings=200,
        random_init_baseline=True,
    )
    with caplog.at_level(logging.INFO):
        result = runner.run(config)
    assert result["step"] == 4
    # One read of the train split and one of the test split (the embedded set: 5,000 / 1,000);
    # pretraining itself reads no labels.
    assert sorted(reads) == [1000, 5000]
    # The trained model and the random-init baseline, once each.
    assert sorted(builds) == ["test", "test", "train", "train"]
    assert (
        "knn_top1" not in caplog.text
    )  # the metrics are printed once, by tf_simclr.workflows.report
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["config_hash"] == config.hash()
    metrics = saved["metrics"]
    for key in ("knn_top1", "linear_top1", "sup_head_top1", "random_init_knn_top1"):
        assert 0.0 <= metrics[key] <= 1.0
    # The head's accuracy, by a second path: the checkpoint's model on its own pipeline.
    model = factory.build_model(config, 10)
    ckpt_lib.training_checkpoint(model).restore(str(tmp_path / "ckpt-4")).expect_partial()
    head = eval_lib.classification_accuracy(model, factory.eval_dataset(config, "test"))
    assert metrics["sup_head_top1"] == pytest.approx(head["top1"])
    assert metrics["sup_head_top5"] == pytest.approx(head["top5"])
    assert "random_init_sup_head_top1" not in metrics
    assert metrics["knn_top1_gain"] == pytest.approx(
        metrics["knn_top1"] - metrics["random_init_knn_top1"]
    )
    assert metrics["linear_top5_gain"] == pytest.approx(
        metrics["linear_top5"] - metrics["random_init_linear_top5"]
    )
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    # The pictures of the trained model's evaluation (their contents: tests/evaluation/test_visualize.py).
    assert result["neighbours"] == str(tmp_path / "neighbours.png") == saved["neighbours"]
    with Image.open(result["neighbours"]) as picture:
        assert picture.height > 3 * 16 * 4  # 3 rows of 16 px test images shown at 4x
    _check_projector(config, result["projector"], rows=200)
    assert os.path.exists(tmp_path / "ckpt-4.index")
    assert _history_steps(tmp_path) == [2, 4]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    # Every logged record is finite and the learning rate follows the cosine schedule to 0.
    records = train.read_history(str(tmp_path))
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-7)

    # A longer rerun over the same model_dir resumes at step 4 with the optimizer state intact.
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-4"))
    iterations_key = [k for k in reader.get_variable_to_shape_map() if "iteration" in k][0]
    assert int(reader.get_tensor(iterations_key)) == 4
    # The scratch directory of a save killed mid-way is swept on the rerun.
    os.makedirs(tmp_path / "ckpt-5_temp" / "part-00000-of-00001")
    state = train.train(config.replace(train_steps=6), tf.distribute.get_strategy())
    assert not (tmp_path / "ckpt-5_temp").exists()
    assert state.checkpoint_path.endswith("ckpt-6")
    assert int(state.optimizer.iterations.numpy()) == 6
    assert _history_steps(tmp_path) == [2, 4, 6]
    _check_checkpoint_holds(tmp_path / "ckpt-6", state)


def _check_checkpoint_holds(prefix, state):
    """The checkpoint at `prefix` holds every weight of the trained model, with its values
    (batch-norm moving statistics included), and every optimizer variable."""
    reader = tf.train.load_checkpoint(str(prefix))
    saved = reader.get_variable_to_shape_map()
    model_keys = [k for k in saved if k.startswith("model_weights/")]
    assert len(model_keys) == len(state.model.weights)
    for weight in state.model.weights:
        key = "model_weights/" + weight.path.replace("/", ".S") + "/.ATTRIBUTES/VARIABLE_VALUE"
        assert key == ckpt_lib.checkpoint_key(weight.path)  # (paths here hold no dots)
        np.testing.assert_array_equal(reader.get_tensor(key), weight.numpy(), err_msg=weight.path)
    assert any("moving_mean" in k for k in model_keys)
    optimizer_keys = [k for k in saved if k.startswith("optimizer_variables/")]
    assert len(optimizer_keys) == len(state.optimizer.variables)


def _check_projector(config, path, rows):
    """The projector holds `rows` test-set features, labelled as the test split's first
    `rows` examples (the order the evaluation reads them in)."""
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    (embedding,) = text_format.Parse(open(path).read(), projector.ProjectorConfig()).embeddings
    directory = os.path.dirname(path)
    features = np.loadtxt(os.path.join(directory, embedding.tensor_path), delimiter="\t")
    labels = [
        int(line.split("\t")[0])
        for line in open(os.path.join(directory, embedding.metadata_path)).read().splitlines()[1:]
    ]
    test = factory.eval_dataset(config, config.eval_split)
    expected = np.concatenate([batch["label"].numpy() for batch in test])[:rows]
    assert features.shape == (rows, 64)  # final_avg_pool of ResNet-18 at width 1/8
    assert labels == expected.tolist()


def test_rerun_of_a_finished_run_trains_nothing(pretrained_copy):
    config = tiny_config(pretrained_copy, mode="train", train_steps=2)  # the finished run's own
    mtime = os.path.getmtime(pretrained_copy / "ckpt-2.index")
    state = train.train(config, tf.distribute.get_strategy())
    assert state.step == 2 and os.path.getmtime(pretrained_copy / "ckpt-2.index") == mtime


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, train_steps=2, optimizer="momentum", learning_rate=0.1)
    train.train(config, tf.distribute.get_strategy())
    good = tf.train.load_checkpoint(str(tmp_path / "ckpt-2"))
    key = [k for k in good.get_variable_to_shape_map() if "kernel" in k and "model_weights/" in k][
        0
    ]
    before = good.get_tensor(key)
    exploding = config.replace(train_steps=8, learning_rate=1e30, checkpoint_steps=2)
    with pytest.raises(train.NonFiniteLossError, match="non-finite between steps") as err:
        train.train(exploding, tf.distribute.get_strategy())
    assert "lower --learning_rate" in str(err.value)
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".index"))
    assert names == ["ckpt-2.index"]  # nothing newer was written
    np.testing.assert_array_equal(
        tf.train.load_checkpoint(str(tmp_path / "ckpt-2")).get_tensor(key), before
    )


def test_finetune_starts_from_the_pretrained_encoder_with_a_new_head_for_its_classes(
    pretrained_run, tmp_path
):
    """Fine-tuning a 3-class image folder from the 10-class pretraining run: the encoder starts
    from the checkpoint (it stays equal to it, as only the head trains) and the supervised head
    is new, sized for the folder's classes; the run is evaluated on its head's accuracy."""
    from PIL import Image

    pre_dir = pretrained_run  # 2 steps of the tiny settings
    # A 3-class image folder: the pretraining head (10 shapes10 classes) cannot be reused.
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 3)):
        for label in ("a", "b", "c"):
            os.makedirs(tmp_path / "folder" / split / label)
            for i in range(count):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "folder" / split / label / f"{i}.png")
    ft_dir = tmp_path / "finetune"
    config = tiny_config(
        ft_dir,
        dataset=str(tmp_path / "folder"),
        train_mode="finetune",
        checkpoint=str(pre_dir),
        train_batch_size=12,
        eval_batch_size=9,
        train_steps=1,
        fine_tune_after_block=4,  # only the head trains: the encoder must equal the checkpoint
        knn_eval=False,  # the fine-tuned head's accuracy is what this run is evaluated on
        linear_eval=False,
    )
    result = runner.run(config)
    assert 0.0 <= result["metrics"]["finetune_top1"] <= 1.0
    pre = tf.train.load_checkpoint(str(pre_dir / "ckpt-2"))
    fine = tf.train.load_checkpoint(str(ft_dir / "ckpt-1"))
    head = sorted(
        k
        for k in fine.get_variable_to_shape_map()
        if "head_supervised" in k and "model_weights/" in k
    )
    assert [fine.get_variable_to_shape_map()[k][-1] for k in head] == [3, 3], head
    encoder_keys = [
        k
        for k in pre.get_variable_to_shape_map()
        if k.startswith("model_weights/") and "head" not in k and k.endswith("VARIABLE_VALUE")
    ]
    assert len(encoder_keys) > 80, encoder_keys  # ResNet-18: 21 convs + 4 variables per BN
    for key in encoder_keys:
        np.testing.assert_array_equal(pre.get_tensor(key), fine.get_tensor(key), err_msg=key)


def test_finetune_without_checkpoint_is_refused(tmp_path):
    config = tiny_config(tmp_path, train_mode="finetune", train_steps=2)
    with pytest.raises(ValueError, match="needs --checkpoint"):
        train.train(config, tf.distribute.get_strategy())


def test_batch_larger_than_the_dataset_is_refused(tmp_path):
    config = tiny_config(tmp_path, train_batch_size=100_000)
    with pytest.raises(ValueError, match="larger than the 5000 training examples"):
        train.train(config, tf.distribute.get_strategy())


def test_unknown_split_is_refused(tmp_path):
    config = tiny_config(tmp_path, train_split="validation")
    with pytest.raises(ValueError, match="validation"):
        train.train(config, tf.distribute.get_strategy())


def _restored_by_hand(config, prefix):
    """The run's network, every weight (batch-norm statistics included) read straight from the
    checkpoint file by tf.train.Checkpoint."""
    model = factory.build_model(config, 10)
    weights = {w.path: w for w in model.weights}
    tf.train.Checkpoint(model_weights=weights).read(str(prefix)).assert_existing_objects_matched()
    return model


def test_export_mode_and_finetune_from_the_exported_module(pretrained_copy, tmp_path):
    # The session's 2-step pretraining run (a copy: the export is written into it).
    config = tiny_config(pretrained_copy, mode="train", train_steps=2)
    # --mode=export restores the newest checkpoint (batch-norm statistics included) and exports.
    path = runner.export_latest(config.replace(mode="export"), tf.distribute.get_strategy())
    assert path.endswith(os.path.join("saved_model", "2"))
    module = tf.saved_model.load(path)
    images = tf.random.stateless_uniform([4, 16, 16, 3], seed=[1, 2])
    trained = _restored_by_hand(config, pretrained_copy / "ckpt-2")
    want = trained(images, training=False)
    got = module(images, training=False)
    for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5)

    # Fine-tuning can start from that module; with the encoder frozen it stays equal to it.
    ft_config = tiny_config(
        tmp_path / "finetune",
        train_mode="finetune",
        checkpoint=path,
        train_steps=2,
        fine_tune_after_block=4,
    )
    ft_state = train.train(ft_config, tf.distribute.get_strategy())
    pretrained = {w.path: w.numpy() for w in trained.weights}
    encoder = [w for w in ft_state.model.weights if "head" not in w.path]
    assert len(encoder) > 80
    for weight in encoder:
        np.testing.assert_array_equal(weight.numpy(), pretrained[weight.path], err_msg=weight.path)
    with pytest.raises(ValueError, match="different architecture"):
        train.train(
            ft_config.replace(model_dir=str(tmp_path / "ft2"), width_multiplier=0.25),
            tf.distribute.get_strategy(),
        )


@pytest.mark.parametrize(
    "precision, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
def test_mixed_precision_training_keeps_float32_weights_and_loss(
    tmp_path, precision, compute_dtype
):
    import keras

    config = tiny_config(tmp_path, precision=precision, train_steps=6, checkpoint_steps=2)
    try:
        train.setup_runtime(config)
        state = train.train(config, tf.distribute.get_strategy())
        outputs = state.model(tf.zeros([2, 16, 16, 3]), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert outputs["final_avg_pool"].dtype == compute_dtype
    sup_loss = labelled_cross_entropy(outputs["logits_sup"], tf.constant([1, 2])).share
    assert sup_loss.dtype == "float32"  # losses are computed in float32
    assert all(w.dtype == "float32" for w in state.model.weights)
    records = train.read_history(str(tmp_path))
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in records)
    # float16's loss scale may skip the first steps, but the weights do move by the end.
    first = tf.train.load_checkpoint(str(tmp_path / "ckpt-2"))
    last = tf.train.load_checkpoint(str(tmp_path / "ckpt-6"))
    key = ckpt_lib.checkpoint_key(state.model.weights[0].path)
    assert first.get_tensor(key).dtype == np.float32
    assert not np.allclose(first.get_tensor(key), last.get_tensor(key))


def test_fit_and_the_training_loop_take_the_same_step():
    """`SimCLRModel.fit()` and tf_simclr's training loop run one objective: on the same batch
    and weights, with the same optimizers, one step gives the same losses and weights."""
    from tf_simclr.network.model import build_model
    from tf_simclr.training import optim

    def fresh():
        keras.utils.set_random_seed(0)
        return build_model(
            resnet_depth=18,
            width_multiplier=0.125,
            image_size=16,
            num_classes=4,
            num_proj_layers=2,
            temperature=0.5,
            head_weight_decay=1e-3,
        )

    def optimizers():
        return (
            optim.build_optimizer("lars", learning_rate=0.5, weight_decay=1e-4),
            optim.build_optimizer("momentum", learning_rate=0.1, weight_decay=1e-4),
        )

    rng = np.random.default_rng(0)
    batch = {
        "view1": rng.random((8, 16, 16, 3), dtype=np.float32),
        "view2": rng.random((8, 16, 16, 3), dtype=np.float32),
        # Two unlabelled images (-1): both paths train the head on the labelled six only.
        "label": np.array([0, -1, 3, 1, -1, 2, 2, 1], np.int32),
    }
    by_fit, by_loop = fresh(), fresh()
    for a, b in zip(by_fit.weights, by_loop.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    opt, head_opt = optimizers()
    by_fit.compile(optimizer=opt, head_optimizer=head_opt)
    history = by_fit.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
    opt, head_opt = optimizers()
    step = tf.function(train.make_step_fn(by_loop, opt, head_opt))
    metrics = {k: float(v) for k, v in step({k: tf.constant(v) for k, v in batch.items()}).items()}
    assert (
        set(history)
        == set(metrics)
        == {
            "loss",
            "contrastive_loss",
            "contrastive_acc",
            "contrastive_entropy",
            "sup_loss",
            "sup_acc",
            "sup_labelled_examples",
            "weight_decay_loss",
        }
    )
    assert metrics["sup_labelled_examples"] == 6.0
    for name, value in metrics.items():
        assert history[name][0] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    moved = 0
    for a, b, w0 in zip(by_fit.weights, by_loop.weights, fresh().weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
        moved += not np.array_equal(a.numpy(), w0.numpy())
    assert moved > len(by_fit.trainable_variables) // 2  # the step did update the weights
