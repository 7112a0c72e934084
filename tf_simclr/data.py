"""Data sources and input pipelines for SimCLR.

Sources (``load_source``): a TFDS dataset by name (prepared in ``data_dir``; nothing is
downloaded), a TFDS-format directory, an image folder ``root/<split>/<class>/*.jpg``, or
``"embedded"``: the small dataset shipped in the repository's ``data/`` directory.

Pipelines: ``build_pretrain_dataset`` (two augmented views per image), ``build_eval_dataset``
(central crop, single pass) and ``build_finetune_dataset`` (crop + flip, optional label
fraction). Every pipeline yields dicts of float32 images in [0, 1] and int32 labels; training
pipelines repeat, shuffle and drop the last partial batch. Randomness is stateless and derived
from ``seed``, so a pipeline is reproducible.

Command line: ``python -m tf_simclr.data convert --src FOLDER --dst OUT_DIR`` turns an image
folder into a TFDS-format directory (decoded once, then read fast); ``python -m tf_simclr.data
info DATASET`` prints what a source contains.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from tf_simclr import augment

__all__ = [
    "DEFAULT_DATASET",
    "EMBEDDED_DIR",
    "IMAGE_EXTENSIONS",
    "DatasetInfo",
    "build_eval_dataset",
    "build_finetune_dataset",
    "build_pretrain_dataset",
    "check_image_folder",
    "convert_image_folder",
    "label_fraction_indices",
    "list_image_folder",
    "load_source",
    "read_label_ids_file",
    "stratified_subset",
    "write_tfds_dataset",
]

logger = logging.getLogger("tf_simclr.data")

DEFAULT_DATASET = "embedded"
EMBEDDED_NAME = "shapes10"
EMBEDDED_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "embedded"
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Formats tf.io.decode_image reads; others (TIFF, PPM, ...) need the converter, which uses PIL.
_TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_CONVERT_EXTENSIONS = IMAGE_EXTENSIONS + (".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_MAX_LOGGED = 5
# Folder names that mean a split, not a class (images directly inside one are misplaced).
_SPLIT_NAMES = ("train", "test", "validation", "val", "valid", "eval")


@dataclasses.dataclass
class DatasetInfo:
    """What a source holds: examples per split, classes, image shape (None = varies)."""

    num_examples: dict[str, int]
    num_classes: int
    image_shape: tuple[int | None, int | None, int]
    class_names: tuple[str, ...] = ()
    name: str = ""
    kind: str = ""  # "tfds", "tfds_dir", "folder" or "embedded"
    skipped_files: int = 0

    @property
    def fixed_size(self) -> bool:
        return self.image_shape[0] is not None and self.image_shape[1] is not None


@dataclasses.dataclass
class _Raw:
    """A source before decoding: encoded image bytes, labels and ids, in a fixed order."""

    info: DatasetInfo
    dataset: tf.data.Dataset  # {"encoded": string, "label": int64, "id": string}
    labels: np.ndarray | None = None  # known without reading (image folders)
    ids: list[str] | None = None
    paths: list[str] | None = None
    file_sharded: bool = False


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------
def _is_image_name(name: str, exts=IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(exts) and not name.startswith(".")


def _subdirs(d: str) -> list[str]:
    return sorted(
        x for x in os.listdir(d) if not x.startswith(".") and os.path.isdir(os.path.join(d, x))
    )


def _image_names(d: str) -> list[str]:
    return sorted(
        f
        for f in os.listdir(d)
        if _is_image_name(f, _CONVERT_EXTENSIONS) and os.path.isfile(os.path.join(d, f))
    )


def _folder_splits(root: str) -> dict[str, str]:
    """split name -> directory. root/<split>/<class>/img, or root/<class>/img as 'train'."""
    subdirs = _subdirs(root)
    if not subdirs:
        return {}
    if any(_image_names(os.path.join(root, d)) for d in subdirs):
        return {"train": root}  # no split level: the whole folder is one training split
    return {d: os.path.join(root, d) for d in subdirs}


def _sniff_format(head: bytes) -> str | None:
    """Image format from a file's first bytes (None if it is not an image we know)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        return "PPM"
    return None


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


