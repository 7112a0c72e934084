"""tf_simclr.workflows.convert: reference models (../shared/fixtures) become ordinary tf_simclr model_dirs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.cli import config_from_argv
from helpers.files import reference_io

from tf_simclr import cli, factory, reference
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import convert, runner
from tf_simclr.workflows.export import SimCLRHubLayer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R18 = "r18_cifar_w025_v1"
R50_FT = "r50_sk0_w0125_finetuned_v2"


def _quiet(*_args, **_kwargs):
    return None


@pytest.fixture(scope="module")
def r18_by_the_command(reference_fixtures, tmp_path_factory):
    """The r18 fixture's SavedModel converted once, by the command with --verify: (how the
    command finished, its --dst). The command's own test reads what it printed and wrote; the
    other tests use the model_dir (one conversion for both instead of one each)."""
    dst = tmp_path_factory.mktemp("convert") / "r18"
    src = os.path.join(reference_fixtures, R18, "saved_model")
    return _run_cli(f"--src={src}", f"--dst={dst}", "--verify"), dst


@pytest.fixture(scope="module")
def r18_dst(r18_by_the_command):
    """The model_dir of the r18 fixture's SavedModel, converted once. Read it, never write."""
    proc, dst = r18_by_the_command
    assert proc.returncode == 0, proc.stderr[-2000:]
    return str(dst)


def _assert_equals_reference(outputs, io, names=None):
    names = names or [k[6:] for k in io.files if k.startswith("infer/")]
    report = convert.compare_outputs(
        {k: outputs[k] for k in names}, {k: io[f"infer/{k}"] for k in names}, names
    )
    bad = {k: v for k, v in report.items() if not v[0] <= v[1]}
    assert not bad, bad


