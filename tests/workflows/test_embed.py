"""--mode=embed (tf_simclr.workflows.embed): the features written for an image folder are the
export's own outputs for the same images (decoded with PIL and resized here, independently of
the pipeline), in the order of the ids, paths and labels written with them; bad input stops
before anything is written, and a failed write leaves no file."""

import json
import logging
import os
import re
import shutil
import signal

import numpy as np
import pytest
import tensorflow as tf
from helpers.configs import tiny_config
from helpers.logs import log_messages
from PIL import Image

from tf_simclr import cli
from tf_simclr.config import Config, ConfigError, resolve
from tf_simclr.evaluation import visualize
from tf_simclr.workflows import embed, runner
from tf_simclr.workflows.report import format_report

CLASSES = ("cat", "dog")
IMAGE_SIZE = 16  # the tiny run's; the folder's 20 x 24 images are resized to it


def _write_folder(root, per_class=4):
    """root/test/<class>/<i>.png of random 20 x 24 images, two damaged files, and a train
    split; returns the good test files (sorted by class, then name)."""
    rng = np.random.default_rng(0)
    files = []
    for split in ("train", "test"):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                path = folder / f"{i}.png"
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(path)
                if split == "test":
                    files.append(str(path))
    signature, end = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"
    # Cut short: refused when the folder is listed.
    (root / "test" / "dog" / "9.png").write_bytes(signature + b"\x00" * 40)
    # Complete-looking but damaged inside: it passes the listing, and decoding skips it.
    (root / "test" / "cat" / "8.png").write_bytes(signature + b"\x00" * 40 + end)
    return files


def _export_outputs(export_path, files, keys):
    """{key: the export's output} for `files`, read with PIL and resized bicubically to the
    run's image size (the evaluation preprocessing: no crop at 32 px or less)."""
    module = tf.saved_model.load(export_path)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    images = tf.image.resize(pixels.astype(np.float32) / 255.0, (IMAGE_SIZE, IMAGE_SIZE), "bicubic")
    outputs = module(tf.clip_by_value(images, 0.0, 1.0), training=False)
    return {key: outputs[key].numpy() for key in keys}


@pytest.fixture(scope="module")
def run(pretrained_run, tmp_path_factory):
    """A tiny pretraining run with an export, an image folder, and the export's outputs for
    the folder's good test images (computed once: loading an export takes seconds). The run
    is a copy of the session's 2-step `pretrained_run`, exported by --mode=export (the same
    export training with --export writes, without training a run of its own here)."""
    model_dir = tmp_path_factory.mktemp("run") / "pretrain"
    shutil.copytree(pretrained_run, model_dir)
    result = runner.run(tiny_config(model_dir, mode="export", train_steps=2))
    folder = tmp_path_factory.mktemp("images")
    files = _write_folder(folder)
    outputs = _export_outputs(result["export_path"], files, ("final_avg_pool", "proj_head_output"))
    return dict(
        model_dir=str(model_dir),
        export=result["export_path"],
        folder=str(folder),
        files=files,
        outputs=outputs,
    )


def _embed_config(model_dir, folder, out, **changes):
    values = dict(
        mode="embed",
        dataset=str(folder),
        eval_split="test",
        eval_batch_size=3,  # 8 images: batches of 3, 3 and 2
        embed_out=str(out),
    )
    return tiny_config(model_dir, **{**values, **changes})


@pytest.fixture(scope="module")
def embedded(run, tmp_path_factory):
    """--mode=embed over the run's model_dir (its newest checkpoint), with a neighbour
    picture: (the folder written into, the summary returned, the log lines)."""
    out_dir = tmp_path_factory.mktemp("embedded")
    config = _embed_config(
        run["model_dir"], run["folder"], out_dir / "embeddings.npz", embed_neighbours=2
    )
    with log_messages("tf_simclr") as lines:
        summary = runner.run(config)
    return out_dir, summary, "\n".join(lines)


