"""Tests of tf_simclr.data: sources, pipelines, label fractions, sharding, conversion, bad input."""

import importlib.util
import io
import logging
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers.files import png_bytes
from PIL import Image

from tf_simclr import data as D
from tf_simclr.evaluation import preview

# Real CIFAR-10 as an image folder, in ../shared beside the checkout (not part of the repository).
CIFAR_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
    "shared",
    "data",
    "cifar10-jpeg",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/{train,test}/{cat,dog,eel}/ with RGB/gray/RGBA/palette images and bad files."""
    root = tmp_path_factory.mktemp("imgs") / "tiny"
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in (("train", 6), ("test", 2)):
        for ci, cls in enumerate(("cat", "dog", "eel")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                arr[..., 0] = 80 * ci  # class-specific red level, to check labels
                kind = i % 4
                if kind == 0:
                    (d / f"{i}.png").write_bytes(png_bytes(arr))
                    expected[(split, cls, i)] = arr
                elif kind == 1:
                    buf = io.BytesIO()
                    Image.fromarray(arr).convert("L").save(buf, format="JPEG", quality=95)
                    (d / f"{i}.jpg").write_bytes(buf.getvalue())
                elif kind == 2:
                    (d / f"{i}.png").write_bytes(
                        png_bytes(np.dstack([arr, np.full_like(arr[..., :1], 255)]))
                    )
                else:
                    (d / f"{i}.png").write_bytes(png_bytes(arr, "P"))
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"this is not an image")
    (root / "train" / "dog" / "empty.png").write_bytes(b"")
    (root / "train" / "dog" / "notes.txt").write_text("ignored: not an image extension")
    return root, expected


# ------------------------------------------------------------------------------------------
# Embedded dataset
# ------------------------------------------------------------------------------------------
def test_embedded_source_info_and_examples():
    ds, info = D.load_source("embedded", split="train")
    assert info.num_examples == {"train": 5000, "test": 1000}
    assert info.num_classes == 10 and len(info.class_names) == 10
    assert info.image_shape == (32, 32, 3) and info.kind == "embedded"
    labels = []
    for ex in ds.take(300):
        assert ex["image"].dtype == tf.uint8 and ex["image"].shape == (32, 32, 3)
        labels.append(int(ex["label"]))
    assert set(labels) == set(range(10))


def _generator():
    """data/generate_embedded.py, the embedded dataset's generator (a script beside the data)."""
    path = os.path.join(os.path.dirname(os.path.dirname(D.__file__)), "..", "data")
    spec = importlib.util.spec_from_file_location(
        "generate_embedded", os.path.join(path, "generate_embedded.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedded_dataset_lives_in_the_top_level_data_folder():
    """Found relative to the package (a checkout's data/ folder beside it; an installed wheel's
    tf_simclr/embedded_data/, tests/test_packaging.py), not to the cwd."""
    import tf_simclr

    package = os.path.dirname(os.path.abspath(tf_simclr.__file__))
    assert D.EMBEDDED_DIR == os.path.join(os.path.dirname(package), "data")
    version_dir = os.path.join(D.EMBEDDED_DIR, "shapes10", "1.0.0")
    assert os.path.isfile(os.path.join(version_dir, "dataset_info.json"))
    G = _generator()

    # The generator writes to the same place by default.
    assert G.argument_parser().parse_args([]).out == D.EMBEDDED_DIR


def test_embedded_generator_is_deterministic():
    G = _generator()

    a = G.make_image(np.random.default_rng(5), 3)
    b = G.make_image(np.random.default_rng(5), 3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    # The first stored test image is the generator's first test image (same seed, same bytes).
    ds, _ = D.load_source("embedded", split="test", with_ids=True)
    got = {ex["id"].numpy().decode(): ex for ex in ds.take(1000)}
    for i in (0, 1, 999):
        image, label = G.make_example(G.SEED + 1, G.NUM_TEST, i)
        ex = got[f"test_{i:05d}"]
        assert int(ex["label"]) == label
        np.testing.assert_array_equal(ex["image"].numpy(), image)


def test_pretrain_pipeline_embedded_shapes_determinism_and_views():
    kw = dict(batch_size=32, image_size=32, augmentations="cifar", seed=3, shuffle_buffer=500)
    ds, info = D.build_pretrain_dataset(**kw)
    b1 = [b for b in ds.take(2)]
    b2 = [b for b in D.build_pretrain_dataset(**kw)[0].take(2)]
    b3 = next(iter(D.build_pretrain_dataset(**{**kw, "seed": 4})[0]))
    first = b1[0]
    assert set(first) == {"view1", "view2", "label"}
    assert first["view1"].shape == (32, 32, 32, 3) and first["view1"].dtype == tf.float32
    assert first["label"].dtype == tf.int32 and first["label"].shape == (32,)
    for k in first:
        np.testing.assert_array_equal(b1[1][k].numpy(), b2[1][k].numpy())
    assert not np.array_equal(first["view1"].numpy(), b3["view1"].numpy())
    v1, v2 = first["view1"].numpy(), first["view2"].numpy()
    assert v1.min() >= 0.0 and v1.max() <= 1.0
    assert np.mean(np.abs(v1 - v2), axis=(1, 2, 3)).min() > 1e-3  # views differ per image


def test_eval_pipeline_single_pass_no_crop_at_32px():
    ds, info = D.build_eval_dataset("embedded", split="test", batch_size=300, image_size=32)
    sizes = [int(b["label"].shape[0]) for b in ds]
    assert sizes == [300, 300, 300, 100]
    src, _ = D.load_source("embedded", split="test")
    img = next(iter(src))["image"].numpy() / 255.0
    first = next(iter(ds))["image"][0].numpy()
    np.testing.assert_allclose(first, img, atol=1e-6)


def test_label_fraction_indices_balanced_deterministic():
    labels = np.repeat(np.arange(5), 200)
    idx = D.label_fraction_indices(labels, 0.1, seed=0)
    assert len(idx) == 100 and np.all(np.bincount(labels[idx]) == 20)
    np.testing.assert_array_equal(idx, D.label_fraction_indices(labels, 0.1, seed=0))
    assert not np.array_equal(idx, D.label_fraction_indices(labels, 0.1, seed=1))
    assert len(D.label_fraction_indices(labels, 0.001)) == 5  # at least one per class
    with pytest.raises(ValueError, match="label_fraction"):
        D.label_fraction_indices(labels, 1.5)


def test_finetune_label_fraction_and_ids_file(tmp_path, mixed_tfds):
    # The session's tiny TFDS dataset (3 classes of 4 training images, ids train_000..011): a
    # labelled subset's pipeline reads the whole split to pick its examples, once per epoch.
    from helpers.mixed_tfds import NAME

    data = dict(dataset=NAME, data_dir=str(mixed_tfds), image_size=16)
    ds, info = D.build_finetune_dataset(
        **data, batch_size=6, label_fraction=0.5, seed=0, shuffle_buffer=100
    )
    assert info.num_examples["train"] == 6
    b = next(iter(ds))
    assert b["image"].shape == (6, 16, 16, 3) and b["label"].dtype == tf.int32
    seen = np.concatenate([x["label"].numpy() for x in ds.take(4)])
    assert np.all(np.bincount(seen, minlength=3) == 8)  # 2 per class, 4 epochs
    ids = tmp_path / "ids.txt"
    ids.write_text("# three examples\ntrain_000\ntrain_007\n\ntrain_011\n")
    ds, info = D.build_finetune_dataset(**data, batch_size=3, label_ids_file=str(ids))
    assert info.num_examples["train"] == 3
    ids.write_text("train_000\nnot_an_id\n")
    with pytest.raises(ValueError, match="not_an_id"):
        D.build_finetune_dataset(**data, batch_size=3, label_ids_file=str(ids))
    with pytest.raises(FileNotFoundError, match="Label ids file"):
        D.build_finetune_dataset(**data, batch_size=3, label_ids_file=str(tmp_path / "x"))


def test_sharding_gives_disjoint_covering_parts():
    parts = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2
        )
        ds, _ = D.load_source("embedded", split="test", input_context=ctx, with_ids=True)
        parts.append({x.decode() for x in ds.map(lambda d: d["id"]).as_numpy_iterator()})
    assert not parts[0] & parts[1]
    assert len(parts[0] | parts[1]) == 1000
    ctx = tf.distribute.InputContext(2, 1, 2)
    ds, _ = D.build_pretrain_dataset(batch_size=64, input_context=ctx, seed=0, shuffle_buffer=64)
    assert next(iter(ds))["view1"].shape[0] == 32  # per-replica batch


# ------------------------------------------------------------------------------------------
# Image folders and conversion
# ------------------------------------------------------------------------------------------
def test_image_folder_modes_labels_and_corrupt_files(folder, caplog):
    root, expected = folder
    with caplog.at_level(logging.WARNING, logger="tf_simclr.data"):
        ds, info = D.load_source(str(root), split="train", with_ids=True)
    assert "Skipping 2 corrupt" in caplog.text and "broken.jpg" in caplog.text
    assert info.class_names == ("cat", "dog", "eel") and info.num_classes == 3
    assert info.num_examples == {"train": 18, "test": 6} and info.skipped_files == 2
    exs = list(ds.as_numpy_iterator())
    assert len(exs) == 18
    for ex in exs:
        assert ex["image"].shape == (12, 12, 3) and ex["image"].dtype == np.uint8
        cls = ex["id"].decode().split("/")[0]
        assert ex["label"] == info.class_names.index(cls)
        i = int(ex["id"].decode().split("/")[1].split(".")[0])
        if ("train", cls, i) in expected:  # lossless RGB PNG: exact pixels
            np.testing.assert_array_equal(ex["image"], expected[("train", cls, i)])
    with pytest.raises(ValueError, match="broken.jpg"):
        D.load_source(str(root), split="train", strict=True)


def test_truncated_image_is_skipped_not_crashing(tmp_path):
    root = tmp_path / "f" / "train" / "a"
    root.mkdir(parents=True)
    good = png_bytes(np.zeros((8, 8, 3), np.uint8))
    (root / "good.png").write_bytes(good)
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(buf, format="JPEG")
    (root / "cut.jpg").write_bytes(buf.getvalue()[:40])  # valid header, truncated body
    ds, _ = D.load_source(str(tmp_path / "f"))
    assert len(list(ds)) == 1


def test_folder_pipelines_variable_size_route(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        d = tmp_path / "v" / "train" / cls
        d.mkdir(parents=True)
        for i, (h, w) in enumerate([(40, 30), (25, 50), (64, 64), (20, 20)]):
            (d / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    src = str(tmp_path / "v")
    ds, info = D.build_pretrain_dataset(src, batch_size=4, image_size=24, augmentations="imagenet")
    assert info.image_shape == (None, None, 3)
    b = next(iter(ds))
    assert b["view1"].shape == (4, 24, 24, 3) and b["view2"].shape == (4, 24, 24, 3)
    ev, _ = D.build_eval_dataset(src, split="train", batch_size=3, image_size=48)
    assert [x["image"].shape[0] for x in ev] == [3, 3, 2]


def test_convert_folder_to_tfds_dir_and_load(folder, tmp_path, capsys):
    root, expected = folder
    out = D.convert_image_folder(str(root), str(tmp_path / "tfds"), name="tiny")
    assert out == str(tmp_path / "tfds" / "tiny" / "1.0.0")
    assert os.path.isfile(os.path.join(out, "dataset_info.json"))
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(out)
    assert builder.info.splits["train"].num_examples == 18
    assert builder.info.splits["test"].num_examples == 6
    for path in (out, str(tmp_path / "tfds" / "tiny")):  # version dir or dataset dir
        ds, info = D.load_source(path, split="train", with_ids=True)
        assert info.kind == "tfds_dir" and info.class_names == ("cat", "dog", "eel")
        assert info.image_shape == (12, 12, 3)
    for ex in ds.as_numpy_iterator():
        cls, name = ex["id"].decode().split("/")
        assert ex["label"] == ("cat", "dog", "eel").index(cls)
        i = int(name.split(".")[0])
        if ("train", cls, i) in expected:
            np.testing.assert_array_equal(ex["image"], expected[("train", cls, i)])
    for name in ("tiny", "tiny:1.0.0"):  # a TFDS name prepared in data_dir
        ds2, info2 = D.load_source(name, data_dir=str(tmp_path / "tfds"), split="test")
        assert info2.kind == "tfds" and len(list(ds2)) == 6
    b = next(iter(D.build_pretrain_dataset(out, batch_size=4, image_size=16)[0]))
    assert b["view1"].shape == (4, 16, 16, 3)
    # The command line: progress bar, exit code, refusal to overwrite.
    assert (
        D.main(["convert", "--src", str(root), "--dst", str(tmp_path / "cli"), "--name", "t2"]) == 0
    )
    assert "t2/train" in capsys.readouterr().err
    assert (
        D.main(["convert", "--src", str(root), "--dst", str(tmp_path / "cli"), "--name", "t2"]) == 2
    )
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ValueError, match="broken.jpg"):
        D.convert_image_folder(str(root), str(tmp_path / "s"), strict=True)


@pytest.mark.skipif(
    not os.path.isdir(CIFAR_DIR),
    reason=f"real CIFAR-10 image folder not found at {CIFAR_DIR} (../shared/data/cifar10-jpeg "
    "from the repository root)",
)
def test_real_cifar10_jpeg_folder():
    ds, info = D.load_source(CIFAR_DIR, split="test", shuffle_files=True, seed=0)
    assert info.num_examples == {"test": 10000, "train": 50000}
    assert info.class_names[:3] == ("airplane", "automobile", "bird")
    exs = list(ds.take(8).as_numpy_iterator())
    assert all(e["image"].shape == (32, 32, 3) for e in exs)
    assert len({int(e["label"]) for e in exs}) > 2  # shuffled file list mixes classes
    mean = np.mean([e["image"].mean() for e in exs]) / 255
    assert 0.2 < mean < 0.8


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        D.load_source(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "train" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "a" / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="No readable images"):
        D.load_source(str(tmp_path / "noimg"))
    t = time.time()
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset_xyz'"):
        D.load_source("no_such_dataset_xyz")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        D.load_source("cifar10", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        D.load_source("imagenet2012_subset/1pct", data_dir=str(tmp_path))
    assert time.time() - t < 20  # never waits on downloads
    with pytest.raises(ValueError, match="Split 'validation' not in dataset"):
        D.load_source("embedded", split="validation")
    with pytest.raises(ValueError, match="Unknown augmentation"):
        D.build_pretrain_dataset(augmentations="crop,warp")
    with pytest.raises(FileNotFoundError, match="Source folder"):
        D.convert_image_folder(str(tmp_path / "nope"), str(tmp_path / "out"))
    bad = tmp_path / "badtfds" / "1.0.0"
    bad.mkdir(parents=True)
    (bad / "dataset_info.json").write_text("{not json")
    with pytest.raises(ValueError, match="TFDS-format directory"):
        D.load_source(str(tmp_path / "badtfds"))


def test_preview_writes_png(tmp_path):
    path = preview.write_preview(str(tmp_path / "p.png"), num_images=3, image_size=32, seed=1)
    img = np.asarray(Image.open(path))
    assert img.ndim == 3 and img.shape[2] == 3
    assert img.shape[1] > img.shape[0] / 3 * 2  # three columns: original + two views


def test_start_batch_resumes_the_stream_exactly(mixed_tfds):
    """Batches from a stream started at batch 3 equal batches 3.. of a fresh stream (on the
    session's tiny TFDS dataset, 12 training images: batch 3 starts in the middle of the
    second epoch, and the batches run into the third)."""
    from helpers.mixed_tfds import NAME

    kw = dict(batch_size=5, image_size=16, augmentations="cifar", seed=5)
    fresh, _ = D.build_pretrain_dataset(NAME, data_dir=str(mixed_tfds), **kw)
    resumed, _ = D.build_pretrain_dataset(NAME, data_dir=str(mixed_tfds), start_batch=3, **kw)
    want = list(fresh.take(5))[3:]
    got = list(resumed.take(2))
    for a, b in zip(want, got, strict=True):
        for key in ("view1", "view2", "label"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_direct_decode_and_converter_agree_on_transparent_and_gray_images(tmp_path):
    # Direct loading (tf.io) and the converter (PIL) must give the same RGB pixels: alpha
    # blended over white, gray replicated, palettes expanded.
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    images = {
        "rgba": Image.fromarray(rgba, "RGBA"),
        "la": Image.fromarray(rgba[..., 2:], "LA"),
        "gray": Image.fromarray(rgba[..., 0], "L"),
        "palette": Image.fromarray(rgba[..., :3], "RGB").convert("P"),
        "rgb": Image.fromarray(rgba[..., :3], "RGB"),
    }
    for name, im in images.items():
        path = str(tmp_path / f"{name}.png")
        im.save(path)
        with open(path, "rb") as f:
            direct = D._decode(tf.constant(f.read())).numpy()
        converted, size = D._read_as_rgb_bytes(path)
        via_converter = np.asarray(Image.open(io.BytesIO(converted)).convert("RGB"))
        assert direct.shape == via_converter.shape == (9, 7, 3) and size == (9, 7), name
        diff = np.abs(direct.astype(int) - via_converter.astype(int)).max()
        assert diff <= 1, (name, diff)  # rounding of the blend only
    # Alpha 0 shows white, not the hidden colour values.
    clear = rgba.copy()
    clear[..., 3] = 0
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    with open(tmp_path / "clear.png", "rb") as f:
        assert (D._decode(tf.constant(f.read())).numpy() == 255).all()


@pytest.mark.parametrize("num_views,brightness", [(2, "multiplicative"), (1, "additive")])
def test_large_image_route_equals_augment_single_per_image(num_views, brightness):
    # The crop-stage route (crop per image, the rest per batch) must give each image the
    # views augment_single gives it from its per-example seed, including a partial last
    # batch and a stream resumed at batch 1.
    from tf_simclr import augment as A

    rng = np.random.default_rng()
    sizes = [(int(rng.integers(30, 100)), int(rng.integers(30, 100))) for _ in range(7)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    src = tf.data.Dataset.from_generator(
        lambda: ((im, i) for i, im in enumerate(images)),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int64)),
    )
    info = D.DatasetInfo(num_examples={"train": 7}, num_classes=7, image_shape=(None, None, 3))
    seed = tf.constant([int(rng.integers(1 << 30)), 1], tf.int64)
    ops = ("crop", "flip", "color", "blur")
    kw = dict(per_replica=3, image_size=36, ops=ops, strength=1.0, seed=seed)
    kw.update(num_views=num_views, brightness=brightness, blur_per_image=True)
    batches = list(D._augmented(src, info, drop_remainder=False, **kw).as_numpy_iterator())
    assert [len(b["label"]) for b in batches] == [3, 3, 1]
    keys = ["view1", "view2"] if num_views == 2 else ["image"]
    for i, image in enumerate(images):
        batch, row = batches[i // 3], i % 3
        assert batch["label"][row] == i
        s = D._fold(D._fold(seed, i), 7)
        for v, key in enumerate(keys):
            want = A.augment_single(
                image,
                D._fold(s, v),
                image_size=36,
                augmentations=ops,
                color_jitter_strength=1.0,
                brightness=brightness,
            )
            # Same arithmetic in two compiled programs: equal up to float rounding.
            np.testing.assert_allclose(batch[key][row], want.numpy(), rtol=0, atol=1e-6)
    resumed = D._augmented(src, info, drop_remainder=False, start_batch=1, **kw)
    for want, got in zip(batches[1:], resumed.as_numpy_iterator(), strict=True):
        for key in [*keys, "label"]:
            np.testing.assert_array_equal(got[key], want[key])


def test_split_labels_are_cached_only_by_a_label_cache_the_caller_owns(monkeypatch, mixed_tfds):
    from helpers.mixed_tfds import NAME

    from tf_simclr.data import labels

    reads = []
    read = labels._read_labels_and_ids
    monkeypatch.setattr(labels, "_read_labels_and_ids", lambda raw: reads.append(1) or read(raw))
    # The session's tiny TFDS dataset (its labels are read from the records, as the embedded
    # dataset's are): 12 records a read instead of 5000.
    data = dict(dataset=NAME, data_dir=str(mixed_tfds))
    kw = dict(**data, batch_size=3, image_size=16, label_fraction=0.5, seed=0)
    _, first = D.build_finetune_dataset(**kw)
    assert first.num_examples["train"] == 6
    D.build_finetune_dataset(**kw)
    assert len(reads) == 2  # no hidden process-wide cache
    cache = D.LabelCache()
    _, cached = D.build_finetune_dataset(**kw, label_cache=cache)
    D.build_finetune_dataset(**kw, label_cache=cache)
    D.build_eval_dataset(**data, split="train", max_examples=6, label_cache=cache)
    assert len(reads) == 3  # one read for the cache's lifetime
    assert cached.num_examples == first.num_examples


@pytest.mark.parametrize(
    "dataset, split",
    [
        ("embedded", "train"),
        ("embedded", "test[17:301]"),
        ("mixed3", "train"),
        ("mixed3", "unlabelled"),
        ("mixed3", "train+unlabelled"),
    ],
)
def test_records_parsed_directly_are_what_tfds_reads(dataset, split, mixed_tfds, monkeypatch):
    """A TFDS split's labels and ids parsed in batches from its record files, and the examples
    a subset keeps parsed from the chosen records, equal what reading through TFDS gives, in
    its order (slices included). Splits TFDS reads in another order than file after file (a
    union of two splits: interleaved) and a split read as unlabelled go through TFDS."""
    from tf_simclr.data import labels, sources

    data_dir = str(mixed_tfds) if dataset == "mixed3" else None
    raw = sources._open_raw(dataset, data_dir, split, False, None, warn=False)
    if "+" in split:
        assert raw.records is None
        return
    assert raw.records is not None
    unlabelled = sources._open_raw(dataset, data_dir, split, False, None, unlabelled=True)
    assert unlabelled.records is None
    assert set(labels._read_labels_and_ids(unlabelled)[0]) == {-1}
    size = raw.info.num_examples[split]
    chosen = np.random.default_rng(0).choice(size, size // 3, replace=False)

    def read():
        label_ids = labels._read_labels_and_ids(
            sources._open_raw(dataset, data_dir, split, False, None, warn=False)
        )
        subset, _ = D.load_source(
            dataset, data_dir=data_dir, split=split, indices=chosen, with_ids=True
        )
        return label_ids, [{k: v.numpy() for k, v in x.items()} for x in subset]

    (parsed_labels, parsed_ids), parsed_subset = read()
    monkeypatch.setattr(sources, "_records_in_read_order", lambda *args: None)
    (tfds_labels, tfds_ids), tfds_subset = read()
    np.testing.assert_array_equal(parsed_labels, tfds_labels)
    assert parsed_labels.dtype == np.int64 and len(parsed_labels) == size
    assert parsed_ids == tfds_ids and len(set(parsed_ids)) == size
    assert len(parsed_subset) == len(tfds_subset) == len(chosen)
    for ours, theirs in zip(parsed_subset, tfds_subset, strict=True):
        assert ours["id"] == theirs["id"] and ours["label"] == theirs["label"]
        np.testing.assert_array_equal(ours["image"], theirs["image"])
    assert [x["id"].decode() for x in parsed_subset] == [tfds_ids[i] for i in sorted(chosen)]


def test_count_examples_of_a_split_or_its_labelled_subset(folder, tmp_path):
    root, _ = folder
    assert D.count_examples("embedded") == 5000
    assert D.count_examples("embedded", split="test") == 1000
    # Each subset count reads the split's labels: the counts after the first share one read
    # (the pipeline below reads its own).
    cache = D.LabelCache()
    assert D.count_examples("embedded", label_fraction=1.0) == 5000
    _, info = D.build_finetune_dataset(batch_size=1, label_fraction=0.01, seed=2)
    assert D.count_examples("embedded", label_fraction=0.01, seed=2, label_cache=cache) == 50
    assert info.num_examples["train"] == 50
    ids = tmp_path / "ids.txt"
    ids.write_text("train_00000\ntrain_00007\ntrain_00042\ntrain_00007\n")
    assert D.count_examples("embedded", label_ids_file=str(ids), label_cache=cache) == 3
    assert D.count_examples(str(root)) == 18  # the 2 damaged files are not examples
    assert D.count_examples(str(root), label_fraction=0.5) == 9
    with pytest.raises(ValueError, match="broken.jpg"):
        D.count_examples(str(root), strict=True)
    with pytest.raises(ValueError, match="not both"):
        D.count_examples("embedded", label_fraction=0.1, label_ids_file=str(ids))


def test_num_train_examples_builds_no_input_pipeline(tmp_path, monkeypatch):
    from tf_simclr import factory
    from tf_simclr.config import Config

    def no_pipeline(*args, **kwargs):
        raise AssertionError("an input pipeline was built to count examples")

    for name in ("build_finetune_dataset", "build_pretrain_dataset", "load_source"):
        monkeypatch.setattr(D, name, no_pipeline)
    finetune = Config(
        model_dir=str(tmp_path), train_mode="finetune", checkpoint="/ckpt-1", label_fraction=0.01
    )
    assert factory.num_train_examples(finetune) == 50
    assert factory.num_train_examples(finetune.replace(label_fraction=None)) == 5000
    assert factory.num_train_examples(Config(model_dir=str(tmp_path))) == 5000


def _first_batch(dataset_and_info):
    dataset = dataset_and_info[0] if isinstance(dataset_and_info, tuple) else dataset_and_info
    return {k: v.numpy() for k, v in next(iter(dataset)).items()}


@pytest.mark.parametrize("side", [32, 80])  # the whole-batch route, and the crop-per-image one
def test_finetune_augmentations_are_the_pretraining_first_view(tmp_path, side):
    if side == 32:
        src = "embedded"
    else:
        rng = np.random.default_rng(1)
        for cls in ("a", "b"):
            d = tmp_path / "big" / "train" / cls
            d.mkdir(parents=True)
            for i in range(4):
                (d / f"{i}.png").write_bytes(
                    png_bytes(rng.integers(0, 256, (side, side, 3), np.uint8))
                )
        src = str(tmp_path / "big")
    kw = dict(batch_size=4, image_size=side, seed=7, shuffle_buffer=100)
    aug = dict(augmentations="crop,flip,color", color_jitter_strength=0.6, brightness="additive")
    default = _first_batch(D.build_finetune_dataset(src, **kw))
    tuned = _first_batch(D.build_finetune_dataset(src, **kw, **aug))
    first_view = _first_batch(D.build_pretrain_dataset(src, **kw, **aug))
    assert np.abs(tuned["image"] - default["image"]).max() > 0.1  # the colour ops ran
    np.testing.assert_array_equal(tuned["label"], first_view["label"])
    np.testing.assert_array_equal(tuned["image"], first_view["view1"])


def test_finetune_dataset_fn_uses_the_configured_augmentations(tmp_path, mixed_tfds):
    from helpers.mixed_tfds import NAME

    from tf_simclr import factory
    from tf_simclr.config import Config

    # The session's tiny TFDS dataset (12 training images of 16 px, the fixed-size route as
    # the embedded one's): each pipeline fills its shuffle buffer with 12 images, not 5000.
    data = dict(dataset=NAME, data_dir=str(mixed_tfds))
    config = Config(
        model_dir=str(tmp_path),
        train_mode="finetune",
        checkpoint="/ckpt-1",
        seed=4,
        image_size=16,
        **data,
    )
    kw = dict(batch_size=8, image_size=config.image_size, seed=4, **data)

    def from_config(**changes):
        return _first_batch(factory.finetune_dataset_fn(config.replace(**changes), 8)())

    np.testing.assert_array_equal(
        from_config()["image"], _first_batch(D.build_finetune_dataset(**kw))["image"]
    )
    aug = dict(augmentations="crop,flip,color", color_jitter_strength=0.5, brightness="additive")
    np.testing.assert_array_equal(
        from_config(**aug)["image"], _first_batch(D.build_pretrain_dataset(**kw, **aug))["view1"]
    )
    blurred = _first_batch(D.build_finetune_dataset(**kw, augmentations="crop,flip,blur"))
    np.testing.assert_array_equal(from_config(use_blur=True)["image"], blurred["image"])
