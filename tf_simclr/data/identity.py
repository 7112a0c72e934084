"""A dataset split's identity: what it is, where it was read, its classes and a cheap fingerprint.

A run records the identity of its training split when it starts (tf_simclr.workflows.run_data), so that
whoever reads the run later (resume, evaluation, export, fine-tuning from it, distilling from
it, transfer) can tell whether the data in front of it is the data the run was trained on.

The fingerprint is cheap on purpose: for an image folder, a hash of the sorted relative paths
and sizes of the split's image files (names and sizes only, no file is opened); for TFDS
datasets (by name, TFDS-format directories, the embedded one), a hash of the dataset's name,
version, split, example count and class names. It does not depend on where the data lies, so
a moved folder keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os

from tf_simclr.data.folders import (
    IMAGE_EXTENSIONS,
    _folder_splits,
    _is_image_name,
    _subdirs,
    _walk_image_files,
    check_image_folder,
    list_unlabelled_images,
    unlabelled_image_dir,
)
from tf_simclr.data.sources import EMBEDDED_NAME, _open_raw, image_folder_root

# The identity's keys, in the order a message shows them.
IDENTITY_KEYS = (
    "kind",
    "dataset",
    "data_dir",
    "version",
    "split",
    "class_names",
    "num_examples",
    "fingerprint",
    "unlabelled",
)


def absolute_dataset(dataset: str) -> str:
    """`dataset` with a path made absolute against the current working directory ("~"
    expanded); "embedded" and TFDS names (no such path exists) are returned unchanged."""
    if not isinstance(dataset, str) or dataset in ("embedded", EMBEDDED_NAME):
        return dataset
    path = os.path.expanduser(dataset)
    return os.path.abspath(path) if os.path.exists(path) else dataset


def absolute_path(path: str | None) -> str | None:
    """An existing path made absolute (a --data_dir, --label_ids_file, a model_dir, or a
    checkpoint prefix whose .index exists); others unchanged (their errors name them as
    given)."""
    if not path:
        return path
    expanded = os.path.expanduser(path)
    exists = os.path.exists(expanded) or os.path.exists(expanded + ".index")
    return os.path.abspath(expanded) if exists else path


def _digest(payload) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _folder_identity(root: str, split: str) -> dict:
    check_image_folder(root, [split])  # a clear message for a wrong layout or split
    splits = _folder_splits(root)
    classes = sorted({c for d in splits.values() for c in _subdirs(d)})
    split_dir = splits[split]
    files = []
    for name in classes:
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            continue
        with os.scandir(class_dir) as entries:
            for entry in entries:
                if _is_image_name(entry.name) and entry.is_file():
                    files.append((f"{name}/{entry.name}", entry.stat().st_size))
    files.sort()
    return _folder_record(root, split, classes, files, _digest(["folder", split, classes, files]))


def _unlabelled_folder_identity(root: str, split: str) -> dict:
    """An image folder read as unlabelled: every image file at any depth under the directory
    its split is read from, by relative path and size."""
    directory = unlabelled_image_dir(root, split)
    paths, _ = _walk_image_files(directory, IMAGE_EXTENSIONS)
    if not paths:
        list_unlabelled_images(root, split, warn=False)  # raises, naming the folder and the fix
    files = sorted(
        (os.path.relpath(p, directory).replace(os.sep, "/"), os.path.getsize(p)) for p in paths
    )
    fingerprint = _digest(["unlabelled folder", split, files])
    return {**_folder_record(root, split, [], files, fingerprint), "unlabelled": True}


def _folder_record(root: str, split: str, classes: list, files: list, fingerprint: str) -> dict:
    """An image folder's identity: where it is, its split, classes and file count, and the
    fingerprint of its files (the labelled and unlabelled readings digest them differently)."""
    return {
        "kind": "folder",
        "dataset": os.path.abspath(root),
        "data_dir": None,
        "version": None,
        "split": split,
        "class_names": classes,
        "num_examples": len(files),
        "fingerprint": fingerprint,
    }


def data_identity(dataset: str, data_dir: str | None, split: str, unlabelled: bool = False) -> dict:
    """The identity of `split` of `dataset` (a dict of IDENTITY_KEYS, JSON-serialisable):
    kind, the dataset as an absolute path (or TFDS name / "embedded"), the resolved data_dir
    and version (TFDS kinds), the split, the class names in label order, the number of
    examples and the fingerprint. `unlabelled`: the data read without labels (no class names,
    "unlabelled": True, and a fingerprint of its own: the same files read with labels are
    other training data). Raises the data module's errors for a missing dataset or split."""
    root = image_folder_root(absolute_dataset(dataset))
    if root is not None and unlabelled:
        return _unlabelled_folder_identity(root, split)
    if root is not None:
        return _folder_identity(root, split)
    identity = _tfds_identity(dataset, data_dir, split)
    if unlabelled:
        identity.update(
            class_names=[],
            fingerprint=_digest(["unlabelled", identity["fingerprint"]]),
            unlabelled=True,
        )
    return identity


def _tfds_identity(dataset: str, data_dir: str | None, split: str) -> dict:
    raw = _open_raw(absolute_dataset(dataset), data_dir, split, False, None, warn=False)
    info = raw.info
    classes = list(info.class_names) or [str(i) for i in range(info.num_classes)]
    count = info.num_examples.get(split)
    name, num_bytes = _tfds_name_and_bytes(info.location, split)
    return {
        "kind": info.kind,
        "dataset": absolute_dataset(dataset) if info.kind == "tfds_dir" else dataset,
        "data_dir": info.location or None,
        "version": info.version or None,
        "split": split,
        "class_names": classes,
        "num_examples": count,
        # Not the location: a moved TFDS directory is the same data.
        "fingerprint": _digest(["tfds", name, info.version, split, count, num_bytes, classes]),
    }


def _tfds_name_and_bytes(location: str, split: str) -> tuple[str, int | None]:
    """The dataset's own name and the bytes of `split` (slices: of the whole split; unions:
    of each split, added) from the dataset_info.json it was read with (("", None) where it
    cannot be read)."""
    try:
        with open(os.path.join(location, "dataset_info.json"), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return "", None
    sizes = {s.get("name"): s.get("numBytes") for s in stored.get("splits", [])}
    # A union ("train+unlabelled") counts the bytes of each of its splits.
    parts = [sizes.get(part.strip().split("[")[0]) for part in split.split("+")]
    size = None if any(p is None for p in parts) else sum(int(p) for p in parts)
    return str(stored.get("name", "")), size


def describe(identity: dict, *, location: bool = True) -> str:
    """One line naming the data an identity describes (`location`: starting with where)."""
    where = identity.get("dataset")
    if identity.get("kind") == "tfds" and identity.get("data_dir"):
        where = f"{where} (in {identity['data_dir']})"
    classes = identity.get("class_names") or []
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    labels = "unlabelled" if identity.get("unlabelled") else f"{len(classes)} classes ({shown})"
    text = (
        f"split {identity.get('split')!r}: {identity.get('num_examples')} examples, "
        f"{labels}, fingerprint {identity.get('fingerprint')}"
    )
    return f"{where}, {text}" if location else text