def test_checkpoint_features_are_the_exports_outputs_in_path_order(run, embedded):
    folder, files = run["folder"], run["files"]
    tmp_path, summary, log_text = embedded
    out = tmp_path / "embeddings.npz"
    assert re.search(r"batch 3/3 \d+ img/s", log_text)  # progress, in batches of 3
    assert "2 image(s) of split 'test' could not be read" in log_text
    assert "dog/9.png, cat/8.png" in log_text  # the damaged files are named
    saved = np.load(out)
    assert list(saved["paths"]) == files
    assert list(saved["ids"]) == [os.path.relpath(f, os.path.join(folder, "test")) for f in files]
    assert list(saved["labels"]) == [
        CLASSES.index(os.path.basename(os.path.dirname(f))) for f in files
    ]
    assert list(saved["class_names"]) == list(CLASSES)
    assert str(saved["output"]) == "final_avg_pool"
    expected = run["outputs"]["final_avg_pool"]
    assert saved["features"].dtype == np.float32 and saved["features"].shape == expected.shape
    np.testing.assert_allclose(saved["features"], expected, rtol=1e-4, atol=1e-5)
    on_disk = json.loads((tmp_path / "embeddings.json").read_text())
    assert on_disk["count"] == summary["count"] == len(files)
    assert on_disk["shape"] == [expected.shape[1]]
    assert on_disk["bad_images"] == 2
    assert on_disk["bad_image_names"] == ["dog/9.png", "cat/8.png"]
    written = ["embeddings.json", "embeddings.npz", "embeddings_neighbours.png"]
    assert sorted(os.listdir(tmp_path)) == written  # and no temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes


def _nothing_written(folder):
    return not os.path.exists(folder) or os.listdir(folder) == []


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("empty folder", ValueError, "is empty"),
        ("unlabelled, no image", ValueError, r"as unlabelled images \(--unlabelled\): No images"),
        ("unreadable images", ValueError, "No readable images"),
        ("no checkpoint", FileNotFoundError, "there is none"),
        (
            "images without class folders",
            ValueError,
            "lie directly in the image folder.*--unlabelled",
        ),
        ("missing split", ValueError, "Split 'test' not found"),
        ("strict data", ValueError, "corrupt or non-image file.*test/dog/9.png"),
        ("checkpoint over another run", ConfigError, "holds a run, whose settings"),
        ("unknown output", ConfigError, "'final_pool' is not an output of .* final_avg_pool"),
    ],
)
def test_bad_input_is_named_before_anything_is_written(run, tmp_path, case, error, message):
    model_dir, folder = run["model_dir"], run["folder"]
    out_dir = tmp_path / "out"
    changes = {}
    if case == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "unlabelled, no image":
        folder = tmp_path / "notes"
        (folder / "deep").mkdir(parents=True)
        (folder / "deep" / "a.txt").write_text("no image at any depth")
        changes["unlabelled"] = True
    elif case == "unreadable images":
        folder = tmp_path / "unreadable"
        for name in CLASSES:
            (folder / "test" / name).mkdir(parents=True)
            (folder / "test" / name / "a.jpg").write_bytes(b"not an image")
    elif case == "images without class folders":
        folder = tmp_path / "flat"
        folder.mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    elif case == "missing split":
        folder = tmp_path / "no_test"
        (folder / "train" / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "train" / "cat" / "a.png")
    elif case == "strict data":
        changes["strict_data"] = True
    elif case == "no checkpoint":
        model_dir = tmp_path / "untrained"
    elif case == "checkpoint over another run":
        changes["checkpoint"] = str(tmp_path / "elsewhere")
    else:
        changes["embed_output"] = "final_pool"
    config = _embed_config(model_dir, folder, out_dir / "e.npz", **changes)
    with pytest.raises(error, match=message):
        runner.run(config)
    assert _nothing_written(out_dir)


