"""Writing TFDS-format directories, and the image folder -> TFDS converter."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable, Sequence

from tf_simclr.data.folders import (
    _CONVERT_EXTENSIONS,
    _common_shape,
    _folder_splits,
    _report_bad,
    check_image_folder,
    list_image_folder,
)
from tf_simclr.data.sources import _tfds


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
    shape = _common_shape([p for paths, _ in listings.values() for p in paths[:256]])
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
