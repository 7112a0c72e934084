"""Image folders ``root/<split>/<class>/*``: layout checks, listing, damaged-file detection.

Only names and a few bytes per file are read here; decoding happens in the pipelines
(``sources.load_source``) or in the converter.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Formats tf.io.decode_image reads; others (TIFF, PPM, ...) need the converter, which uses PIL.
_TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_CONVERT_EXTENSIONS = IMAGE_EXTENSIONS + (".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_MAX_LOGGED = 5
# Folder names that mean a split, not a class (images directly inside one are misplaced).
_SPLIT_NAMES = ("train", "test", "validation", "val", "valid", "eval")
# The layouts an image folder may have, as error messages name them.
_LAYOUT = "root/<split>/<class>/*.jpg (or root/<class>/*.jpg for a folder without splits)"
# The other reading, for images without labels (an error about a labelled layout names it).
_UNLABELLED_HINT = (
    "If the images have no labels, read them as unlabelled instead (--unlabelled, "
    "unlabelled=True: every image at any depth under root/train, or under root without a "
    "train/ folder; pretraining only)"
)


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
    splits_found = _check_folder_layout(root)
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
        _check_split_classes(root, split, splits_found[split], train_classes)
    return tuple(classes)


def check_same_classes(root: str, splits: Sequence[str] = ("train", "test")) -> tuple[str, ...]:
    """``check_image_folder`` for labelled data that scores features (an evaluation dataset:
    a kNN bank or probe fit on one split, scored on the other): besides the layout, every
    split must have the same class folders. Returns the class names."""
    classes = check_image_folder(root, splits)
    found = _folder_splits(os.path.expanduser(root))
    first = splits[0]
    expected = set(_subdirs(found[first]))
    for split in splits[1:]:
        missing = sorted(expected - set(_subdirs(found[split])))
        if missing:
            raise ValueError(
                f"Split {split!r} of {root!r} lacks the class folder(s) {missing} that "
                f"{first!r} has: as labelled evaluation data, both splits need the same "
                f"classes (a probe fit on {first!r} would be scored on other classes). Add "
                f"{split!r} images of those classes, or remove them from {first!r}."
            )
    return classes


def _check_folder_layout(root: str) -> dict[str, str]:
    """The splits of the image folder ``root`` ({split: directory}) after checking that it
    exists, holds no stray images and uses one layout (with or without split folders)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root!r} does not exist. Pass an existing directory laid out as "
            "root/<split>/<class>/*.jpg."
        )
    stray = _image_names(root)
    if stray:
        raise ValueError(
            f"{len(stray)} image(s) lie directly in the image folder {root!r} (e.g. "
            f"{stray[0]!r}), where they would be ignored. Move them into class folders: {_LAYOUT}. "
            f"{_UNLABELLED_HINT}."
        )
    splits_found = _folder_splits(root)
    if not splits_found:
        raise ValueError(
            f"Image folder {root!r} is empty: expected root/<split>/<class>/*.jpg (e.g. "
            "root/train/cat/0001.jpg). Add images or point to the right directory."
        )
    if splits_found == {"train": root}:
        _check_flat_layout(root)
    return splits_found


def _check_flat_layout(root: str) -> None:
    """A folder without split folders: its top folders must all be class folders of images."""
    top = _subdirs(root)
    with_images = [d for d in top if _image_names(os.path.join(root, d))]
    if set(with_images) <= set(_SPLIT_NAMES):
        raise ValueError(
            f"Images lie directly in the split folder(s) {with_images} of {root!r}, which "
            "would be read as one split with those folders as classes. Put them into class "
            f"folders, e.g. {os.path.join(root, with_images[0], '<class>')}/: {_LAYOUT}. "
            f"{_UNLABELLED_HINT}."
        )
    nested = [d for d in top if d not in with_images and _subdirs(os.path.join(root, d))]
    if nested:
        raise ValueError(
            f"Image folder {root!r} mixes class folders (e.g. {with_images[0]!r} holds "
            f"images) with folders of folders (e.g. {nested[0]!r}). Use one layout: {_LAYOUT}."
        )


def _check_split_classes(
    root: str, split: str, split_dir: str, train_classes: set[str] | None
) -> None:
    """Every class folder of the split holds images, and (unless it is "train") no class is
    missing from ``train_classes`` (None: the folder has no "train" split)."""
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
        found = f"classes found: {classes or 'none'}"
        raise ValueError(
            _no_readable_images(
                _folder_splits(root)[split], found, bad, extensions, "in class subfolders"
            )
        )
    return paths, labels, classes, list(bad)