def test_a_published_module_is_sent_to_the_converter(run, tmp_path, reference_fixtures):
    module = os.path.join(reference_fixtures, "r18_cifar_w025_v1", "saved_model")
    config = _embed_config(tmp_path / "fresh", run["folder"], tmp_path / "e.npz", checkpoint=module)
    with pytest.raises(ValueError, match="not a tf_simclr export.*python -m tf_simclr.convert"):
        runner.run(config)
    assert os.listdir(tmp_path) == []  # nothing written


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def fail_halfway(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    arrays = {"features": np.zeros((2, 3), np.float32)}
    embed.write_embeddings(str(tmp_path / "e.npz"), arrays, {"count": 2})
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    monkeypatch.setattr(np, "savez", fail_halfway)
    with pytest.raises(OSError, match="No space left"):
        embed.write_embeddings(str(tmp_path / "e.npz"), arrays, {"count": 3})
    with pytest.raises(OSError, match="No space left"):
        embed.write_embeddings(str(tmp_path / "new.npz"), arrays, {"count": 2})
    # The earlier complete files are untouched, and nothing else (no temporary file) is left.
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
    assert sorted(before) == ["e.json", "e.npz"]


def test_command_line_embeds_with_an_export_the_output_asked_for(
    run, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "cli.npz"
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # keep pytest's capture
    previous = signal.getsignal(signal.SIGTERM)
    cli.FLAGS(
        [
            "tf-simclr",
            "--mode=embed",
            f"--model_dir={tmp_path / 'fresh'}",
            f"--checkpoint={run['export']}",
            f"--dataset={run['folder']}",
            "--eval_split=test",
            "--embed_output=proj_head_output",
            f"--embed_out={out}",
        ]
    )
    try:
        assert cli.main(["tf-simclr"]) == 0
    finally:
        cli.FLAGS.unparse_flags()
        signal.signal(signal.SIGTERM, previous)
    expected = run["outputs"]["proj_head_output"]
    np.testing.assert_allclose(np.load(out)["features"], expected, rtol=1e-4, atol=1e-5)
    report = capsys.readouterr().out
    assert f"(proj_head_output, {expected.shape[1]} each) of {len(run['files'])} images" in report
    assert "2 unreadable image(s) skipped" in report


def test_neighbour_picture_shows_the_nearest_images_by_the_features_written(run, embedded):
    files, tmp_path = run["files"], embedded[0]
    saved = np.load(tmp_path / "embeddings.npz")
    picture = np.asarray(Image.open(tmp_path / "embeddings_neighbours.png").convert("RGB"))
    # NumPy on the features written: the first and last image, each with its 7 most
    # cosine-similar other images (of 8).
    unit = saved["features"] / np.linalg.norm(saved["features"], axis=1, keepdims=True)
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    # The images as the model saw them: resized to 16 px here, shown 4x enlarged.
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]) / 255.0
    resized = tf.image.resize(pixels.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE), "bicubic")
    images = np.round(np.clip(resized.numpy(), 0, 1) * 255)
    tile, scale = IMAGE_SIZE * 4, 4
    for row, query in enumerate((0, len(files) - 1)):
        nearest = np.argsort(-similarities[query], kind="stable")[: len(files) - 1]
        for column, shown in enumerate([query, *nearest]):
            y, x = visualize.neighbour_tile_origin(row, column, tile)
            tile_pixels = picture[y : y + tile : scale, x : x + tile : scale].astype(float)
            assert np.abs(tile_pixels - images[shown]).max() <= 1, (row, column)
            if column:
                same = saved["labels"][shown] == saved["labels"][query]
                assert tuple(picture[y - 1, x]) == ((40, 170, 70) if same else (210, 50, 40))


def _embed_unlabelled(run, folder, out, **changes):
    """--mode=embed --unlabelled of `folder` with the run's newest checkpoint (a run trained
    with labels: the reading of the images to embed is not the model's)."""
    config = _embed_config(run["model_dir"], folder, out, unlabelled=True, **changes)
    return runner.run(config), np.load(out)


def test_an_unlabelled_split_folder_embeds_every_image_at_any_depth(run, tmp_path):
    """--unlabelled with ROOT/test present: every image under it (class folders or not), in
    path order, with the features of the export and the two damaged files counted."""
    summary, saved = _embed_unlabelled(run, run["folder"], tmp_path / "e.npz", embed_neighbours=2)
    files = run["files"]
    assert list(saved["paths"]) == sorted(files)
    np.testing.assert_allclose(
        saved["features"], run["outputs"]["final_avg_pool"], rtol=1e-4, atol=1e-5
    )
    assert list(saved["labels"]) == [-1] * len(files)  # no labels: -1, no classes
    assert list(saved["class_names"]) == []
    assert summary["labelled"] is False and summary["bad_images"] == 2
    assert summary["bad_image_names"] == ["dog/9.png", "cat/8.png"]
    picture = np.asarray(Image.open(summary["neighbours"]).convert("RGB"))
    for row in range(2):  # every neighbour framed grey: no class to match
        for column in range(1, len(files)):
            y, x = visualize.neighbour_tile_origin(row, column, IMAGE_SIZE * 4)
            assert tuple(picture[y - 1, x]) == (150, 150, 150), (row, column)


