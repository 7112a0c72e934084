"""Bad input (issue 6): each case gets a clear error naming the problem and the fix, before any
training step and never as a traceback from inside TensorFlow; odd but valid images train.

Covered elsewhere, not repeated here: temperature <= 0, label_fraction outside (0, 1], image_size
< 8, label_fraction with label_ids_file, fine_tune_after_block or label_fraction when pretraining,
num_cpu_devices without mirrored (test_config.py, test_run_cli.py); batch larger than the
dataset, unknown train split, fine-tuning without --checkpoint (test_train.py); truncated,
empty and non-image files in a folder, grayscale/RGBA/palette images, a broken TFDS directory,
unknown augmentation names (test_data.py).
"""

import io
import logging
import os
import re
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.cli import config_from_argv
from helpers.configs import tiny_config
from helpers.files import png_bytes, write_files
from PIL import Image

from tf_simclr import augment, factory
from tf_simclr import data as data_lib
from tf_simclr.config import Config, ConfigError
from tf_simclr.training import optim
from tf_simclr.workflows import export, runner, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = tf.constant([1, 2], tf.int64)


def _config(tmp_path, **changes):
    values = dict(mode="train", train_steps=1)
    values.update(changes)
    return tiny_config(tmp_path / "model", **values)


def _no_checkpoint_written(tmp_path):
    model_dir = tmp_path / "model"
    return not model_dir.exists() or not [n for n in os.listdir(model_dir) if "ckpt" in n]


# ------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------
def test_unknown_dataset_name_says_what_else_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'no_such_dataset_xyz'.*image folder"):
        runner.run(_config(tmp_path, dataset="no_such_dataset_xyz"))


def test_known_but_unprepared_dataset_says_to_prepare_it_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'cifar10' is not prepared.*does not download"):
        runner.run(_config(tmp_path, dataset="cifar10", data_dir=str(tmp_path)))


def test_data_dir_that_does_not_exist_is_named(tmp_path):
    missing = str(tmp_path / "no_such_data_dir")
    with pytest.raises(FileNotFoundError, match="no_such_data_dir"):
        runner.run(_config(tmp_path, dataset="cifar10", data_dir=missing))


def test_dataset_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*image folder"):
        runner.run(_config(tmp_path, dataset=str(tmp_path / "nowhere" / "images")))


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is empty: expected root/<split>/<class>"):
        runner.run(_config(tmp_path, dataset=str(tmp_path / "empty")))


def test_folder_of_only_corrupt_and_non_image_files(tmp_path):
    root = write_files(
        tmp_path / "junk",
        {
            "train/a/broken.jpg": b"not a jpeg at all",
            "train/a/empty.png": b"",
            "train/b/readme.txt": b"text",
            "train/b/data.png": b"\x00" * 64,
        },
    )
    with pytest.raises(ValueError, match="No readable images"):
        runner.run(_config(tmp_path, dataset=root))
    assert _no_checkpoint_written(tmp_path)


def test_strict_data_names_the_corrupt_file(tmp_path):
    root = write_files(
        tmp_path / "imgs",
        {
            "train/a/0.png": png_bytes(np.zeros((8, 8, 3), np.uint8)),
            "train/a/bad.png": b"\x89PNG but not really",
        },
    )
    with pytest.raises(ValueError, match=r"bad\.png.*strict"):
        runner.run(_config(tmp_path, dataset=root, strict_data=True, train_batch_size=2))


def test_missing_train_split_of_a_folder(tmp_path):
    root = write_files(
        tmp_path / "imgs", {"test/a/0.png": png_bytes(np.zeros((8, 8, 3), np.uint8))}
    )
    with pytest.raises(ValueError, match=r"'train' not found.*available splits: \['test'\]"):
        runner.run(_config(tmp_path, dataset=root))


def test_missing_eval_split_is_refused_before_training(tmp_path):
    config = _config(tmp_path, mode="train_then_eval", eval_split="validation")
    with pytest.raises(ValueError, match=r"--eval_split='validation'.*available: test, train"):
        runner.run(config)
    assert _no_checkpoint_written(tmp_path)


def _png(size: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _looks_whole_but_does_not_decode() -> bytes:
    data = bytearray(_png())
    data[16:24] = bytes(8)  # IHDR width and height 0; signature and IEND intact
    return bytes(data)


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {"a/notes.txt": b"hi", "b/c/data.csv": b"1,2"},
            r"No images in '.*photos' \(searched at any depth\).*Add images, or point --dataset",
        ),
        (
            {"0.png": b"not a png", "a/1.jpg": b"\xff\xd8\xff cut", "a/b/2.png": b""},
            r"all 3 image file\(s\) are corrupt or unreadable.*Replace them",
        ),
        (
            {
                "0.png": _looks_whole_but_does_not_decode(),
                "a/1.png": _looks_whole_but_does_not_decode(),
            },
            r"None of the 2 image\(s\) of split 'train' of .* can be decoded.*Replace them",
        ),
    ],
    ids=["no-images", "all-unreadable", "none-decodes"],
)
def test_an_unlabelled_folder_with_nothing_to_train_on_stops_before_writing(
    tmp_path, files, message
):
    root = write_files(tmp_path / "photos", files)
    with pytest.raises(ValueError, match=message):
        runner.run(_config(tmp_path, dataset=root, unlabelled=True))
    assert not (tmp_path / "model").exists()