def _run_cli(*args):
    """`python -m tf_simclr.convert ARGS`, run as __main__ in this process (a subprocess would
    pay TensorFlow's start-up again): its exit code and what it printed, as a finished
    process would give them."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["python -m tf_simclr.convert", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with pytest.raises(SystemExit) as exit, warnings.catch_warnings():
                # Another test may have imported the module already: run_module says so.
                warnings.filterwarnings("ignore", "'tf_simclr.convert' found in sys.modules")
                runpy.run_module("tf_simclr.convert", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, exit.value.code, out.getvalue(), err.getvalue())


def test_cli_converts_and_verifies_a_saved_model(r18_by_the_command):
    proc, dst = r18_by_the_command
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Found: ResNet-18 width 0.25, CIFAR stem" in proc.stdout
    assert "Mapped all 116 variables." in proc.stdout
    assert proc.stdout.count(" ok") == 10 and "ABOVE TOLERANCE" not in proc.stdout
    names = sorted(os.listdir(dst))
    assert {"config.json", "conversion.json", "model.keras", "saved_model", "checkpoint"} <= set(
        names
    )
    assert "ckpt-0.index" in names
    report = json.loads((dst / "conversion.json").read_text())
    assert len(report["verify"]) == 10
    assert all(v["max_abs_diff"] <= v["tolerance"] for v in report["verify"].values())


def test_exported_module_answers_like_the_reference(reference_fixtures, r18_dst):
    import tensorflow_hub as hub

    io = reference_io(reference_fixtures, R18)
    images = tf.constant(io["inputs"])
    path = os.path.join(r18_dst, "saved_model", "0")
    module = tf.saved_model.load(path)
    _assert_equals_reference(module(images, training=False), io)
    _assert_equals_reference(module(images, trainable=False), io)  # the reference call style
    _assert_equals_reference(module.signatures["serving_default"](images=images), io)
    _assert_equals_reference(hub.load(path)(images, training=False), io)
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    _assert_equals_reference(layer(images), io)
    hub_layer = SimCLRHubLayer(path, output_key="final_avg_pool")
    _assert_equals_reference({"final_avg_pool": hub_layer(images)}, io, ["final_avg_pool"])


def test_keras_file_loads_as_a_tf_simclr_model(reference_fixtures, r18_dst):
    io = reference_io(reference_fixtures, R18)
    model = keras.saving.load_model(os.path.join(r18_dst, convert.KERAS_FILENAME))
    assert type(model).__name__ == "SimCLRModel"
    _assert_equals_reference(model(tf.constant(io["inputs"]), training=False), io)


def test_training_checkpoint_brings_optimizer_state_and_step(reference_fixtures, tmp_path):
    src = os.path.join(reference_fixtures, R50_FT, "ckpt")
    dst = str(tmp_path / "ft")
    report = convert.convert(src, dst, echo=_quiet)
    source = reference.read_source(src)
    arch = reference.infer_architecture(source)
    assert report["step"] == source.global_step == 1
    assert report["momentum_slots"] == sum(1 for v in source.variables.values() if v.slot_key)
    # Restore DST's checkpoint into a fresh model and optimizer, as training would.
    converted = convert.load_reference(src)
    model, config = converted.model, converted.config
    for w in model.weights:
        w.assign(tf.zeros_like(w))
    optimizer = factory.build_optimizer(config, 1, learning_rate=0.1)
    optimizer.build(model.optimized_variables)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = ckpt_lib.training_checkpoint(model, optimizer, global_step=step)
    checkpoint.restore(os.path.join(dst, "ckpt-1")).assert_consumed()
    assert int(step.numpy()) == 1 and int(optimizer.iterations.numpy()) == 1
    weights = {w.path: w for w in model.weights}
    checked = 0
    for ours, ref in reference.weight_mapping(arch):
        variable = source.variables[ref]
        np.testing.assert_array_equal(weights[ours].numpy(), source.read(variable.key))
        momentum = optimizer.momentum_variable(weights[ours]).numpy() if variable.slot_key else None
        if variable.slot_key:
            np.testing.assert_array_equal(momentum, source.read(variable.slot_key))
            checked += 1
    assert checked == report["momentum_slots"] == 164
    config = json.loads(open(os.path.join(dst, "config.json")).read())
    assert config["train_mode"] == "finetune" and config["ft_proj_selector"] == 1
    assert config["num_classes"] == 1000 and config["image_size"] == 224


def test_eval_and_export_over_the_converted_model_dir(reference_fixtures, r18_dst, tmp_path):
    # The run's settings come from the converted config.json: no architecture flags needed.
    work = str(tmp_path / "work")
    shutil.copytree(r18_dst, work)
    config = config_from_argv(
        *[
            f"--model_dir={work}",
            "--mode=eval",
            "--eval_steps=2",
            "--eval_batch_size=64",
            "--linear_eval_epochs=2",
            "--knn_k=5",
            "--norandom_init_baseline",
        ]
    )
    assert config.resnet_depth == 18 and config.sup_head_optimizer == "shared"
    result = runner.run(config)
    assert result["checkpoint"].endswith("ckpt-0")
    assert {"sup_head_top1", "knn_top1", "linear_top1"} <= set(result["metrics"])
    export_path = runner.run(config_from_argv(f"--model_dir={work}", "--mode=export"))[
        "export_path"
    ]
    io = reference_io(reference_fixtures, R18)
    _assert_equals_reference(tf.saved_model.load(export_path)(tf.constant(io["inputs"])), io)


def test_architecture_flag_conflicting_with_the_converted_run_is_refused(r18_dst):
    with pytest.raises(cli.ConfigError, match=r"--resnet_depth=50 \(the run has 18\)"):
        config_from_argv(f"--model_dir={r18_dst}", "--mode=eval", "--resnet_depth=50")


def test_finetune_from_the_converted_model_dir(reference_fixtures, r18_dst, tmp_path):
    config = config_from_argv(
        *[
            "--train_mode=finetune",
            f"--checkpoint={r18_dst}",
            f"--model_dir={tmp_path / 'ft'}",
            "--mode=train",
            "--train_steps=2",
            "--train_batch_size=16",
            "--steps_per_loop=1",
            "--noexport",
            "--nosummaries",
            # Not the default 10,000, which decodes all 5,000 embedded images before step 1.
            "--shuffle_buffer=256",
        ]
    )
    # The encoder settings come from the converted run's config.json.
    assert (config.resnet_depth, config.width_multiplier, config.num_proj_layers) == (18, 0.25, 2)
    result = runner.run(config)
    assert result["step"] == 2
    # The encoder started from the converted weights: block_group1 moved only a little.
    ft = tf.train.load_checkpoint(os.path.join(str(tmp_path / "ft"), "ckpt-2"))
    src = tf.train.load_checkpoint(os.path.join(r18_dst, "ckpt-0"))
    key = ckpt_lib.checkpoint_key("block_group1/block_0/conv1/conv2d/kernel")
    before, after = src.get_tensor(key), ft.get_tensor(key)
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def test_reference_pretraining_continues_with_run_py(reference_fixtures, tmp_path):
    src = os.path.join(reference_fixtures, R18, "ckpt")
    dst = str(tmp_path / "continued")
    convert.convert(src, dst, echo=_quiet)
    config = config_from_argv(
        *[
            f"--model_dir={dst}",
            "--mode=train",
            "--train_steps=3",
            "--train_batch_size=16",
            "--steps_per_loop=1",
            "--noexport",
            "--nosummaries",
            # Not the default 10,000, which decodes all 5,000 embedded images before step 1.
            "--shuffle_buffer=256",
        ]
    )
    result = runner.run(config)
    assert result["step"] == 3 and ckpt_lib.list_checkpoints(dst)[-1].endswith("ckpt-3")
    history = [json.loads(line) for line in open(os.path.join(dst, "config_history.jsonl"))]
    assert history[0]["step"] == 1  # resumed at the reference's step
    assert history[0]["changes"]["train_steps"][1] == 3


# ----------------------------------------------------------------------------- bad input
def _write_reference_like_checkpoint(source, prefix, *, drop=(), add=None, reshape=None):
    """A checkpoint with the reference's attribute tree, from `source`'s values, edited."""
    root = {}
    for path, variable in source.variables.items():
        if path in drop:
            continue
        value = source.read(variable.key)
        if reshape and path == reshape[0]:
            value = np.zeros(reshape[1], value.dtype)
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tf.Variable(value)
    for path, value in (add or {}).items():
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tf.Variable(value)
    step = tf.Variable(1, dtype=tf.int64)
    return tf.train.Checkpoint(model=root, global_step=step).write(prefix)


def _assert_nothing_written(dst):
    assert not os.path.exists(dst)
    parent = os.path.dirname(dst)
    assert not [n for n in os.listdir(parent) if "tmp-convert" in n]


@pytest.fixture
def r18_source(reference_fixtures):
    return reference.read_source(os.path.join(reference_fixtures, R18, "ckpt"))


def test_folder_of_neither_format_is_refused(tmp_path):
    src = tmp_path / "not_a_model"
    src.mkdir()
    (src / "notes.txt").write_text("hello")
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match="neither a reference SavedModel"):
        convert.convert(str(src), dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_saved_model_of_another_network_is_refused(r18_dst, tmp_path):
    # A tf_simclr export is a SavedModel, but not one written by the reference code.
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match="not a model of the reference SimCLR"):
        convert.convert(os.path.join(r18_dst, "saved_model", "0"), dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_truncated_variables_file_is_refused(reference_fixtures, tmp_path):
    src = tmp_path / "saved_model"
    shutil.copytree(os.path.join(reference_fixtures, R18, "saved_model"), src)
    data = src / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match="truncated or damaged"):
        convert.convert(str(src), dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_checkpoint_with_a_missing_variable_names_it(r18_source, tmp_path):
    missing = "resnet_model/block_groups/2/layers/1/conv2d_bn_layers/3/bn/moving_variance"
    prefix = _write_reference_like_checkpoint(
        r18_source, str(tmp_path / "src" / "ckpt-1"), drop=(missing,)
    )
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match=f"{missing} .*is missing"):
        convert.convert(prefix, dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_variable_that_cannot_be_placed_is_named(r18_source, tmp_path):
    extra = "resnet_model/block_groups/0/layers/0/se_layer/se_reduce/kernel"
    prefix = _write_reference_like_checkpoint(
        r18_source, str(tmp_path / "src" / "ckpt-1"), add={extra: np.zeros([1, 1, 16, 4])}
    )
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match=f"cannot place the variable {extra}"):
        convert.convert(prefix, dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_shape_mismatch_names_both_shapes(r18_source, tmp_path):
    path = "resnet_model/block_groups/1/layers/1/conv2d_bn_layers/0/conv2d/kernel"
    prefix = _write_reference_like_checkpoint(
        r18_source, str(tmp_path / "src" / "ckpt-1"), reshape=(path, (3, 3, 32, 31))
    )
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match=r"\(3, 3, 32, 31\).*\(3, 3, 32, 32\)"):
        convert.convert(prefix, dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_existing_destination_is_left_alone(reference_fixtures, tmp_path, capsys):
    """The command's own main, in-process (the command as a process: the test above)."""
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    src = os.path.join(reference_fixtures, R18, "saved_model")
    assert convert.main([f"--src={src}", f"--dst={dst}"]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(dst)) == ["keep.txt"] and (dst / "keep.txt").read_text() == "mine"