def test_any_folder_is_embedded_whole_without_the_split_folder(run, tmp_path):
    """A folder without a test/ folder, its images at several depths and no class folders:
    with --unlabelled every image is embedded (ids relative to the folder), features equal
    the export's for the same images; without it, the error names --unlabelled."""
    folder = tmp_path / "photos"
    targets = ["a.png", "2020/b.png", "2020/x/c.png", "2021/d.png", "2021/x/y/e.png"]
    for target, source in zip(targets, run["files"], strict=False):
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        (folder / target).write_bytes(open(source, "rb").read())
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "f.png").write_bytes(open(run["files"][5], "rb").read())
    (folder / "notes.txt").write_text("not an image")
    summary, saved = _embed_unlabelled(run, folder, tmp_path / "out" / "e.npz")
    written = {str(folder / t) for t in targets}
    assert set(saved["paths"]) == written and len(saved["paths"]) == len(written)
    assert list(saved["ids"]) == sorted(targets)
    source_of = dict(zip(targets, range(len(targets)), strict=False))
    expected = run["outputs"]["final_avg_pool"][[source_of[i] for i in saved["ids"]]]
    np.testing.assert_allclose(saved["features"], expected, rtol=1e-4, atol=1e-5)
    assert summary["bad_images"] == 0 and summary["count"] == len(targets)
    assert summary["folder"] == str(folder)  # read whole: it has no test/ folder
    report = format_report(summary, _embed_config(run["model_dir"], folder, "e.npz"))
    assert f"of {len(targets)} images at any depth under {folder} (unlabelled)" in report
    with pytest.raises(ValueError, match="--unlabelled"):
        runner.run(_embed_config(run["model_dir"], folder, tmp_path / "labelled" / "e.npz"))
    assert _nothing_written(tmp_path / "labelled")


def test_a_mixed_tfds_split_keeps_its_labels_and_minus_one(run, mixed_tfds, tmp_path):
    """A TFDS split of labelled and unlabelled images: every image embedded, with its stored
    label (read here with TFDS itself), -1 where it has none."""
    import tensorflow_datasets as tfds
    from helpers import mixed_tfds as mixed

    config = _embed_config(
        run["model_dir"],
        mixed.NAME,
        tmp_path / "e.npz",
        data_dir=str(mixed_tfds),
        eval_split=mixed.MIXED_SPLIT,
        eval_batch_size=8,
    )
    summary = runner.run(config)
    saved = np.load(tmp_path / "e.npz")
    builder = tfds.builder_from_directory(str(mixed_tfds / mixed.NAME / "1.0.0"))
    stored = builder.as_dataset(split=mixed.MIXED_SPLIT)
    label_of = {d["id"].decode(): int(d["label"]) for d in tfds.as_numpy(stored)}
    assert sorted(saved["ids"]) == sorted(label_of)
    assert [int(x) for x in saved["labels"]] == [label_of[i] for i in saved["ids"]]
    assert int(np.sum(saved["labels"] == -1)) == mixed.NUM_UNLABELLED
    counts = np.bincount(saved["labels"][saved["labels"] >= 0])
    assert counts.tolist() == [mixed.TRAIN_PER_CLASS] * 3
    assert list(saved["class_names"]) == list(mixed.CLASS_NAMES)
    assert summary["count"] == mixed.NUM_MIXED and summary["bad_images"] == 0


def test_embed_settings_are_neither_part_of_the_run_nor_inherited():
    embedding = dict(embed_output="proj_head_output", embed_out="x.npz", embed_neighbours=3)
    assert Config(**embedding).hash() == Config().hash()  # the same model, the same run
    saved = Config(**embedding)  # e.g. a config.json written by an earlier embed
    assert resolve({"mode": "embed"}, saved) == Config(mode="embed")