def test_images_without_class_folders_name_unlabelled_as_the_fix(tmp_path):
    root = write_files(tmp_path / "photos", {"train/0.png": _png(), "train/1.png": _png(seed=1)})
    with pytest.raises(ValueError, match=r"directly in the split folder.*--unlabelled"):
        runner.run(_config(tmp_path, dataset=root))
    assert not (tmp_path / "model").exists()


def test_an_eval_dataset_with_other_classes_in_its_splits_stops_before_training(tmp_path):
    photos = write_files(tmp_path / "photos", {f"{i}.png": _png(seed=i) for i in range(40)})
    labelled = write_files(
        tmp_path / "labelled",
        {"train/cat/0.png": _png(), "train/dog/0.png": _png(seed=1), "test/cat/0.png": _png()},
    )
    config = _config(
        tmp_path, mode="train_then_eval", dataset=photos, unlabelled=True, eval_dataset=labelled
    )
    with pytest.raises(
        ValueError, match=r"Split 'test' of .* lacks the class folder\(s\) \['dog'\]"
    ):
        runner.run(config)
    assert not (tmp_path / "model").exists()


def test_unlabelled_train_then_eval_without_eval_dataset_is_a_usage_error(tmp_path):
    photos = write_files(tmp_path / "photos", {f"{i}.png": _png(seed=i) for i in range(4)})
    with pytest.raises(ConfigError, match=r"Add --eval_dataset=<labelled data>.*--mode=train"):
        config_from_argv(f"--dataset={photos}", "--unlabelled", f"--model_dir={tmp_path / 'm'}")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------
# Flags and their combinations
# ------------------------------------------------------------------------------------------
def test_batch_not_divisible_by_the_replicas(tmp_path):
    three_replicas = types.SimpleNamespace(num_replicas_in_sync=3)
    with pytest.raises(ValueError, match=r"--train_batch_size=32 must be divisible by the 3"):
        train.train(_config(tmp_path), three_replicas)


def test_run_py_reports_bad_replica_split_in_one_line(tmp_path):
    """Through run.py with a real 3-replica MirroredStrategy: one error line, exit code 1."""
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "run.py"),
            "--mode=train",
            f"--model_dir={tmp_path}",
            "--strategy=mirrored",
            "--num_cpu_devices=3",
            "--train_batch_size=32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    # Our log lines ("2026-01-01 12:00:00,000 ERROR ..."), not TF's C++ start-up noise.
    errors = [ln for ln in proc.stderr.splitlines() if re.match(r"\d{4}-\S+ \S+ ERROR ", ln)]
    assert len(errors) == 1 and "must be divisible by the 3 replicas" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_image_size_too_small_for_the_network():
    with pytest.raises(ConfigError, match=r"--image_size=7 is too small for a ResNet: use 8"):
        Config(image_size=7)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(use_tpu=True, strategy="mirrored"), "--use_tpu contradicts --strategy=mirrored"),
        (dict(checkpoint="/some/ckpt-10"), "--checkpoint only applies to --train_mode=finetune"),
        (dict(use_blur=True, augmentations="crop,flip"), "add 'blur' to that list"),
        (dict(label_fraction=0.1, train_mode="finetune", label_ids_file="ids.txt"), "not both"),
        (dict(num_cpu_devices=2), "--num_cpu_devices only applies to --strategy=mirrored"),
    ],
)
def test_contradictory_flags(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)


def test_consistent_flag_combinations_are_accepted_and_mean_what_they_say():
    """The combinations next to the refused ones above are kept, with the meaning the flags
    give them (the operators augmentation will run, the checkpoint fine-tuning will read)."""
    blur = ("crop", "flip", "color", "blur")
    for changes in (
        dict(use_blur=True, augmentations="crop,flip,color,blur"),
        dict(use_blur=True, augmentations="imagenet"),
        dict(use_blur=True),  # the default recipe plus blur
    ):
        config = Config(**changes)
        assert augment.resolve_augmentations(config.augmentation_spec())[0] == blur, changes
    finetune = Config(train_mode="finetune", checkpoint="/some/ckpt-10")
    assert (finetune.train_mode, finetune.checkpoint) == ("finetune", "/some/ckpt-10")
    assert finetune.augmentation_spec() == "crop,flip"  # fine-tuning's own recipe
    assert Config.from_json(finetune.to_json()) == finetune


def test_finetune_checkpoint_that_does_not_exist(tmp_path):
    config = _config(tmp_path, train_mode="finetune", checkpoint=str(tmp_path / "pre" / "ckpt-9"))
    with pytest.raises(FileNotFoundError, match=r"is not a checkpoint \(no .*ckpt-9\.index\)"):
        train.train(config, tf.distribute.get_strategy())


def test_label_ids_file_that_does_not_exist(tmp_path):
    config = _config(
        tmp_path,
        train_mode="finetune",
        checkpoint=str(tmp_path),
        label_ids_file=str(tmp_path / "ids.txt"),
    )
    with pytest.raises(FileNotFoundError, match="ids.txt"):
        runner.run(config)