def test_verify_of_a_checkpoint_and_wrong_reference_flags_are_refused(reference_fixtures, tmp_path):
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match="holds no program"):
        convert.convert(
            os.path.join(reference_fixtures, R18, "ckpt"), dst, verify=True, echo=_quiet
        )
    _assert_nothing_written(dst)
    with pytest.raises(convert.ConversionError, match=r"resnet_depth=50 .* resnet_depth=18"):
        convert.convert(
            os.path.join(reference_fixtures, R18, "ckpt"),
            dst,
            reference_flags={"resnet_depth": 50},
            echo=_quiet,
        )
    _assert_nothing_written(dst)


def test_models_without_projection_head_convert(reference_fixtures, r18_source, tmp_path):
    """SimCLRv1 releases and supervised baselines hold no projection head: the base network
    and the classifier on h. Dropping the r18 fixture's head leaves h and logits_sup as the
    reference computed them; proj_head_output is then h, as in those modules."""
    head = [p for p in r18_source.variables if p.startswith("_projection_head/")]
    assert head
    prefix = _write_reference_like_checkpoint(
        r18_source, str(tmp_path / "v1" / "ckpt-1"), drop=tuple(head)
    )
    converted = convert.load_reference(prefix)
    arch = converted.architecture
    assert (arch.proj_head_mode, arch.num_proj_layers, arch.num_classes) == ("none", 0, 10)
    assert arch.ft_proj_selector == 0
    io = reference_io(reference_fixtures, R18)
    outputs = converted.model(tf.constant(io["inputs"]), training=False)
    names = [k[6:] for k in io.files if k.startswith("infer/") and "proj_head_output" not in k]
    _assert_equals_reference(outputs, io, names)
    np.testing.assert_array_equal(outputs["proj_head_output"], outputs["final_avg_pool"])