def _no_readable_images(directory: str, found: str, bad: dict[str, str], extensions, where) -> str:
    """The message for a split without a single readable image: how many files were
    unreadable and why (the first one), or which files were expected."""
    if bad:
        path, why = next(iter(bad.items()))
        return (
            f"No readable images in {directory!r} ({found}): all {len(bad)} image file(s) are "
            f"corrupt or unreadable (e.g. {path}: {why}), so there is nothing to train or "
            "evaluate on. Replace them with readable images, or point to the right folder."
        )
    return (
        f"No readable images in {directory!r} ({found}). Expected files with extensions "
        f"{', '.join(extensions)} {where}."
    )


# -- unlabelled folders: every image at any depth ------------------------------------------


def unlabelled_image_dir(root: str, split: str = "train", *, root_if_no_split: bool = False) -> str:
    """The directory an unlabelled image folder's ``split`` is read from: root/<split> when it
    exists, else root itself for "train" (a folder without split folders), or for any split
    with ``root_if_no_split`` (--mode=embed: any folder is embedded whole)."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root!r} does not exist. Pass an existing directory of images (at "
            "any depth; root/train/ is read when it exists)."
        )
    split_dir = os.path.join(root, split)
    if os.path.isdir(split_dir):
        return split_dir
    if split == "train" or root_if_no_split:
        return root
    raise ValueError(
        f"Split {split!r} not found in the unlabelled image folder {root!r}: there is no "
        f"{split_dir}/ folder. Pass --train_split=train (the whole folder when it has no "
        "train/ folder), or add the folder."
    )


def _walk_image_files(directory: str, extensions) -> tuple[list[str], int]:
    """(sorted paths of the files with an image extension at any depth under ``directory``,
    hidden files and folders left out; the number of sub-folders holding any). Symbolic links
    to folders are followed once each."""
    found, folders, seen = [], set(), set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [f for f in filenames if _is_image_name(f, extensions)]
        if names and dirpath != directory:
            folders.add(os.path.relpath(dirpath, directory).split(os.sep)[0])
        found.extend(os.path.join(dirpath, f) for f in names)
    return sorted(found), len(folders)


def list_unlabelled_images(
    root: str,
    split: str = "train",
    *,
    strict: bool = False,
    extensions=IMAGE_EXTENSIONS,
    warn=True,
    root_if_no_split: bool = False,
) -> tuple[list[str], list[str], str]:
    """List (paths, bad_paths, directory) of every image at any depth under root/<split> (or
    root, for "train" of a folder without split folders), read without labels: class folders,
    if any, are ignored. Damaged files are skipped with a warning as in ``list_image_folder``
    (``strict=True``: they raise); no image at all, or none readable, raises ValueError
    naming the folder, the count and the fix. ``root_if_no_split``: see
    ``unlabelled_image_dir``."""
    directory = unlabelled_image_dir(root, split, root_if_no_split=root_if_no_split)
    candidates, _ = _walk_image_files(directory, _CONVERT_EXTENSIONS)
    if not candidates:
        raise ValueError(
            f"No images in {directory!r} (searched at any depth): it holds no files with "
            f"extensions {', '.join(IMAGE_EXTENSIONS)}. Add images, or point --dataset at the "
            "folder that holds them."
        )
    paths, bad = [], {}
    for p in candidates:
        if not _is_image_name(os.path.basename(p), extensions):
            bad[p] = "format read only by the converter (python -m tf_simclr.data convert)"
            continue
        problem = _file_problem(p, extensions)
        if problem is None:
            paths.append(p)
        else:
            bad[p] = problem
    if bad and (strict or warn):
        _report_bad(bad, strict, directory)
    if not paths:
        raise ValueError(
            _no_readable_images(directory, "unlabelled, at any depth", bad, extensions, "")
        )
    return paths, list(bad), directory


def describe_unlabelled_folder(
    root: str, split: str = "train", *, root_if_no_split: bool = False
) -> str:
    """The log line saying how an unlabelled folder is read, e.g. "Reading /x/train as
    unlabelled images: 12,345 images in 3 sub-folders; labels ignored." (names only)."""
    directory = unlabelled_image_dir(root, split, root_if_no_split=root_if_no_split)
    files, folders = _walk_image_files(directory, IMAGE_EXTENSIONS)
    direct = sum(os.path.dirname(p) == directory for p in files)
    text = f"Reading {directory} as unlabelled images: {len(files):,} images"
    if folders:
        text += f" in {folders:,} sub-folder(s)"
        text += f" and {direct:,} directly in it" if direct else ""
        text += "; labels (class folders) ignored"
    return text + "."


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