# ------------------------------------------------------------------------------------------
# Odd but valid images: they train
# ------------------------------------------------------------------------------------------
def _odd_images(root) -> str:
    """1-pixel, 16-bit grey and RGB, RGBA, grey JPEG, a 2400x1800 JPEG, GIF and BMP images,
    plus one corrupt and one non-image file, under a non-ASCII path."""
    rng = np.random.default_rng(0)

    def encoded(arr, fmt):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        return buf.getvalue()

    files = {}
    for split in ("train", "test"):
        for cls in ("chat", "café"):
            d = f"{split}/{cls}/"
            files[d + "un_pixel.png"] = png_bytes(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8))
            gray16 = np.linspace(0, 65535, 20 * 14).reshape(20, 14).astype(np.uint16)
            files[d + "gris16.png"] = png_bytes(gray16)
            rgb16 = np.full((10, 10, 3), 128 * 257, np.uint16)
            files[d + "rgb16.png"] = tf.io.encode_png(tf.constant(rgb16)).numpy()
            files[d + "rgba.png"] = png_bytes(rng.integers(0, 256, (9, 9, 4), dtype=np.uint8))
            files[d + "gris.jpg"] = encoded(rng.integers(0, 256, (30, 20), dtype=np.uint8), "JPEG")
            big = np.repeat(np.linspace(0, 255, 1800, dtype=np.uint8)[None, :, None], 3, axis=2)
            files[d + "énorme.jpg"] = encoded(np.repeat(big, 2400, axis=0), "JPEG")
            files[d + "palette.gif"] = encoded(rng.integers(0, 256, (12, 12, 3), np.uint8), "GIF")
            files[d + "x.bmp"] = encoded(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), "BMP")
    files["train/chat/cassé.jpg"] = b"\xff\xd8\xff\xe0 truncated"
    files["train/chat/notes.png"] = b"plain text with an image name"
    return write_files(root, files)


def test_odd_images_under_a_non_ascii_path_are_usable(tmp_path, caplog):
    root = _odd_images(tmp_path / "données-日本")
    # Decoding: 16-bit images scale to 8 bits, everything becomes 3 channels.
    ds, info = data_lib.load_source(root, split="train", with_ids=True)
    images = {ex["id"].decode(): ex["image"] for ex in ds.as_numpy_iterator()}
    assert len(images) == 16 and info.num_classes == 2  # the truncated JPEG is skipped
    assert all(img.ndim == 3 and img.shape[2] == 3 for img in images.values())
    assert images["chat/un_pixel.png"].shape == (1, 1, 3)
    assert images["café/énorme.jpg"].shape == (2400, 1800, 3)
    np.testing.assert_array_equal(images["chat/rgb16.png"], 128)
    gray = images["chat/gris16.png"][..., 0].astype(int)
    assert gray.min() == 0 and gray.max() == 255 and np.all(np.diff(gray.ravel()) >= 0)

    # Training views and the network at the smallest image size it takes (8 px: 1x1 after
    # block_group4); the training step itself is image-agnostic from here on.
    with caplog.at_level(logging.WARNING):
        views, info = data_lib.build_pretrain_dataset(root, batch_size=8, image_size=8, seed=1)
        batch = next(iter(views))
    # The truncated JPEG is counted with the non-image file (it used to vanish uncounted).
    assert "Skipping 2 corrupt or non-image file(s)" in caplog.text
    assert "cassé.jpg (truncated or corrupt JPEG" in caplog.text and "notes.png" in caplog.text
    for key in ("view1", "view2"):
        assert batch[key].shape == (8, 8, 8, 3)
        assert 0.0 <= float(tf.reduce_min(batch[key])) <= float(tf.reduce_max(batch[key])) <= 1
    model = factory.build_model(tiny_config(tmp_path, image_size=8), info.num_classes)
    features = model(batch["view1"], training=True)["final_avg_pool"]
    assert features.shape[0] == 8 and np.all(np.isfinite(features.numpy()))
    evaluated, _ = data_lib.build_eval_dataset(root, split="test", batch_size=16, image_size=8)
    batch = next(iter(evaluated))
    assert batch["image"].shape == (16, 8, 8, 3)
    assert 0.0 <= float(tf.reduce_min(batch["image"])) <= float(tf.reduce_max(batch["image"])) <= 1


# ------------------------------------------------------------------------------------------
# No silent wrong results (issue 13)
# ------------------------------------------------------------------------------------------
def test_convert_module_command_writes_a_readable_tfds_directory(tmp_path):
    """The README's `python -m tf_simclr.data convert` command, run as a real process."""
    rng = np.random.default_rng(0)
    files = {
        f"{split}/{cls}/{i}.png": png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        for split in ("train", "test")
        for cls in ("a", "b")
        for i in range(2)
    }
    src = write_files(tmp_path / "imgs", files)
    dst = tmp_path / "tfds"
    proc = subprocess.run(
        [sys.executable, "-m", "tf_simclr.data", "convert", "--src", src, "--dst", str(dst)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()[-1]
    assert out == str(dst / "imgs" / "1.0.0")
    _, info = data_lib.load_source(out, split="train")
    assert info.kind == "tfds_dir" and info.num_examples == {"train": 4, "test": 4}
    assert info.class_names == ("a", "b")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: optim.build_optimizer("lars", learning_rate=-1.0), "learning_rate must be"),
        (lambda: optim.build_optimizer("adam", learning_rate=0.0), "learning_rate must be"),
        (lambda: optim.build_optimizer("momentum", float("nan")), "learning_rate must be"),
        (lambda: optim.build_optimizer("lars", "0.1"), "learning_rate must be"),
        (lambda: optim.LARS(learning_rate=float("inf")), "learning_rate must be"),
        (lambda: optim.build_optimizer("lars", 0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: optim.build_optimizer("momentum", 0.1, momentum=-0.5), "momentum must be in"),
        (lambda: optim.build_optimizer("lars", 0.1, eta=0.0), "eta must be"),
        (lambda: optim.build_optimizer("adamw", 0.1, weight_decay=-1e-4), "weight_decay must be"),
        (lambda: optim.WarmupCosineDecay(0.0, 1, 5), "base_learning_rate must be"),
        (lambda: optim.scale_learning_rate(0.0, 256), "learning_rate must be"),
    ],
    ids=[
        "lars-negative-lr",
        "adam-zero-lr",
        "momentum-nan-lr",
        "lr-string",
        "LARS-inf-lr",
        "momentum-1",
        "negative-momentum",
        "eta-0",
        "negative-weight-decay",
        "schedule-zero-base",
        "scaling-zero-base",
    ],
)
def test_optimizer_arguments_are_checked_like_the_cli(build, message):
    """The library refuses what the CLI refuses (--learning_rate > 0, --momentum in [0, 1), ...)."""
    with pytest.raises(ValueError, match=message) as raised:
        build()
    assert "got" in str(raised.value)