def test_published_model_example(reference_fixtures, r18_dst, tmp_path):
    """examples/published_model.py embeds a folder with the converted model's export and runs a
    linear evaluation; the embeddings are the converted network's features of those images."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "published_model", os.path.join(REPO, "examples", "published_model.py")
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for name in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / name)
            for i in range(3):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                tf.io.write_file(
                    str(tmp_path / "data" / split / name / f"{i}.png"), tf.io.encode_png(image)
                )
    out = str(tmp_path / "features.npy")
    common = ["--model_dir", r18_dst, "--image_size", "32", "--batch_size", "4"]
    features = example.main(["embed", *common, "--images", str(tmp_path / "data"), "--output", out])
    paths = open(out[:-4] + ".txt").read().split()
    images = np.stack([tf.io.decode_png(tf.io.read_file(p)).numpy() for p in paths]) / 255.0
    converted = convert.load_reference(os.path.join(reference_fixtures, R18, "saved_model"))
    expected = converted.model(tf.constant(images, tf.float32), training=False)["final_avg_pool"]
    np.testing.assert_allclose(np.load(out), expected.numpy(), atol=1e-5)
    assert features.shape == (12, 128)
    accuracy = example.main(
        ["linear_eval", *common, "--data", str(tmp_path / "data"), "--epochs", "5"]
    )
    assert 0.0 <= accuracy <= 1.0


def test_damaged_saved_model_pb_is_named(reference_fixtures, tmp_path):
    src = tmp_path / "saved_model"
    shutil.copytree(os.path.join(reference_fixtures, R18, "saved_model"), src)
    (src / "saved_model.pb").write_bytes(b"not a protocol buffer" * 10)
    dst = str(tmp_path / "dst")
    with pytest.raises(convert.ConversionError, match=r"saved_model.pb cannot be parsed"):
        convert.convert(str(src), dst, echo=_quiet)
    _assert_nothing_written(dst)


def test_a_converted_published_model_is_a_distillation_teacher(reference_fixtures, r18_dst):
    """--teacher=<converted model_dir>: the teacher's logits are the reference's own."""
    from tf_simclr.workflows import distill

    io = reference_io(reference_fixtures, R18)
    teacher = distill.load_teacher(r18_dst, image_size=32)
    assert teacher.num_classes == io["infer/logits_sup"].shape[-1] == 10
    logits = teacher.logits(tf.constant(io["inputs"])).numpy()
    _assert_equals_reference({"logits_sup": logits}, io, ["logits_sup"])


def _write_config_only(monkeypatch):
    """Conversions that write just the model_dir's config.json (no checkpoint, export or
    .keras file, no export check): the tests of the temporary folder and its rename below are
    about where files go, and every full conversion above writes the rest."""

    def write_config(converted, directory, report):
        converted.config.save(directory)
        report.update(step=0, momentum_slots=0)
        return {"checkpoint": "none", "export": "none"}

    monkeypatch.setattr(convert, "_write_model_dir", write_config)
    monkeypatch.setattr(convert, "_check_export", lambda converted, path: {})
    return write_config


def test_a_killed_conversion_is_cleaned_up_and_a_running_one_is_not_overrun(
    reference_fixtures, tmp_path, monkeypatch
):
    """A conversion killed before its rename leaves a hidden temporary sibling of --dst: the
    next conversion into that --dst removes it and says so. While the process that writes
    such a folder is alive, a second conversion into the same --dst stops before any work."""
    _write_config_only(monkeypatch)
    src = os.path.join(reference_fixtures, R18, "saved_model")
    dst = tmp_path / "r18"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f".r18.tmp-convert-{sleeper.pid}-0000abcd"
        running.mkdir()
        (running / "config.json").write_text("{}")
        with pytest.raises(convert.ConversionError) as err:
            convert.convert(src, str(dst), echo=_quiet)
        assert f"Another conversion into --dst={dst} is running (process {sleeper.pid}" in str(
            err.value
        )
        assert (running / "config.json").read_text() == "{}" and not dst.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # The process is gone now: its folder is the leftover of a killed conversion.
    said = []
    convert.convert(src, str(dst), echo=said.append)
    assert f"Removed {running}: the unfinished output of an interrupted conversion" in said[0]
    assert not running.exists()
    assert sorted(os.listdir(tmp_path)) == ["r18"]
    assert os.path.isfile(dst / "config.json")


def test_the_loser_of_two_conversions_into_one_dst_says_so(
    reference_fixtures, tmp_path, monkeypatch
):
    """Another process fills --dst while this conversion writes its temporary folder: this one
    stops naming that, leaves --dst as the other process wrote it, and keeps no files."""
    dst = tmp_path / "r18"
    write = _write_config_only(monkeypatch)

    def the_other_process_finishes_first(converted, directory, report):
        dst.mkdir()
        (dst / "config.json").write_text("theirs")
        return write(converted, directory, report)

    monkeypatch.setattr(convert, "_write_model_dir", the_other_process_finishes_first)
    with pytest.raises(convert.ConversionError, match="was written by another process while"):
        convert.convert(os.path.join(reference_fixtures, R18, "saved_model"), str(dst), echo=_quiet)
    assert sorted(os.listdir(tmp_path)) == ["r18"]
    assert os.listdir(dst) == ["config.json"] and (dst / "config.json").read_text() == "theirs"