def _ends_complete(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the file's last bytes (or declared size) look like a complete file of ``fmt``:
    the cheap test that catches files cut short by an interrupted download or copy."""
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")  # end-of-image marker
    if fmt == "PNG":
        return tail.endswith(_PNG_END)
    if fmt == "GIF":
        return tail.endswith(b"\x3b")  # trailer
    if fmt == "BMP":
        declared = int.from_bytes(head[2:6], "little")  # 0 when the writer left it out
        return declared <= size
    if fmt == "WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= size
    return True  # TIFF, PPM: only the converter reads them, and it decodes every file


def _decode_error(path: str) -> str | None:
    """TensorFlow's reason for not decoding ``path`` (None if it decodes), in plain words."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        # Eagerly even when called while a tf.function or dataset function is being traced.
        with tf.init_scope():
            tf.io.decode_image(data, channels=0, expand_animations=False)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    except tf.errors.OpError as e:
        message = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", e.message.strip())
        return message or type(e).__name__
    return None


def _file_problem(path: str, extensions) -> str | None:
    """Why ``path`` cannot be read as an image (None if it can). Reads the first and last bytes;
    a file whose end does not look complete is decoded once to decide."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - len(_PNG_END)))
            tail = f.read()
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if size == 0:
        return "empty file"
    fmt = _sniff_format(head)
    if fmt is None:
        return "not an image (unknown file signature)"
    if fmt not in _TF_FORMATS and extensions is IMAGE_EXTENSIONS:
        return f"{fmt} image: convert the folder first (python -m tf_simclr.data convert)"
    if _ends_complete(fmt, head, tail, size):
        return None
    error = _decode_error(path) if fmt in _TF_FORMATS else None
    if error is None:
        return None
    return f"truncated or corrupt {fmt} (cut short or damaged; decoding fails: {error})"


def image_folder_root(dataset: str) -> str | None:
    """The directory of `dataset` when it is an image folder (not embedded, TFDS or a
    TFDS-format directory), else None."""
    if not isinstance(dataset, str) or dataset in ("embedded", EMBEDDED_NAME):
        return None
    path = os.path.expanduser(dataset)
    if os.path.isdir(path) and _find_version_dir(path) is None:
        return path
    return None


def check_image_folder(root: str, splits: Sequence[str] = ("train",)) -> tuple[str, ...]:
    """Check the layout of the image folder ``root`` for ``splits``; returns the class names.

    Call it before training on a folder: every split in ``splits`` (e.g. ("train", "test"))
    must exist and hold images, every class folder in it must hold images, no images may lie
    at the root or directly in a split folder (they would be ignored, or their folder taken
    for a class), and a split other than "train" may not have classes that "train" lacks (the
    model never learns them). Raises FileNotFoundError or ValueError naming the folder and the
    fix. Only names are read; damaged files are dealt with when a split is listed
    (``list_image_folder``).
    """
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root!r} does not exist. Pass an existing directory laid out as "
            "root/<split>/<class>/*.jpg."
        )
    layout = "root/<split>/<class>/*.jpg (or root/<class>/*.jpg for a folder without splits)"
    stray = _image_names(root)
    if stray:
        raise ValueError(
            f"{len(stray)} image(s) lie directly in the image folder {root!r} (e.g. "
            f"{stray[0]!r}), where they would be ignored. Move them into class folders: {layout}."
        )
    splits_found = _folder_splits(root)
    if not splits_found:
        raise ValueError(
            f"Image folder {root!r} is empty: expected root/<split>/<class>/*.jpg (e.g. "
            "root/train/cat/0001.jpg). Add images or point to the right directory."
        )
    top = _subdirs(root)
    if splits_found == {"train": root}:
        with_images = [d for d in top if _image_names(os.path.join(root, d))]
        if set(with_images) <= set(_SPLIT_NAMES):
            raise ValueError(
                f"Images lie directly in the split folder(s) {with_images} of {root!r}, which "
                "would be read as one split with those folders as classes. Put them into class "
                f"folders, e.g. {os.path.join(root, with_images[0], '<class>')}/: {layout}."
            )
        nested = [d for d in top if d not in with_images and _subdirs(os.path.join(root, d))]
        if nested:
            raise ValueError(
                f"Image folder {root!r} mixes class folders (e.g. {with_images[0]!r} holds "
                f"images) with folders of folders (e.g. {nested[0]!r}). Use one layout: {layout}."
            )
    for split in splits:
        if split not in splits_found:
            raise ValueError(
                f"Split {split!r} not found in image folder {root!r}; available splits: "
                f"{sorted(splits_found)}. Pass one of them as split=..., or add "
                f"{os.path.join(root, split, '<class>')}/ folders."
            )
    classes = sorted({c for d in splits_found.values() for c in _subdirs(d)})
    train_classes = set(_subdirs(splits_found["train"])) if "train" in splits_found else None
    for split in splits:
        split_dir = splits_found[split]
        split_classes = _subdirs(split_dir)
        counts = {c: len(_image_names(os.path.join(split_dir, c))) for c in split_classes}
        if not sum(counts.values()):
            raise ValueError(
                f"No readable images in {split_dir!r} (classes found: {split_classes or 'none'}). "
                f"Expected files with extensions {', '.join(IMAGE_EXTENSIONS)} in class "
                "subfolders."
            )
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise ValueError(
                f"Class folder {os.path.join(split_dir, empty[0])!r} has no images"
                f"{f' (nor do {empty[1:]})' if len(empty) > 1 else ''}: add images with "
                f"extensions {', '.join(IMAGE_EXTENSIONS)} or remove the folder (an empty "
                "class is one the model never sees)."
            )
        if train_classes is not None and split != "train":
            extra = sorted(set(split_classes) - train_classes)
            if extra:
                raise ValueError(
                    f"Split {split!r} of {root!r} has class folder(s) {extra} that 'train' "
                    "lacks: a model trained on 'train' cannot predict them. Add training "
                    f"images for them or remove them from {split!r}."
                )
    return tuple(classes)


def _list_split(
    root: str, split: str, extensions
) -> tuple[list[str], np.ndarray, tuple[str, ...], dict[str, str]]:
    """(paths, labels, class_names, {bad path: problem}) of root/<split>/<class>/*."""
    splits = _folder_splits(root)
    classes = sorted({c for d in splits.values() for c in _subdirs(d)})
    split_dir = splits[split]
    paths, labels, bad = [], [], {}
    for ci, c in enumerate(classes):
        cdir = os.path.join(split_dir, c)
        if not os.path.isdir(cdir):
            continue
        for f in sorted(os.listdir(cdir)):
            p = os.path.join(cdir, f)
            if not os.path.isfile(p):
                continue
            if not _is_image_name(f, extensions):
                if _is_image_name(f, _CONVERT_EXTENSIONS):  # e.g. TIFF, loaded only via convert
                    bad[p] = "format read only by the converter (python -m tf_simclr.data convert)"
                continue
            problem = _file_problem(p, extensions)
            if problem is not None:
                bad[p] = problem
                continue
            paths.append(p)
            labels.append(ci)
    return paths, np.asarray(labels, np.int64), tuple(classes), bad


def list_image_folder(
    root: str, split: str = "train", *, strict: bool = False, extensions=IMAGE_EXTENSIONS
) -> tuple[list[str], np.ndarray, tuple[str, ...], list[str]]:
    """List (paths, labels, class_names, bad_paths) of ``root/<split>/<class>/*``.

    The class index is the position of the folder name in the sorted union of class folders of
    all splits, so train and test agree. Files that are not images, or are cut short or damaged
    (first bytes not a known format, no end marker and not decodable) are skipped with a
    warning giving their count, the first paths and why (``bad_paths``); with ``strict=True``
    they raise ValueError instead.
    """
    return _checked_listing(root, split, strict=strict, extensions=extensions, warn=True)


def _checked_listing(root, split, *, strict, extensions, warn):
    """list_image_folder; ``warn=False`` leaves the warning about skipped files to the other
    opening of the same split (a second listing, e.g. to read labels, would repeat it)."""
    root = os.path.expanduser(root)
    check_image_folder(root, [split])
    paths, labels, classes, bad = _list_split(root, split, extensions)
    if bad and (strict or warn):
        _report_bad(bad, strict, root)
    if not paths:
        raise ValueError(
            f"No readable images in {_folder_splits(root)[split]!r} (classes found: "
            f"{classes or 'none'}). Expected files with extensions {', '.join(extensions)} in "
            "class subfolders."
        )
    return paths, labels, classes, list(bad)


def _report_bad(bad: dict[str, str], strict: bool, root: str) -> None:
    shown = "; ".join(f"{p} ({why})" for p, why in list(bad.items())[:_MAX_LOGGED])
    if len(bad) > _MAX_LOGGED:
        shown += f"; and {len(bad) - _MAX_LOGGED} more"
    if strict:
        raise ValueError(
            f"{len(bad)} corrupt or non-image file(s) in {root!r}: {shown}. Remove or fix them, "
            "or load without strict (--strict_data off, strict=False) to skip them."
        )
    logger.warning("Skipping %d corrupt or non-image file(s) in %s: %s", len(bad), root, shown)


def _folder_raw(root: str, split: str, strict: bool, warn: bool = True) -> _Raw:
    paths, labels, classes, bad = _checked_listing(
        root, split, strict=strict, extensions=IMAGE_EXTENSIONS, warn=warn
    )
    root = os.path.expanduser(root)
    all_splits = _folder_splits(root)
    counts = {split: len(paths)}
    for s in all_splits:
        if s != split:
            # Sizes only: a split's problems are reported when that split is opened.
            counts[s] = len(_list_split(root, s, IMAGE_EXTENSIONS)[0])
    shape = _common_shape(paths[: min(len(paths), 64)])
    info = DatasetInfo(
        num_examples=counts,
        num_classes=len(classes),
        image_shape=shape,
        class_names=classes,
        name=os.path.basename(os.path.normpath(root)),
        kind="folder",
        skipped_files=len(bad),
    )
    split_dir = all_splits[split]
    ids = [os.path.relpath(p, split_dir).replace(os.sep, "/") for p in paths]
    return _Raw(
        info=info, dataset=_folder_dataset(paths, labels, ids), labels=labels, ids=ids, paths=paths
    )


def _folder_dataset(paths, labels, ids) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": list(paths), "label": np.asarray(labels, np.int64), "id": list(ids)}
    )
    return _map(
        ds, lambda d: {"encoded": tf.io.read_file(d["path"]), "label": d["label"], "id": d["id"]}
    )


def _common_shape(paths: Sequence[str]) -> tuple[int | None, int | None, int]:
    """(H, W, 3) if the sampled images share a size, else (None, None, 3)."""
    from PIL import Image

    sizes = set()
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.add(im.size)
        except Exception:  # noqa: BLE001 - unreadable files are dealt with when decoding
            continue
        if len(sizes) > 1:
            return (None, None, 3)
    if len(sizes) == 1:
        w, h = sizes.pop()
        return (h, w, 3)
    return (None, None, 3)


# --------------------------------------------------------------------------------------------
# TFDS sources
# --------------------------------------------------------------------------------------------
def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def _find_version_dir(path: str) -> str | None:
    """path itself if it holds dataset_info.json, else its newest version subdir (or config)."""
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    if not os.path.isdir(path):
        return None
    found = []
    for dirpath, _dirnames, filenames in os.walk(path):
        if "dataset_info.json" in filenames and dirpath.count(os.sep) - path.count(os.sep) <= 2:
            found.append(dirpath)
    if not found:
        return None

    def key(p):
        parts = os.path.basename(p).split(".")
        return [int(x) if x.isdigit() else -1 for x in parts]

    return max(found, key=key)


def _tfds_raw(
    builder, split: str, name: str, kind: str, input_context, shuffle_files=False, seed=None
) -> _Raw:
    tfds = _tfds()
    info = builder.info
    if split not in info.splits and split.split("[")[0] not in info.splits:
        raise ValueError(
            f"Split {split!r} not in dataset {name!r}; available splits: {sorted(info.splits)}."
        )
    features = info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"Dataset {name!r} has features {sorted(features)}; tf_simclr needs 'image' and "
            "'label' features."
        )
    img_shape = tuple(features["image"].shape)
    num_classes = features["label"].num_classes
    class_names = tuple(features["label"].names) if features["label"].names else ()
    counts = {s: int(info.splits[s].num_examples) for s in info.splits}
    try:
        counts[split] = int(info.splits[split].num_examples)
    except (KeyError, ValueError):
        pass
    read_config = tfds.ReadConfig(add_tfds_id=True, try_autocache=False, shuffle_seed=seed)
    file_sharded = False
    if input_context is not None and input_context.num_input_pipelines > 1:
        num_shards = info.splits[split.split("[")[0]].num_shards
        if num_shards >= input_context.num_input_pipelines:
            read_config.input_context = input_context
            file_sharded = True
    ds = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    id_key = "id" if "id" in features else ("file_name" if "file_name" in features else "tfds_id")

    def to_raw(d):
        return {
            "encoded": d["image"],
            "label": tf.cast(d["label"], tf.int64),
            "id": tf.strings.as_string(d[id_key]) if d[id_key].dtype != tf.string else d[id_key],
        }

    ds = _map(ds, to_raw)
    dinfo = DatasetInfo(
        num_examples=counts,
        num_classes=int(num_classes),
        image_shape=(img_shape[0], img_shape[1], 3),
        class_names=class_names,
        name=name,
        kind=kind,
    )
    return _Raw(info=dinfo, dataset=ds, file_sharded=file_sharded)


def _builder_from_dir(path: str):
    tfds = _tfds()
    try:
        return tfds.builder_from_directory(path)
    except Exception as e:  # noqa: BLE001 - rethrown with the path and the fix
        raise ValueError(
            f"Could not read the TFDS-format directory {path!r} ({type(e).__name__}: {e}). It "
            "should hold dataset_info.json, features.json and *.tfrecord* shards, as written by "
            "`tfds build` or `python -m tf_simclr.data convert`."
        ) from e


def _open_raw(
    dataset: str,
    data_dir: str | None,
    split: str,
    strict: bool,
    input_context,
    shuffle_files: bool = False,
    seed: int | None = None,
    warn: bool = True,
) -> _Raw:
    sh = (shuffle_files, seed)
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset must be a non-empty string, got {dataset!r}.")
    if dataset in ("embedded", EMBEDDED_NAME):
        vdir = _find_version_dir(os.path.join(EMBEDDED_DIR, EMBEDDED_NAME))
        if vdir is None:
            raise FileNotFoundError(
                f"The embedded dataset is missing from {EMBEDDED_DIR!r}. Regenerate it with "
                "`python data/generate_embedded.py`."
            )
        return _tfds_raw(_builder_from_dir(vdir), split, "embedded", "embedded", input_context, *sh)
    path = os.path.expanduser(dataset)
    if os.path.isdir(path):
        vdir = _find_version_dir(path)
        if vdir is not None:
            return _tfds_raw(
                _builder_from_dir(vdir), split, dataset, "tfds_dir", input_context, *sh
            )
        return _folder_raw(path, split, strict, warn)
    # TFDS names look like "cifar10", "imagenet2012_subset/1pct" or "cifar10:3.0.2".
    tfds_like = re.fullmatch(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9.]+)?", dataset)
    if not tfds_like or dataset.startswith((".", "~", "/")) or os.path.exists(path):
        raise FileNotFoundError(
            f"Dataset path {dataset!r} does not exist or is not a directory. Pass an image "
            "folder (root/<split>/<class>/*.jpg), a TFDS-format directory, a TFDS name with "
            "data_dir, or 'embedded'."
        )
    return _tfds_by_name(dataset, data_dir, split, input_context, sh)


def _tfds_by_name(name: str, data_dir: str | None, split: str, input_context, sh) -> _Raw:
    tfds = _tfds()
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    base = name.split(":")[0]
    # A prepared dataset in data_dir is read from its files (no code, no network needed).
    roots = [data_dir] if data_dir else []
    roots.append(os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")))
    for root in roots:
        cand = os.path.join(root, base)
        if ":" in name:
            cand = os.path.join(root, base, name.split(":", 1)[1])
        vdir = _find_version_dir(cand)
        if vdir is not None:
            return _tfds_raw(_builder_from_dir(vdir), split, name, "tfds", input_context, *sh)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError and friends
        raise ValueError(
            f"Unknown dataset {name!r}: not a TFDS dataset name ({type(e).__name__}), not an "
            "existing directory, and not 'embedded'. Check the spelling, or pass a path to an "
            "image folder / TFDS-format directory."
        ) from None
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir or roots[-1]!r} "
            f"(looked for {builder.data_path}). This machine does not download: prepare it "
            f"elsewhere (`tfds build {base} --data_dir=...`) and copy it here, or pass "
            "data_dir= pointing at the directory that holds it."
        )
    return _tfds_raw(builder, split, name, "tfds", input_context, *sh)


# --------------------------------------------------------------------------------------------
# Decoding and load_source
# --------------------------------------------------------------------------------------------
def _composite_on_white(color: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """uint8 colour with uint8 alpha, blended over white as the converter (PIL) does."""
    a = tf.cast(alpha, tf.float32)
    out = (tf.cast(color, tf.float32) * a + 255.0 * (255.0 - a)) / 255.0
    return tf.cast(tf.round(out), tf.uint8)


def _decode(encoded: tf.Tensor) -> tf.Tensor:
    """Any image -> uint8 RGB. Transparent images are blended over white (not their hidden
    colour values), so direct loading and the converter see the same pixels."""
    img = tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8)
    channels = tf.shape(img)[-1]
    img = tf.switch_case(
        tf.clip_by_value(channels - 1, 0, 3),
        [
            lambda: tf.tile(img[..., :1], [1, 1, 3]),
            lambda: tf.tile(_composite_on_white(img[..., :1], img[..., 1:2]), [1, 1, 3]),
            lambda: img[..., :3],
            lambda: _composite_on_white(img[..., :3], img[..., 3:4]),
        ],
    )
    img.set_shape([None, None, 3])
    return img


def load_source(
    dataset: str = DEFAULT_DATASET,
    *,
    data_dir: str | None = None,
    split: str = "train",
    input_context: tf.distribute.InputContext | None = None,
    strict: bool = False,
    with_ids: bool = False,
    indices: np.ndarray | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Open a source; returns (dataset of {"image": uint8 [H, W, 3], "label": int64}, info).

    ``dataset``: "embedded", a TFDS name (read from ``data_dir``; never downloaded), a
    TFDS-format directory, or an image folder root/<split>/<class>/*. Grayscale, RGBA and
    palette images become RGB. With ``input_context`` each input pipeline reads a disjoint
    part. Undecodable images are skipped with a warning (``strict=True``: they raise).
    ``with_ids`` adds an "id" string; ``indices`` keeps only those example positions (of the
    stored order). ``shuffle_files`` shuffles the read order with ``seed`` (file order for
    TFDS; the whole file list for image folders, whose stored order is sorted by class).
    """
    # A subset of a TFDS split is picked by position, so its files must be read in order.
    tfds_shuffle = shuffle_files and indices is None
    raw = _open_raw(dataset, data_dir, split, strict, input_context, tfds_shuffle, seed)
    ds = raw.dataset
    if raw.paths is not None:
        order = np.arange(len(raw.paths)) if indices is None else np.unique(indices)
        if shuffle_files:
            order = np.random.default_rng(seed).permutation(order)
        ds = _folder_dataset(
            [raw.paths[i] for i in order], raw.labels[order], [raw.ids[i] for i in order]
        )
    elif indices is not None:
        ds = _select(ds, indices, raw.info.num_examples.get(split))
    if input_context is not None and input_context.num_input_pipelines > 1 and not raw.file_sharded:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    def decode(d):
        out = {"image": _decode(d["encoded"]), "label": d["label"]}
        if with_ids:
            out["id"] = d["id"]
        return out

    ds = _map(ds, decode)
    if not strict:
        ds = ds.ignore_errors(log_warning=True)
    if raw.info.fixed_size:
        h, w, _ = raw.info.image_shape

        def fit(d):
            img = d["image"]
            if raw.info.kind == "folder":
                # The size was read from a sample of files: resize any stray image to match.
                img = tf.cond(
                    tf.reduce_all(tf.shape(img)[:2] == [h, w]),
                    lambda: img,
                    lambda: tf.cast(
                        tf.clip_by_value(
                            tf.round(tf.image.resize(img, [h, w], method="bicubic")), 0, 255
                        ),
                        tf.uint8,
                    ),
                )
            return {**d, "image": tf.ensure_shape(img, [h, w, 3])}

        ds = _map(ds, fit)
    return ds, raw.info


def _map(ds: tf.data.Dataset, fn, parallel: bool | int = True) -> tf.data.Dataset:
    """Dataset.map without AutoGraph (our functions are plain TF; converting them is slow)."""
    fn = tf.autograph.experimental.do_not_convert(fn)
    if parallel is True:
        parallel = tf.data.AUTOTUNE
    return ds.map(fn, num_parallel_calls=parallel or None)


def _enumerate(ds: tf.data.Dataset, start: int = 0) -> tf.data.Dataset:
    return tf.data.Dataset.zip(tf.data.Dataset.counter(start), ds)


def _select(ds: tf.data.Dataset, indices: np.ndarray, n: int | None) -> tf.data.Dataset:
    indices = np.asarray(indices, np.int64)
    size = int(max(n or 0, indices.max() + 1 if len(indices) else 0))
    mask = np.zeros(size, bool)
    mask[indices] = True
    keep = tf.constant(mask)
    keep_fn = tf.autograph.experimental.do_not_convert(
        lambda i, d: (i < size) & tf.gather(keep, tf.minimum(i, size - 1))
    )
    return _map(_enumerate(ds).filter(keep_fn), lambda i, d: d, parallel=False)


# --------------------------------------------------------------------------------------------
# Label fractions
# --------------------------------------------------------------------------------------------
def label_fraction_indices(labels: np.ndarray, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-balanced, deterministic ``fraction`` of the examples.

    Every class gets round(fraction * N / num_classes) examples (at least 1, at most all of
    that class), chosen by a seeded permutation within the class. Same inputs, same subset.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}.")
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if fraction >= 1.0:
            chosen.append(idx)
            continue
        perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
        chosen.append(np.sort(idx[perm[: min(per_class, len(idx))]]))
    return np.sort(np.concatenate(chosen))


def read_label_ids_file(path: str) -> list[str]:
    """Example ids, one per line (blank lines and #comments ignored)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Label ids file {path!r} not found. It should list one example id per line (a "
            "file name such as n01440764_10026.JPEG, a relative path class/file.jpg, or an "
            "integer position in the split)."
        )
    with open(path) as f:
        ids = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("#")]
    if not ids:
        raise ValueError(f"Label ids file {path!r} is empty.")
    return ids


_LABEL_CACHE: dict[tuple, tuple[np.ndarray, list[str]]] = {}


def _labels_and_ids(raw: _Raw, key: tuple | None = None) -> tuple[np.ndarray, list[str]]:
    """All labels and ids of a split in stored order (read once per process, then cached)."""
    if raw.labels is not None and raw.ids is not None:
        return raw.labels, raw.ids
    if key is not None and key in _LABEL_CACHE:
        return _LABEL_CACHE[key]
    out = _read_labels_and_ids(raw)
    if key is not None:
        _LABEL_CACHE[key] = out
    return out


def _read_labels_and_ids(raw: _Raw) -> tuple[np.ndarray, list[str]]:
    labels, ids = [], []
    for batch in _map(raw.dataset, lambda d: (d["label"], d["id"])).batch(4096):
        labels.append(batch[0].numpy())
        ids.extend(x.decode() for x in batch[1].numpy())
    return np.concatenate(labels) if labels else np.zeros([0], np.int64), ids


def _subset_indices(
    dataset, data_dir, split, label_fraction, label_ids_file, seed, strict
) -> np.ndarray | None:
    if label_fraction is None and label_ids_file is None:
        return None
    if label_fraction is not None and label_ids_file is not None:
        raise ValueError("Pass either label_fraction or label_ids_file, not both.")
    if label_fraction is not None and float(label_fraction) >= 1.0:
        if float(label_fraction) > 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}.")
        return None
    # Labels only: load_source opens the split again and warns about skipped files then.
    raw = _open_raw(dataset, data_dir, split, strict, None, warn=False)
    labels, ids = _labels_and_ids(raw, key=(dataset, data_dir, split))
    if label_fraction is not None:
        return label_fraction_indices(labels, float(label_fraction), seed=seed)
    wanted = read_label_ids_file(label_ids_file)
    pos = {k: i for i, k in enumerate(ids)}
    # Ids may be given with or without directories (ImageNet subsets list bare file names).
    base = {os.path.basename(k): i for i, k in enumerate(ids)}
    out, missing = [], []
    for w in wanted:
        if w in pos:
            out.append(pos[w])
        elif os.path.basename(w) in base:
            out.append(base[os.path.basename(w)])
        elif w.isdigit() and int(w) < len(ids):
            out.append(int(w))
        else:
            missing.append(w)
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(wanted)} ids in {label_ids_file!r} are not in split "
            f"{split!r} of {dataset!r} (first: {missing[:_MAX_LOGGED]}). Example ids look like "
            f"{ids[:3]}."
        )
    return np.unique(np.asarray(out, np.int64))


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
def _per_replica_batch(batch_size: int, input_context) -> int:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if input_context is None:
        return batch_size
    return input_context.get_per_replica_batch_size(batch_size)


def _should_cache(cache, info: DatasetInfo, split: str) -> bool:
    if cache == "auto":
        n = info.num_examples.get(split, 0) or 0
        return info.fixed_size and n * info.image_shape[0] * info.image_shape[1] * 3 < 2**30
    return bool(cache)


def _base_seed(seed: int, input_context) -> tf.Tensor:
    pid = input_context.input_pipeline_id if input_context is not None else 0
    return tf.constant([int(seed), int(pid)], tf.int64)


def _fold(seed: tf.Tensor, i) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64))


def _augmented(
    ds: tf.data.Dataset,
    info: DatasetInfo,
    *,
    per_replica: int,
    image_size: int,
    ops: tuple[str, ...],
    strength: float,
    seed: tf.Tensor,
    num_views: int,
    brightness: str,
    blur_per_image: bool,
    drop_remainder: bool,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Batch (image uint8, label) pairs and augment whole batches (num_views views each).

    ``start_batch`` resumes an infinite stream: the examples of the first start_batch batches
    are skipped before augmentation (cheap) and the per-batch seeds continue from there, so the
    batches equal those a fresh stream yields from that point on."""
    if start_batch:
        ds = ds.skip(int(start_batch) * per_replica)
    kw = dict(
        image_size=image_size,
        augmentations=ops,
        color_jitter_strength=strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
    )

    def view_seeds(i):
        # Per-example view seeds, the same on both per-image routes below.
        s = _fold(_fold(seed, i), 7)
        return [_fold(s, v) for v in range(num_views)]

    def as_dict(outs, labels):
        labels = tf.cast(labels, tf.int32)
        if num_views == 2:
            return {"view1": outs[0], "view2": outs[1], "label": labels}
        return {"image": outs[0], "label": labels}

    src_side = max(info.image_shape[0] or 10**6, info.image_shape[1] or 10**6)
    if info.fixed_size and max(src_side, image_size) <= 64:
        # Small fixed-size images (CIFAR-like): augment whole batches with vectorised kernels.
        ds = ds.batch(per_replica, drop_remainder=drop_remainder)

        def views(i, batch):
            images, labels = batch
            # All views of the batch in one call: every row gets its own random draws.
            stacked = tf.concat([images] * num_views, axis=0)
            out = augment.augment_batch(stacked, _fold(seed, i), **kw)
            return tf.split(out, num_views, axis=0) if num_views > 1 else [out], labels

    elif augment.has_crop_stage(ops):
        # Large or variable-size images (ImageNet-like), crop first: a parallel map cuts and
        # resizes each view's crop from the full-size image (the only per-image work that
        # needs the source), then the per-pixel rest of each batch runs in one XLA call.
        kw_crop = {k: v for k, v in kw.items() if k != "blur_per_image"}

        def crops(i, example):
            image, label = example
            return tuple(
                augment.augment_single_crop(image, s, **kw_crop) for s in view_seeds(i)
            ), label

        ds = _map(_enumerate(ds, int(start_batch) * per_replica), crops)
        ds = ds.batch(per_replica, drop_remainder=drop_remainder)

        def views(i, batch):
            stages, labels = batch
            return [
                augment.augment_finish_batch(x, p, brightness=brightness) for x, p in stages
            ], labels

    else:
        # Other compositions on large or variable-size images: one image per call in a
        # parallel map, cropping from the full-size image and running only the operations
        # drawn; the map emits the final dict so batching is the only copy.
        def per_image(i, example):
            image, label = example
            return as_dict([augment.augment_single(image, s, **kw) for s in view_seeds(i)], label)

        return _map(_enumerate(ds, int(start_batch) * per_replica), per_image).batch(
            per_replica, drop_remainder=drop_remainder
        )

    def pack(i, batch):
        return as_dict(*views(i, batch))

    # XLA kernels run on the calling thread, so keep one batch per core in flight.
    return _map(_enumerate(ds, int(start_batch)), pack, parallel=max(2, os.cpu_count() or 2))


def build_pretrain_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    batch_size: int = 256,
    image_size: int = 32,
    augmentations: str | Sequence[str] = "cifar",
    color_jitter_strength: float | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = "auto",
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    shuffle_buffer: int = 10_000,
    strict: bool = False,
    start_batch: int = 0,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Infinite shuffled two-view batches {"view1", "view2": f32 [B,S,S,3], "label": i32 [B]}.

    ``batch_size`` is the global batch; with ``input_context`` each pipeline makes batches of
    ``input_context.get_per_replica_batch_size(batch_size)`` from its own shard.
    ``augmentations`` is a preset ("imagenet", "cifar") or a list like "crop,flip,color,blur";
    ``color_jitter_strength`` None means the preset's (1.0 for explicit lists). Deterministic
    given ``seed``; the two views of an image are independent draws. ``start_batch`` resumes
    the stream after that many batches (training resumed from a checkpoint).
    """
    ops, strength = augment.resolve_augmentations(augmentations, color_jitter_strength)
    _check_size(image_size)
    per_replica = _per_replica_batch(batch_size, input_context)
    ds, info = load_source(
        dataset,
        data_dir=data_dir,
        split=split,
        input_context=input_context,
        strict=strict,
        shuffle_files=True,
        seed=seed,
    )
    ds = _map(ds, lambda d: (d["image"], d["label"]), parallel=False)
    if _should_cache(cache, info, split):
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = _augmented(
        ds,
        info,
        per_replica=per_replica,
        image_size=image_size,
        ops=ops,
        strength=strength,
        seed=_base_seed(seed, input_context),
        num_views=2,
        brightness=brightness,
        blur_per_image=blur_per_image,
        drop_remainder=True,
        start_batch=start_batch,
    )
    return ds.prefetch(tf.data.AUTOTUNE), info


def build_finetune_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    batch_size: int = 256,
    image_size: int = 32,
    seed: int = 0,
    label_fraction: float | None = None,
    label_ids_file: str | None = None,
    augmentations: str | Sequence[str] = "crop,flip",
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = "auto",
    shuffle_buffer: int = 10_000,
    strict: bool = False,
    start_batch: int = 0,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Infinite shuffled batches {"image": f32 [B,S,S,3], "label": i32 [B]} with crop + flip.

    ``label_fraction`` (e.g. 0.01, 0.1) keeps a class-balanced deterministic subset of the
    split; ``label_ids_file`` keeps the listed examples instead. ``info.num_examples[split]``
    is then the subset's size.
    """
    ops, strength = augment.resolve_augmentations(augmentations, 0.0)
    _check_size(image_size)
    per_replica = _per_replica_batch(batch_size, input_context)
    indices = _subset_indices(
        dataset, data_dir, split, label_fraction, label_ids_file, seed, strict
    )
    ds, info = load_source(
        dataset,
        data_dir=data_dir,
        split=split,
        input_context=input_context,
        strict=strict,
        indices=indices,
        shuffle_files=True,
        seed=seed,
    )
    if indices is not None:
        info = dataclasses.replace(info, num_examples={**info.num_examples, split: len(indices)})
    ds = _map(ds, lambda d: (d["image"], d["label"]), parallel=False)
    if _should_cache(cache, info, split):
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = _augmented(
        ds,
        info,
        per_replica=per_replica,
        image_size=image_size,
        ops=ops,
        strength=strength,
        seed=_base_seed(seed, input_context),
        num_views=1,
        brightness="multiplicative",
        blur_per_image=True,
        drop_remainder=True,
        start_batch=start_batch,
    )
    return ds.prefetch(tf.data.AUTOTUNE), info


def build_eval_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "test",
    batch_size: int = 256,
    image_size: int = 32,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = False,
    strict: bool = False,
    indices: np.ndarray | None = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """One pass of {"image": f32 [B,S,S,3], "label": i32 [B]}: central crop (87.5%, skipped
    for images of 32 px or less) and bicubic resize; the last batch may be smaller.

    Undecodable files are skipped and counted as in the training pipelines (``strict=True``:
    they raise ValueError, naming them). ``max_examples`` evaluates a representative subset
    instead of the whole split (or of ``indices``): every class keeps its share of the
    examples (to one example), chosen by a permutation seeded with ``seed``, so the subset is
    the same on every run; a warning says it is a subset and of how many examples, and
    ``info.num_examples[split]`` is its size.
    """
    _check_size(image_size)
    per_replica = _per_replica_batch(batch_size, input_context)
    if max_examples is not None:
        indices = _eval_subset(dataset, data_dir, split, strict, indices, max_examples, seed)
    ds, info = load_source(
        dataset,
        data_dir=data_dir,
        split=split,
        input_context=input_context,
        strict=strict,
        indices=indices,
    )
    ds = _map(
        ds,
        lambda d: {
            "image": augment.preprocess_for_eval(d["image"], image_size),
            "label": tf.cast(d["label"], tf.int32),
        },
    )
    if indices is not None:
        info = dataclasses.replace(info, num_examples={**info.num_examples, split: len(indices)})
    if _should_cache(cache, info, split):
        ds = ds.cache()
    return ds.batch(per_replica, drop_remainder=False).prefetch(tf.data.AUTOTUNE), info


def stratified_subset(labels: np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``size`` examples in which every class has its share of ``labels``.

    Examples are grouped by class (in a seeded random order within each class) and picked at
    evenly spaced positions, so each class gets round(size * its fraction) examples, give or
    take one. Same inputs, same subset. All positions if ``size`` >= len(labels).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size >= n:
        return np.arange(n)
    within_class = np.random.default_rng(seed).permutation(n)
    grouped = np.lexsort((within_class, labels))
    return np.sort(grouped[((np.arange(size) + 0.5) * n / size).astype(np.int64)])


def _eval_subset(dataset, data_dir, split, strict, indices, max_examples, seed) -> np.ndarray:
    """Positions of the examples build_eval_dataset keeps for ``max_examples``."""
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(
            f"max_examples must be a positive int (or None for the whole split), got "
            f"{max_examples!r}."
        )
    # Labels only: load_source opens the split again and warns about skipped files then.
    raw = _open_raw(dataset, data_dir, split, strict, None, warn=False)
    labels, _ = _labels_and_ids(raw, key=(dataset, data_dir, split))
    pool = np.arange(len(labels)) if indices is None else np.unique(indices)
    if max_examples >= len(pool):
        return pool
    chosen = pool[stratified_subset(labels[pool], max_examples, seed=seed)]
    logger.warning(
        "Evaluating on a subset of split %r of %s: %d of %d examples, every class in "
        "proportion (seed %d). Metrics describe this subset, not the whole split.",
        split,
        dataset,
        len(chosen),
        len(pool),
        seed,
    )
    return chosen


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}.")


# --------------------------------------------------------------------------------------------
# Writing TFDS-format directories
# --------------------------------------------------------------------------------------------
def write_tfds_dataset(
    out_root: str,
    *,
    name: str,
    class_names: Sequence[str],
    splits: dict[str, Iterable[dict]],
    version: str = "1.0.0",
    description: str = "",
    image_shape: tuple[int | None, int | None, int] = (None, None, 3),
    num_examples: dict[str, int] | None = None,
    progress: bool = True,
) -> str:
    """Write examples {"image": encoded bytes, "label": int, "id": str} as a TFDS directory.

    Produces ``out_root/<name>/<version>/`` (tfrecord shards, dataset_info.json,
    features.json) readable with ``tfds.builder_from_directory`` and ``load_source``. Returns
    that path. Refuses to overwrite an existing version directory.
    """
    tfds = _tfds()
    out_root = os.path.abspath(os.path.expanduser(out_root))
    target = os.path.join(out_root, name, version)
    if os.path.exists(target):
        raise FileExistsError(
            f"{target!r} already exists. Delete it first or choose another --dst / name."
        )
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=tuple(image_shape)),
            "label": tfds.features.ClassLabel(names=list(class_names)),
            "id": tfds.features.Text(),
        }
    )
    builder_name = name
    ver = version
    desc = description or f"{name}: images converted by tf_simclr.data"
    split_items = dict(splits)
    totals = dict(num_examples or {})

    class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = builder_name
        VERSION = tfds.core.Version(ver)
        RELEASE_NOTES = {ver: "Written by tf_simclr.data.write_tfds_dataset."}

        def _info(self):
            return self.dataset_info_from_configs(
                description=desc, features=features, supervised_keys=("image", "label")
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {s: self._generate_examples(s) for s in split_items}

        def _generate_examples(self, split):
            items = split_items[split]
            if progress:
                items = _progress(items, total=totals.get(split), desc=f"{name}/{split}")
            for ex in items:
                yield ex["id"], ex

    builder = _FolderBuilder(data_dir=out_root)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        )
    )
    return target


def _progress(items, *, total=None, desc=""):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with TFDS
        return items
    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr)


def _read_as_rgb_bytes(path: str) -> tuple[bytes, tuple[int, int]]:
    """File bytes if already RGB JPEG/PNG, else the image converted to RGB and PNG-encoded."""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # full decode: catches truncated files
        size = (im.height, im.width)
        if im.format in ("JPEG", "PNG") and im.mode == "RGB":
            return data, size
        if im.mode in ("RGBA", "LA", "P", "PA") or im.info.get("transparency") is not None:
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="PNG")
        return buf.getvalue(), size


def convert_image_folder(
    src: str,
    dst: str,
    *,
    name: str | None = None,
    version: str = "1.0.0",
    strict: bool = False,
    progress: bool = True,
) -> str:
    """Convert an image folder root/<split>/<class>/* to a TFDS-format directory.

    Every image is decoded once with PIL (grayscale, RGBA and palette images become RGB;
    TIFF/PPM are re-encoded as PNG); corrupt files are skipped with a count and the first
    paths logged, or raise with ``strict=True``. Returns ``dst/<name>/<version>``, which
    ``load_source`` reads directly. Shows a progress bar per split.
    """
    src = os.path.expanduser(src)
    if not os.path.isdir(src):
        raise FileNotFoundError(
            f"Source folder {src!r} does not exist. Pass --src pointing at root/<split>/<class>/."
        )
    splits = _folder_splits(src)
    if not splits:
        raise ValueError(f"Source folder {src!r} is empty: expected root/<split>/<class>/*.jpg.")
    check_image_folder(src, list(splits))
    name = name or _safe_name(os.path.basename(os.path.normpath(src)))
    listings = {}
    classes: tuple[str, ...] = ()
    for s in splits:
        paths, labels, classes, bad = list_image_folder(
            src, s, strict=strict, extensions=_CONVERT_EXTENSIONS
        )
        listings[s] = (paths, labels)
    sizes = set()
    from PIL import Image

    for paths, _ in listings.values():
        for p in paths[:256]:
            try:
                with Image.open(p) as im:
                    sizes.add((im.height, im.width))
            except Exception:  # noqa: BLE001 - reported when the file is converted
                pass
    shape = (*sizes.pop(), 3) if len(sizes) == 1 else (None, None, 3)
    skipped: dict[str, str] = {}

    def examples(split):
        paths, labels = listings[split]
        root = splits[split]
        for p, y in zip(paths, labels, strict=True):
            try:
                data, size = _read_as_rgb_bytes(p)
            except Exception as e:  # noqa: BLE001 - any decode failure means a bad file
                if strict:
                    raise ValueError(
                        f"Corrupt image {p!r} ({type(e).__name__}: {e}). Remove it or convert "
                        "without --strict to skip corrupt files."
                    ) from e
                skipped[p] = f"{type(e).__name__}: {e}"
                continue
            if shape[0] is not None and size != shape[:2]:
                data = _resize_bytes(data, shape[:2])
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            yield {"image": data, "label": int(y), "id": rel}

    out = write_tfds_dataset(
        dst,
        name=name,
        version=version,
        class_names=classes,
        splits={s: examples(s) for s in listings},
        image_shape=shape,
        num_examples={s: len(v[0]) for s, v in listings.items()},
        progress=progress,
    )
    if skipped:
        _report_bad(skipped, False, src)
    with open(os.path.join(out, "tf_simclr_conversion.json"), "w") as f:
        json.dump({"source": os.path.abspath(src), "skipped_files": list(skipped)}, f, indent=1)
    return out


def _resize_bytes(data: bytes, hw: tuple[int, int]) -> bytes:
    """A stray image of a different size in a fixed-size folder: resize it to fit (bicubic)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((hw[1], hw[0]), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def _safe_name(s: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "_" for c in s).strip("_")
    if not out or not out[0].isalpha():
        out = "ds_" + out
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tf_simclr.data", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="image folder -> TFDS-format directory")
    c.add_argument("--src", required=True, help="root/<split>/<class>/*.jpg")
    c.add_argument("--dst", required=True, help="output root (gets <name>/<version>/)")
    c.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    c.add_argument("--version", default="1.0.0")
    c.add_argument("--strict", action="store_true", help="fail on corrupt files")
    i = sub.add_parser("info", help="describe a dataset source")
    i.add_argument("dataset", nargs="?", default=DEFAULT_DATASET)
    i.add_argument("--data_dir", default=None)
    i.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "convert":
            out = convert_image_folder(
                args.src, args.dst, name=args.name, version=args.version, strict=args.strict
            )
            print(out)
        else:
            _, info = load_source(args.dataset, data_dir=args.data_dir, split=args.split)
            print(json.dumps(dataclasses.asdict(info), indent=1))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the module imported under its package name, not this "__main__" copy: TFDS finds a
    # builder's package from its class's __module__, and "__main__" is not a package.
    from tf_simclr.data import main as _package_main

    sys.exit(_package_main())