def _tiny_export(tmp_path):
    """A two-layer model returning named outputs, exported and reloaded."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    model = keras.Model(inputs, {"final_avg_pool": keras.layers.GlobalAveragePooling2D()(x)})
    path = export.export_saved_model(model, str(tmp_path / "hub"), step=1, image_size=8)
    return model, tf.saved_model.load(path)


def test_images_outside_0_1_wrong_dtype_or_shape_are_refused(tmp_path):
    """Float pixels in [0, 255] used to be clipped to 1.0 (augment) or embedded as they were
    (exported module); now they, other dtypes and wrong shapes stop with a readable error."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    as_255 = pixels.astype(np.float32)
    in_range = as_255 / 255.0
    kw = dict(image_size=8, augmentations="crop,flip,color")
    out_of_range = (
        r"images must be float in \[0, 1\] or uint8; got values up to 25\d: divide by 255"
    )

    # Augmentation, eagerly and inside a tf.function; uint8 stays accepted.
    with pytest.raises(tf.errors.InvalidArgumentError, match=out_of_range):
        augment.augment_batch(as_255, SEED, **kw)
    traced = tf.function(lambda x: augment.augment_batch(x, SEED, **kw))
    with pytest.raises(tf.errors.InvalidArgumentError, match=out_of_range):
        traced(tf.constant(as_255))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"^image must be float.*up to 25"):
        augment.augment_single(as_255[0], SEED, **kw)
    with pytest.raises(TypeError, match=r"image must be float .*got dtype float64: cast"):
        augment.preprocess_for_eval(in_range.astype(np.float64), 8)
    with pytest.raises(TypeError, match="got dtype int32"):
        augment.augment_single_crop(pixels[0].astype(np.int32), SEED, **kw)
    with pytest.raises(ValueError, match=r"must be a batch \[batch, height, width, 3\], got shape"):
        augment.augment_batch(in_range[0], SEED, **kw)
    np.testing.assert_allclose(
        augment.augment_batch(pixels, SEED, **kw),
        augment.augment_batch(in_range, SEED, **kw),
        atol=1e-6,  # x * (1 / 255) inside the kernel against x / 255 here
    )

    # The reloaded SavedModel: run-time checks with the same words, not a concrete-function error.
    model, module = _tiny_export(tmp_path)
    want = model(in_range)["final_avg_pool"].numpy()
    np.testing.assert_allclose(module(in_range)["final_avg_pool"], want, atol=1e-6)
    np.testing.assert_allclose(module(pixels)["final_avg_pool"], want, atol=1e-6)  # uint8
    for call, message in [
        (lambda: module(as_255), out_of_range),
        (lambda: module(as_255, trainable=True), out_of_range),
        (lambda: module.serve(as_255), out_of_range),
        (lambda: module(in_range.astype(np.float64)), "got dtype float64: cast with tf.cast"),
        (lambda: module(pixels.astype(np.int64)), "got dtype int64"),
        (lambda: module(in_range[0]), r"must be a batch \[batch, height, width, 3\], got shape"),
        (lambda: module(in_range[..., :1]), r"must have 3 \(RGB\) channels"),
        (lambda: module(in_range[:0]), "empty batch"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call()


def _encoded(arr, fmt) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _cut_short(arr, fmt) -> bytes:
    """A real JPEG/PNG written by Pillow, cut in half as by an interrupted copy."""
    data = _encoded(arr, fmt)
    return data[: len(data) // 2]


def test_truncated_jpeg_and_png_are_counted_or_refused_up_front(tmp_path, caplog):
    rng = np.random.default_rng(0)

    def image():
        return rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)

    root = write_files(
        tmp_path / "imgs",
        {
            "train/a/good.png": png_bytes(image()),
            "train/a/cut.jpg": _cut_short(image(), "JPEG"),
            "train/b/good.jpg": _encoded(image(), "JPEG"),
            "train/b/cut.png": _cut_short(image(), "PNG"),
        },
    )
    with caplog.at_level(logging.WARNING, logger="tf_simclr.data"):
        ds, info = data_lib.load_source(root, split="train", with_ids=True)
    assert "Skipping 2 corrupt or non-image file(s)" in caplog.text
    assert "a/cut.jpg (truncated or corrupt JPEG" in caplog.text
    assert "b/cut.png (truncated or corrupt PNG" in caplog.text
    assert info.skipped_files == 2 and info.num_examples["train"] == 2
    ids = sorted(ex["id"].decode() for ex in ds.as_numpy_iterator())
    assert ids == ["a/good.png", "b/good.jpg"]

    strict = r"2 corrupt or non-image file\(s\) in .*cut\.jpg \(truncated or corrupt JPEG.*decoding"
    with pytest.raises(ValueError, match=strict + r".*cut\.png \(truncated or corrupt PNG"):
        data_lib.build_pretrain_dataset(root, batch_size=2, image_size=8, strict=True)
    # Through the runner: a Python error naming the file before any step, not a graph error.
    config = _config(tmp_path, dataset=root, strict_data=True, train_batch_size=2)
    with pytest.raises(ValueError, match=strict):
        runner.run(config)
    assert _no_checkpoint_written(tmp_path)


def test_evaluation_honours_strict_data_and_counts_skipped_files(tmp_path, caplog):
    rng = np.random.default_rng(0)

    def image():
        return rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)

    root = write_files(
        tmp_path / "imgs",
        {
            "train/a/0.png": png_bytes(image()),
            "train/b/0.png": png_bytes(image()),
            "test/a/0.png": png_bytes(image()),
            "test/a/cut.jpg": _cut_short(image(), "JPEG"),
            "test/b/0.png": png_bytes(image()),
            "test/b/notes.png": b"a text file with an image name",
        },
    )
    config = _config(tmp_path, dataset=root, strict_data=True, eval_batch_size=2)
    with pytest.raises(ValueError, match=r"2 corrupt or non-image .*cut\.jpg.*notes\.png"):
        factory.eval_dataset(config, "test")
    with caplog.at_level(logging.WARNING, logger="tf_simclr.data"):
        dataset = factory.eval_dataset(config.replace(strict_data=False), "test")
    assert "Skipping 2 corrupt or non-image file(s)" in caplog.text and "cut.jpg" in caplog.text
    assert sorted(np.concatenate([b["label"].numpy() for b in dataset]).tolist()) == [0, 1]


def test_eval_steps_evaluate_a_stratified_subset_not_the_first_class(tmp_path, caplog):
    """A class-sorted folder (12, 6 and 6 test images): --eval_steps=2 with batches of 4 used
    to evaluate 8 images of class 'a' only (accuracy 1.0 for a model that always says 'a')."""
    rng = np.random.default_rng(0)
    files = {f"train/{c}/0.png": png_bytes(np.zeros((8, 8, 3), np.uint8)) for c in "abc"}
    for c, n in (("a", 12), ("b", 6), ("c", 6)):
        for i in range(n):
            files[f"test/{c}/{i:02d}.png"] = png_bytes(
                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            )
    root = write_files(tmp_path / "imgs", files)
    config = _config(tmp_path, dataset=root, eval_steps=2, eval_batch_size=4, seed=3)

    def labels_and_pixels(dataset):
        batches = list(dataset.as_numpy_iterator())
        return (
            np.concatenate([b["label"] for b in batches]),
            np.concatenate([b["image"] for b in batches]),
        )

    with caplog.at_level(logging.WARNING, logger="tf_simclr.data"):
        labels, pixels = labels_and_pixels(factory.eval_dataset(config, "test"))
    assert np.bincount(labels, minlength=3).tolist() == [4, 2, 2]  # 12:6:6 of 24, in proportion
    assert "subset of split 'test'" in caplog.text and "8 of 24 examples" in caplog.text
    again, again_pixels = labels_and_pixels(factory.eval_dataset(config, "test"))
    np.testing.assert_array_equal(again, labels)  # deterministic
    np.testing.assert_array_equal(again_pixels, pixels)
    dataset, info = data_lib.build_eval_dataset(
        root, split="test", batch_size=5, image_size=8, max_examples=12, seed=0
    )
    assert info.num_examples["test"] == 12
    assert np.bincount(labels_and_pixels(dataset)[0], minlength=3).tolist() == [6, 3, 3]
    with pytest.raises(ValueError, match=r"max_examples must be a positive int.*got 0"):
        data_lib.build_eval_dataset(root, split="test", image_size=8, max_examples=0)


@pytest.mark.parametrize(
    "files, splits, error, message",
    [
        (
            ["stray.png", "train/a/0.png"],
            ["train"],
            ValueError,
            r"1 image\(s\) lie directly in the image folder .*'stray\.png'.*Move them into class",
        ),
        (
            ["train/0.png", "test/0.png"],
            ["train"],
            ValueError,
            r"Images lie directly in the split folder\(s\) \['test', 'train'\].*class folders",
        ),
        (
            ["train/1.png", "train/a/0.png"],
            ["train"],
            ValueError,
            r"split folder\(s\) \['train'\]",
        ),
        (
            ["train/a/0.png", "train/b/"],
            ["train"],
            ValueError,
            r"Class folder '.*train/b' has no images: add images .* or remove the folder",
        ),
        (
            ["train/a/0.png", "test/a/0.png", "test/z/0.png"],
            ["train", "test"],
            ValueError,
            r"Split 'test' of .* has class folder\(s\) \['z'\] that 'train' lacks",
        ),
        (
            ["train/a/0.png"],
            ["train", "test"],
            ValueError,
            r"Split 'test' not found .*available splits: \['train'\].*add .*test/<class>/",
        ),
        (
            ["train/a/0.png", "test/a/notes.txt"],
            ["train", "test"],
            ValueError,
            r"No readable images in '.*test' \(classes found: \['a'\]\)",
        ),
        (
            ["cat/0.png", "dog/0.png", "more/x/0.png"],
            ["train"],
            ValueError,
            r"mixes class folders \(e\.g\. 'cat' holds images\) with folders of folders",
        ),
    ],
    ids=[
        "image-at-root",
        "images-in-split-folders",
        "image-beside-class-folders",
        "empty-class-folder",
        "class-missing-from-train",
        "missing-split",
        "split-without-images",
        "mixed-layout",
    ],
)
def test_image_folder_layout_is_checked_before_training(tmp_path, files, splits, error, message):
    root = tmp_path / "imgs"
    for rel in files:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(error, match=message):
        data_lib.check_image_folder(str(root), splits)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # only looked
    # The same check runs where the folder is opened for a split (here: the training split).
    if splits == ["train"]:
        with pytest.raises(error, match=message):
            data_lib.load_source(str(root), split="train")


def test_valid_image_folder_layouts_pass_the_check(tmp_path):
    for rel in ("split/train/a/0.png", "split/train/b/0.png", "split/test/a/0.png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    assert data_lib.check_image_folder(str(tmp_path / "split"), ["train", "test"]) == ("a", "b")
    for rel in ("flat/cat/0.png", "flat/dog/0.png"):  # root/<class>/ is the training split
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    assert data_lib.check_image_folder(str(tmp_path / "flat")) == ("cat", "dog")


# ------------------------------------------------------------------------------------------
# Issue 13: results computed from something other than what was asked for
# ------------------------------------------------------------------------------------------
def _untrained_run(model_dir, **changes):
    """A model_dir holding config.json and a checkpoint (step 2) of an untrained network."""
    from tf_simclr.training import checkpoints as ckpt_lib

    config = tiny_config(model_dir, mode="train", **changes)
    model = factory.build_model(config, 10)
    step = tf.Variable(2, dtype=tf.int64)
    ckpt_lib.training_checkpoint(model, global_step=step).write(os.path.join(model_dir, "ckpt-2"))
    config.save(str(model_dir))
    return config


def _listing(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, names in os.walk(directory)
        for name in names
    )


@pytest.mark.parametrize("mode", ["eval", "export"])
def test_eval_and_export_refuse_a_checkpoint_of_another_architecture(tmp_path, mode):
    from tf_simclr.training.checkpoints import CheckpointError

    run_dir = tmp_path / "r34"
    deep = _untrained_run(run_dir, resnet_depth=34)
    before = _listing(run_dir)
    # CLI: the run's config.json supplies the architecture; contradicting it is an error.
    with pytest.raises(ConfigError, match=r"--resnet_depth=18 \(the run has 34\)"):
        config_from_argv(f"--model_dir={run_dir}", f"--mode={mode}", "--resnet_depth=18")
    assert config_from_argv(f"--model_dir={run_dir}", f"--mode={mode}").resnet_depth == 34
    # Library: the same check against config.json ...
    shallow = deep.replace(mode=mode, resnet_depth=18)
    with pytest.raises(ConfigError, match=r"--resnet_depth: 34 vs 18"):
        runner.run(shallow)
    # ... and, without config.json, against the checkpoint's own variables.
    os.remove(run_dir / "config.json")
    with pytest.raises(CheckpointError, match=r"another architecture.*holds \d+ weights"):
        runner.run(shallow)
    assert _listing(run_dir) == [p for p in before if p != "config.json"]


@pytest.mark.parametrize("source_depth, target_depth", [(34, 18), (18, 34)])
def test_finetune_refuses_a_checkpoint_of_another_architecture(
    tmp_path, source_depth, target_depth
):
    source = tmp_path / "pretrained"
    _untrained_run(source, resnet_depth=source_depth)
    os.remove(source / "config.json")  # the weights alone must tell
    config = _config(
        tmp_path,
        train_mode="finetune",
        checkpoint=str(source / "ckpt-2"),
        resnet_depth=target_depth,
        train_steps=1,
    )
    expected = "holds .* weights the model lacks" if source_depth > target_depth else "not in it"
    with pytest.raises(ValueError, match=f"another architecture.*{expected}"):
        runner.run(config)
    assert _no_checkpoint_written(tmp_path)


def test_finetune_takes_the_encoder_of_its_checkpoint_run(tmp_path):
    source = tmp_path / "pretrained"
    _untrained_run(source, resnet_depth=34, num_proj_layers=3)
    common = ["--train_mode=finetune", f"--checkpoint={source}", f"--model_dir={tmp_path / 'ft'}"]
    config = config_from_argv(*common)
    assert (config.resnet_depth, config.num_proj_layers) == (34, 3)
    with pytest.raises(ConfigError, match=r"--resnet_depth=18 \(the checkpoint's run has 34\)"):
        config_from_argv(*common, "--resnet_depth=18")


def test_untrained_probe_and_batches_without_negatives_are_refused():
    from tf_simclr.evaluation import evaluate

    with pytest.raises(ConfigError, match=r"--linear_eval_epochs=0 .*--nolinear_eval"):
        Config(linear_eval_epochs=0)
    Config(linear_eval_epochs=0, linear_eval=False)  # nothing to train: fine
    with pytest.raises(ConfigError, match=r"--train_batch_size=1 gives .* no negatives"):
        Config(train_batch_size=1)
    features = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    labels = np.arange(8) % 2
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        evaluate.linear_eval(features, labels, features, labels, num_classes=2, epochs=0)
    from tf_simclr.network import model as model_lib

    simclr = model_lib.build_model(
        resnet_depth=18, width_multiplier=0.125, image_size=16, num_classes=2, num_proj_layers=1
    )
    one = {
        "view1": np.zeros((1, 16, 16, 3), np.float32),
        "view2": np.zeros((1, 16, 16, 3), np.float32),
        "label": np.zeros((1,), np.int32),
    }
    with pytest.raises(ValueError, match="at least 2 images"):
        simclr.compute_objective(one, training=True)


def test_home_directory_is_expanded_in_model_dir_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = Config(model_dir="~/runs/a", train_mode="finetune", checkpoint="~/runs/p")
    assert config.model_dir == str(tmp_path / "runs" / "a")
    assert config.checkpoint == str(tmp_path / "runs" / "p")


def test_damaged_files_of_a_model_dir_are_named(tmp_path, caplog):
    from tf_simclr.training import checkpoints as ckpt_lib

    run_dir = tmp_path / "run"
    config = _untrained_run(run_dir)
    (run_dir / "config.json").write_text('{"resnet_depth": 18,')
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON .*damaged"):
        config_from_argv(f"--model_dir={run_dir}", "--mode=eval")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        runner.run(config.replace(mode="eval"))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2}\n')
    (run_dir / "checkpoint").write_text("garbage {{{\n")
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in train.read_history(str(run_dir))] == [1, 2]
        assert ckpt_lib.list_checkpoints(str(run_dir))[-1].endswith("ckpt-2")
        ckpt_lib.missing_index_checkpoints(str(run_dir))
    assert "metrics.jsonl: 1 line(s) cannot be parsed" in caplog.text
    assert "checkpoint cannot be parsed" in caplog.text


