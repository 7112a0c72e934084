"""Unlabelled image folders (issue "Learn from unlabelled images"): with unlabelled=True every
image at any depth under ROOT/<split> (or ROOT without a train/ folder) is read with label -1;
without it, images at the root or directly in a split folder stop with an error that names
--unlabelled; an evaluation folder needs the same classes in both splits; a folder without
images, or with none readable, stops with the count and the fix."""

import io
import json
import logging
import os

import numpy as np
import pytest
from helpers.files import png_bytes, write_files
from PIL import Image

from tf_simclr import data as D
from tf_simclr.data.identity import data_identity

RNG = np.random.default_rng(0)


def _png(size: int = 16) -> bytes:
    return png_bytes(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _jpeg(size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _undecodable_png() -> bytes:
    """A PNG whose first and last bytes look whole (signature, IEND) but whose header is
    zeroed: the listing's cheap check passes it, decoding fails."""
    data = bytearray(_png())
    data[16:24] = bytes(8)  # IHDR width and height 0
    return bytes(data)


def test_every_image_at_any_depth_under_train_is_read_with_label_minus_one(tmp_path):
    root = write_files(
        tmp_path / "photos",
        {
            "train/0.png": _png(),
            "train/trip/1.jpg": _jpeg(),
            "train/trip/day2/2.png": _png(),
            "train/other/3.jpeg": _jpeg(),
            "train/notes.txt": b"not an image",
            "train/.cache/4.png": _png(),  # hidden folders are not data
            "test/x/5.png": _png(),  # another split: train/ exists, so only it is read
        },
    )
    expected = {
        os.path.join(root, "train", rel)
        for rel in ("0.png", "trip/1.jpg", "trip/day2/2.png", "other/3.jpeg")
    }
    paths, bad, directory = D.list_unlabelled_images(root)
    assert set(paths) == expected and bad == [] and directory == os.path.join(root, "train")

    dataset, info = D.load_source(root, unlabelled=True, with_ids=True)
    examples = list(dataset.as_numpy_iterator())
    assert info.num_examples == {"train": 4} and info.num_classes == 0
    assert [int(e["label"]) for e in examples] == [D.UNLABELLED] * 4 == [-1] * 4
    assert {e["id"].decode() for e in examples} == {os.path.relpath(p, directory) for p in expected}
    assert sorted(e["image"].shape for e in examples) == [(16, 16, 3)] * 2 + [(20, 20, 3)] * 2


def test_a_folder_without_train_is_read_whole_and_class_folders_too(tmp_path):
    flat = write_files(tmp_path / "flat", {"a.png": _png(), "b.png": _png(), "sub/c.png": _png()})
    paths, _, directory = D.list_unlabelled_images(flat)
    assert directory == flat
    assert set(paths) == {os.path.join(flat, n) for n in ("a.png", "b.png", "sub/c.png")}
    assert D.describe_unlabelled_folder(flat) == (
        f"Reading {flat} as unlabelled images: 3 images in 1 sub-folder(s) and 2 directly in "
        "it; labels (class folders) ignored."
    )

    # A labelled folder read as unlabelled: the same files the labelled reading lists.
    classes = write_files(
        tmp_path / "classes",
        {f"train/{c}/{i}.png": _png() for c in ("cat", "dog", "eel") for i in range(3)}
        | {"test/cat/0.png": _png()},
    )
    labelled_paths, labels, names, _ = D.list_image_folder(classes, "train")
    unlabelled_paths, _, _ = D.list_unlabelled_images(classes)
    assert set(unlabelled_paths) == set(labelled_paths) and len(labelled_paths) == 9
    assert names == ("cat", "dog", "eel") and sorted(set(labels.tolist())) == [0, 1, 2]
    assert D.describe_unlabelled_folder(classes) == (
        f"Reading {os.path.join(classes, 'train')} as unlabelled images: 9 images in 3 "
        "sub-folder(s); labels (class folders) ignored."
    )


def test_the_pretraining_pipeline_yields_two_views_and_label_minus_one(tmp_path):
    root = write_files(tmp_path / "flat", {f"{i:02d}.png": _png() for i in range(10)})
    dataset, info = D.build_pretrain_dataset(
        root, batch_size=4, image_size=16, seed=1, unlabelled=True
    )
    batch = next(iter(dataset))
    assert batch["view1"].shape == batch["view2"].shape == (4, 16, 16, 3)
    assert batch["label"].numpy().tolist() == [-1] * 4
    assert D.count_examples(root, unlabelled=True) == 10 == info.num_examples["train"]


@pytest.mark.parametrize(
    "files, where, unlabelled_count",
    [
        # With a train/ folder, the unlabelled reading is that folder only.
        (("a.png", "train/cat/0.png"), "image folder", 1),
        (("a.png", "b.png"), "image folder", 2),
        (("train/0.png", "train/1.png", "train/c/2.png"), "split folder", 3),
    ],
    ids=["image-at-root", "only-images-at-root", "images-directly-in-train"],
)
def test_without_the_flag_images_outside_class_folders_name_unlabelled(
    tmp_path, files, where, unlabelled_count
):
    root = write_files(tmp_path / "x", {rel: _png() for rel in files})
    with pytest.raises(ValueError, match=rf"lie directly in the {where}.*--unlabelled"):
        D.load_source(root)
    assert D.count_examples(root, unlabelled=True) == unlabelled_count


def test_unlabelled_identity_counts_every_image_and_differs_from_the_labelled_one(tmp_path):
    root = write_files(
        tmp_path / "classes",
        {f"train/{c}/{i}.png": _png() for c in ("cat", "dog") for i in range(3)},
    )
    unlabelled = data_identity(root, None, "train", unlabelled=True)
    labelled = data_identity(root, None, "train")
    assert unlabelled["num_examples"] == labelled["num_examples"] == 6
    assert unlabelled["class_names"] == [] and unlabelled["unlabelled"] is True
    assert labelled["class_names"] == ["cat", "dog"]
    assert unlabelled["fingerprint"] != labelled["fingerprint"]
    write_files(tmp_path / "classes", {"train/cat/deeper/9.png": _png()})
    grown = data_identity(root, None, "train", unlabelled=True)
    assert grown["num_examples"] == 7 and grown["fingerprint"] != unlabelled["fingerprint"]


def test_an_unlabelled_folder_without_images_says_so(tmp_path):
    root = write_files(tmp_path / "nothing", {"train/a/readme.txt": b"hi", "train/b/c/x.csv": b"1"})
    for call in (
        lambda: D.load_source(root, unlabelled=True),
        lambda: data_identity(root, None, "train", unlabelled=True),
    ):
        with pytest.raises(ValueError, match=r"No images in '.*train' \(searched at any depth"):
            call()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_source(str(tmp_path / "missing"), unlabelled=True)


def test_all_unreadable_images_stop_with_their_count(tmp_path, caplog):
    root = write_files(
        tmp_path / "junk",
        {"0.png": b"not a png", "a/1.jpg": b"\xff\xd8\xff cut short", "a/2.png": b""},
    )
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match=r"all 3 image file\(s\) are corrupt or unreadable"):
            D.load_source(root, unlabelled=True)
    # The labelled reading says the same, with the count.
    labelled = write_files(tmp_path / "labelled", {"train/a/0.png": b"junk", "train/b/1.png": b""})
    with pytest.raises(ValueError, match=r"No readable images.*all 2 image file\(s\)"):
        D.load_source(labelled)


def test_images_that_look_whole_but_do_not_decode_are_caught(tmp_path):
    root = write_files(tmp_path / "bad", {"0.png": _undecodable_png(), "1.png": _undecodable_png()})
    paths, bad, _ = D.list_unlabelled_images(root)
    assert len(paths) == 2 and bad == []  # the cheap listing check cannot tell
    with pytest.raises(ValueError, match=r"None of the 2 image\(s\) of split 'train'.*decoded"):
        D.check_decodable(root, unlabelled=True)
    write_files(tmp_path / "bad", {"2.png": _png()})
    D.check_decodable(root, unlabelled=True)  # one good image is enough


def test_an_evaluation_folder_needs_the_same_classes_in_both_splits(tmp_path):
    same = write_files(
        tmp_path / "same",
        {f"{s}/{c}/0.png": _png() for s in ("train", "test") for c in ("cat", "dog")},
    )
    assert D.check_same_classes(same, ("train", "test")) == ("cat", "dog")
    fewer = write_files(
        tmp_path / "fewer",
        {"train/cat/0.png": _png(), "train/dog/0.png": _png(), "test/cat/0.png": _png()},
    )
    D.check_image_folder(fewer, ("train", "test"))  # fine for a labelled training folder
    with pytest.raises(
        ValueError, match=r"Split 'test' of .* lacks the class folder\(s\) \['dog'\]"
    ):
        D.check_same_classes(fewer, ("train", "test"))


def test_a_tfds_source_read_as_unlabelled_drops_its_labels():
    labelled, info = D.load_source("embedded", split="test")
    unlabelled, unlabelled_info = D.load_source("embedded", split="test", unlabelled=True)
    first = list(labelled.take(20).as_numpy_iterator())
    again = list(unlabelled.take(20).as_numpy_iterator())
    assert [int(e["label"]) for e in again] == [-1] * 20
    assert len({int(e["label"]) for e in first}) > 1  # the labels that were dropped
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert unlabelled_info.num_examples == info.num_examples
    assert (unlabelled_info.num_classes, unlabelled_info.class_names) == (0, ())
    assert info.num_classes == 10
    identity = data_identity("embedded", None, "test", unlabelled=True)
    assert identity["class_names"] == [] and identity["unlabelled"] is True
    assert identity["fingerprint"] != data_identity("embedded", None, "test")["fingerprint"]


def test_the_info_command_describes_an_unlabelled_folder(tmp_path, capsys):
    root = write_files(tmp_path / "flat", {"a.png": _png(), "b/c.png": _png(), "b/d.png": _png()})
    assert D.main(["info", root]) == 2
    assert "--unlabelled" in capsys.readouterr().err
    assert D.main(["info", root, "--unlabelled"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["num_examples"], info["num_classes"], info["kind"]) == ({"train": 3}, 0, "folder")