def test_tensorflow_errors_keep_their_cause_and_path():
    from tf_simclr import cli

    @tf.function
    def check(x):
        tf.debugging.assert_less_equal(tf.reduce_max(x), 1.0, message="images must be in [0, 1]")
        return x

    with pytest.raises(tf.errors.InvalidArgumentError) as graph_error:
        check(tf.constant([3.0]))
    text = cli.describe_tf_error(graph_error.value)
    assert "images must be in [0, 1]" in text and "Graph execution error" not in text
    assert "File " not in text
    ds = tf.data.Dataset.from_tensor_slices(["/no/such/image.jpg"]).map(tf.io.read_file)
    with pytest.raises(tf.errors.NotFoundError) as data_error:
        list(ds)
    assert "/no/such/image.jpg; No such file or directory" in cli.describe_tf_error(
        data_error.value
    )


def test_model_call_names_bad_images():
    from tf_simclr.network import model as model_lib

    model = model_lib.build_model(
        resnet_depth=18, width_multiplier=0.125, image_size=16, num_classes=3, num_proj_layers=1
    )
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    assert model(images)["final_avg_pool"].shape == (2, 64)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be float in \[0, 1\]"):
        model(images * 255.0)
    with pytest.raises(ValueError, match=r"images must be a batch \[batch, height, width, 3\]"):
        model(images[0])
    uint8 = (images * 255).round().astype(np.uint8)
    np.testing.assert_allclose(
        model(uint8)["final_avg_pool"],
        model(uint8 / np.float32(255))["final_avg_pool"],
        atol=1e-5,
    )


def test_eval_split_layout_is_checked_before_training(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    files = {f"train/{c}/{i}.png": png_bytes(pixels + i) for c in "ab" for i in range(4)}
    files.update({f"test/{c}/0.png": png_bytes(pixels) for c in "abz"})
    root = write_files(tmp_path / "images", files)
    config = _config(tmp_path, dataset=root, mode="train_then_eval", image_size=8)
    with pytest.raises(ValueError, match=r"'test' .*\['z'\] that 'train' lacks"):
        runner.run(config)
    assert _no_checkpoint_written(tmp_path)


def test_resuming_with_changed_settings_warns_and_keeps_the_history(pretrained_copy, caplog):
    import json

    first = tiny_config(pretrained_copy, mode="train", train_steps=2)  # the copied run's own
    assert first.temperature == 0.5
    # Changed at the resume (the warning and record come before any step; the run is done at
    # step 2, so no training step is traced).
    with caplog.at_level(logging.WARNING):
        runner.run(first.replace(temperature=0.2, learning_rate=0.5))
    assert "Resuming at step 2 with changed settings" in caplog.text
    assert "temperature: 0.5 -> 0.2" in caplog.text
    model_dir = pretrained_copy
    history = [json.loads(line) for line in (model_dir / "config_history.jsonl").open()]
    assert history == [
        {
            "step": 2,
            "changes": {"learning_rate": [first.learning_rate, 0.5], "temperature": [0.5, 0.2]},
            "time": history[0]["time"],
        }
    ]
    assert Config.load(str(model_dir)).temperature == 0.2


# ------------------------------------------------------------------------------------------
# More bad inputs found by trying tf_simclr as a new user (issue 13)
# ------------------------------------------------------------------------------------------
def test_model_dir_that_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("mine")
    with pytest.raises(OSError, match="is a file, not a directory"):
        runner.run(tiny_config(path, mode="train", train_steps=1))
    assert path.read_text() == "mine"


def test_evaluating_on_the_training_split_is_refused():
    with pytest.raises(ConfigError, match=r"--eval_split='train' is the training split"):
        Config(eval_split="train")
    Config(eval_split="train", mode="train")  # nothing evaluated: fine


def test_one_class_dataset_cannot_be_evaluated(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    files = {
        f"{s}/only/{i}.png": png_bytes(pixels + i) for s in ("train", "test") for i in range(4)
    }
    root = write_files(tmp_path / "images", files)
    config = _config(
        tmp_path, dataset=root, mode="train_then_eval", image_size=8, train_batch_size=4
    )
    with pytest.raises(ValueError, match="has 1 class: every accuracy would be 1.0"):
        runner.run(config)
    assert _no_checkpoint_written(tmp_path)
    runner.run(config.replace(mode="train"))  # pretraining needs no labels


def test_top5_is_not_reported_with_five_classes_or_fewer(caplog):
    from tf_simclr.evaluation import evaluate

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 3
    with caplog.at_level(logging.WARNING):
        knn = evaluate.knn_accuracy(x, y, x, y, num_classes=3, k=100)
    assert set(knn) == {"knn_top1"}
    assert "k=100 is more than the 40 training examples" in caplog.text
    y6 = np.arange(40) % 6
    assert set(evaluate.knn_accuracy(x, y6, x, y6, num_classes=6, k=5)) == {"knn_top1", "knn_top5"}


def _encoder_kernels(model) -> dict:
    return {
        w.path: w.numpy()
        for w in model.weights
        if w.path.endswith("kernel") and "head" not in w.path
    }


def test_finetune_checkpoint_given_as_index_file_or_damaged_newest(tmp_path, caplog):
    """Fine-tuning reads the checkpoint named by its .index file, and past a newer damaged
    checkpoint in a model_dir the previous intact one: with the encoder frozen
    (--fine_tune_after_block=4), its kernels end equal to those of ckpt-2 (random weights of
    seed 11), not to ckpt-5's (seed 99) nor to a fresh start's."""
    from tf_simclr.training import checkpoints as ckpt_lib
    from tf_simclr.workflows import warm_start

    source = tmp_path / "pretrained"
    keras.utils.set_random_seed(11)
    config = _untrained_run(source)
    expected = _encoder_kernels(_restored(source / "ckpt-2", config))
    ft = dict(train_mode="finetune", train_steps=1, steps_per_loop=1, fine_tune_after_block=4)
    result = runner.run(_config(tmp_path, checkpoint=str(source / "ckpt-2.index"), **ft))
    assert result["step"] == 1
    _assert_kernels(tmp_path / "model" / "ckpt-1", expected)
    # A newer damaged checkpoint in the pretraining model_dir is skipped, as when resuming.
    keras.utils.set_random_seed(99)
    model = factory.build_model(tiny_config(source), 10)
    newer = _encoder_kernels(model)
    assert all(not np.array_equal(newer[k], expected[k]) for k in expected)
    ckpt_lib.training_checkpoint(model, global_step=tf.Variable(5, dtype=tf.int64)).write(
        str(source / "ckpt-5")
    )
    data = source / "ckpt-5.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    # The warm start the run above made (train.restore calls it), given the model_dir: the
    # training step after it is the same as above, so it is not traced a second time.
    second_config = _config(tmp_path / "second", checkpoint=str(source), **ft)
    second = factory.build_model(second_config, 10)
    with caplog.at_level(logging.WARNING):
        warm_start.restore_initial_weights(second_config, second)
    assert f"Checkpoint {source / 'ckpt-5'} is damaged and was skipped" in caplog.text
    assert f"Using {source / 'ckpt-2'}; newer damaged checkpoint(s): {source / 'ckpt-5'}" in (
        caplog.text
    )
    got = {w.path: w.numpy() for w in second.weights}
    assert len(expected) > 10
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, path)


def _restored(prefix, config):
    """The network of `config` with the weights of checkpoint `prefix`."""
    from tf_simclr.training import checkpoints as ckpt_lib

    model = factory.build_model(config, 10)
    reader = tf.train.load_checkpoint(str(prefix))
    for w in model.weights:
        w.assign(reader.get_tensor(ckpt_lib.checkpoint_key(w.path)))
    return model


def _assert_kernels(prefix, expected: dict):
    from tf_simclr.training import checkpoints as ckpt_lib

    reader = tf.train.load_checkpoint(str(prefix))
    assert len(expected) > 10
    for path, value in expected.items():
        np.testing.assert_array_equal(reader.get_tensor(ckpt_lib.checkpoint_key(path)), value, path)


def test_a_batch_without_its_channel_axis_is_told_so():
    model = factory.build_model(tiny_config("/tmp/unused", image_size=16), 10)
    with pytest.raises(ValueError, match=r"got shape \[4, 16, 16\].*the channel axis is missing"):
        model(tf.zeros((4, 16, 16)))
    with pytest.raises(ValueError, match=r"\[16, 16, 3\].*add a batch axis \(images\[None\]\)"):
        model(tf.zeros((16, 16, 3)))


def test_a_binary_checkpoint_state_file_is_named_and_nothing_is_touched(pretrained_copy, caplog):
    """TensorFlow's readers fail on a non-text `checkpoint` state file with a bare
    UnicodeDecodeError; training says which file and what to do, before touching anything,
    and the fix it names (moving the file away) resumes from the checkpoint."""
    from tf_simclr.training.checkpoints import CheckpointError

    run_dir = pretrained_copy  # a finished 2-step run of the tiny settings, ckpt-2
    # Its own train_steps: the resume below restores ckpt-2 and has no step left to trace.
    config = tiny_config(run_dir, mode="train", train_steps=2)
    state = run_dir / "checkpoint"
    state.write_bytes(b"\xff\xfe\x00garbage")
    before = {name: (run_dir / name).read_bytes() for name in _listing(run_dir)}
    with pytest.raises(CheckpointError) as err:
        runner.run(config)
    message = str(err.value)
    assert f"{state} is not a checkpoint state file (binary data at byte 0)" in message
    assert "Move it away" in message and "ckpt-*.index" in message
    assert {name: (run_dir / name).read_bytes() for name in _listing(run_dir)} == before

    state.rename(run_dir / "checkpoint.damaged")
    with caplog.at_level(logging.INFO):
        result = runner.run(config)
    assert "Resuming from" in caplog.text and "ckpt-2 at step 2" in caplog.text
    assert result["step"] == 2
