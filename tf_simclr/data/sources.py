"""Sources: the embedded dataset, TFDS datasets by name, TFDS-format directories and image
folders, opened as encoded examples (``_open_raw``) or decoded ones (``load_source``)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np
import tensorflow as tf

from tf_simclr.data.folders import (
    IMAGE_EXTENSIONS,
    _checked_listing,
    _common_shape,
    _folder_splits,
    _list_split,
    list_unlabelled_images,
)

DEFAULT_DATASET = "embedded"
# The label of an example without one (unlabelled data, or labels hidden outside a subset).
UNLABELLED = -1
EMBEDDED_NAME = "shapes10"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _embedded_dir() -> str:
    # The dataset lives in the project's top-level data/ folder. The wheel installs that folder
    # as the package tf_simclr/embedded_data/ (pyproject.toml), so an installed tf_simclr finds
    # it inside itself and a checkout beside the package, whatever the working directory.
    installed = os.path.join(_PACKAGE_DIR, "embedded_data")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(_PACKAGE_DIR), "data")


EMBEDDED_DIR = _embedded_dir()


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
    version: str = ""  # TFDS kinds: the dataset's version
    location: str = ""  # TFDS kinds: the directory its files are read from

    @property
    def fixed_size(self) -> bool:
        return self.image_shape[0] is not None and self.image_shape[1] is not None


@dataclasses.dataclass(frozen=True)
class RecordFiles:
    """A TFDS split's serialized examples as TFRecord files, (path, skip, take) each, listed in
    the order the split is read; `id_key` names the string feature holding each example's id."""

    files: tuple[tuple[str, int, int], ...]
    id_key: str


@dataclasses.dataclass
class _Raw:
    """A source before decoding: encoded image bytes, labels and ids, in a fixed order."""

    info: DatasetInfo
    dataset: tf.data.Dataset  # {"encoded": string, "label": int64, "id": string}
    labels: np.ndarray | None = None  # known without reading (image folders)
    ids: list[str] | None = None
    paths: list[str] | None = None
    file_sharded: bool = False
    # The serialized examples behind `dataset`, to parse labels and ids or chosen examples
    # from directly (TFDS splits read in file order; None: only through `dataset`).
    records: RecordFiles | None = None


def image_folder_root(dataset: str) -> str | None:
    """The directory of `dataset` when it is an image folder (not embedded, TFDS or a
    TFDS-format directory), else None."""
    if not isinstance(dataset, str) or dataset in ("embedded", EMBEDDED_NAME):
        return None
    path = os.path.expanduser(dataset)
    if os.path.isdir(path) and _find_version_dir(path) is None:
        return path
    return None


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


def _unlabelled_folder_raw(
    root: str, split: str, strict: bool, warn: bool = True, root_if_no_split: bool = False
) -> _Raw:
    """Every image at any depth under root/<split> (root, for a folder without a train/
    folder, or any folder with ``root_if_no_split``), each with label -1; ids are paths
    relative to that directory."""
    paths, bad, directory = list_unlabelled_images(
        root, split, strict=strict, warn=warn, root_if_no_split=root_if_no_split
    )
    info = DatasetInfo(
        num_examples={split: len(paths)},
        num_classes=0,
        image_shape=_common_shape(paths[: min(len(paths), 64)]),
        name=os.path.basename(os.path.normpath(os.path.expanduser(root))),
        kind="folder",
        skipped_files=len(bad),
    )
    labels = np.full(len(paths), UNLABELLED, np.int64)
    ids = [os.path.relpath(p, directory).replace(os.sep, "/") for p in paths]
    return _Raw(
        info=info, dataset=_folder_dataset(paths, labels, ids), labels=labels, ids=ids, paths=paths
    )


def _without_labels(raw: _Raw) -> _Raw:
    """A labelled source read as unlabelled: every label -1, no classes."""
    dataset = _map(raw.dataset, lambda d: {**d, "label": tf.constant(UNLABELLED, tf.int64)})
    info = dataclasses.replace(raw.info, num_classes=0, class_names=())
    # The record files hold the labels this view drops.
    return dataclasses.replace(raw, info=info, dataset=dataset, records=None)


def _folder_dataset(paths, labels, ids) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": list(paths), "label": np.asarray(labels, np.int64), "id": list(ids)}
    )
    return _map(
        ds, lambda d: {"encoded": tf.io.read_file(d["path"]), "label": d["label"], "id": d["id"]}
    )


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
    split_info = _split_info(info, split, name)
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
    counts[split] = int(split_info.num_examples)
    read_config = tfds.ReadConfig(add_tfds_id=True, try_autocache=False, shuffle_seed=seed)
    file_sharded = False
    if input_context is not None and input_context.num_input_pipelines > 1:
        num_shards = split_info.num_shards
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
        version=str(info.version),
        location=str(builder.data_dir),
    )
    records = None
    if not (shuffle_files or file_sharded):
        records = _records_in_read_order(info, split_info, id_key)
    return _Raw(info=dinfo, dataset=ds, file_sharded=file_sharded, records=records)


def serialized_records(records: RecordFiles) -> tf.data.Dataset:
    """The split's serialized examples (strings), file after file, in read order."""
    parts = [
        tf.data.TFRecordDataset(path).skip(skip).take(take) for path, skip, take in records.files
    ]
    return functools.reduce(tf.data.Dataset.concatenate, parts[1:], parts[0])


def parse_records(serialized, id_key: str, with_image: bool = True) -> dict:
    """A batch of serialized TFDS examples as the raw reading gives them: {"label", "id"} and,
    `with_image`, "encoded" (the image's bytes, not decoded); `id_key` is the id feature."""
    spec = {
        "label": tf.io.FixedLenFeature([], tf.int64),
        id_key: tf.io.FixedLenFeature([], tf.string),
    }
    if with_image:
        spec["image"] = tf.io.FixedLenFeature([], tf.string)
    example = tf.io.parse_example(serialized, spec)
    parsed = {"label": example["label"], "id": example[id_key]}
    if with_image:
        parsed["encoded"] = example["image"]
    return parsed


def _chosen_records(records: RecordFiles, indices) -> tf.data.Dataset:
    """The examples at `indices` (positions in read order) chosen among the serialized
    records, so only the kept ones are parsed; nothing after the last kept one is read."""
    indices = np.asarray(indices, np.int64)
    last = int(indices.max()) + 1 if len(indices) else 0
    chosen = _select(serialized_records(records).take(last), indices, None)
    parse = functools.partial(parse_records, id_key=records.id_key)
    return _map(chosen.batch(256), parse).unbatch()


def _records_in_read_order(info, split_info, id_key: str) -> RecordFiles | None:
    """The split's TFRecord files when reading them one after another gives the order TFDS
    reads the split in (one file, or a dataset TFDS reads in order; several files are
    otherwise interleaved) and its ids are strings; else None."""
    file_format = getattr(info, "file_format", None)
    if file_format is not None and getattr(file_format, "value", file_format) != "tfrecord":
        return None
    # ("tfds_id", made up by TFDS while reading, is not in the records.)
    if id_key not in info.features or getattr(info.features[id_key], "tf_dtype", None) != tf.string:
        return None
    instructions = list(split_info.file_instructions)
    if not instructions or (len(instructions) > 1 and not info.disable_shuffling):
        return None
    files = tuple((os.fspath(i.filename), int(i.skip), int(i.take)) for i in instructions)
    return RecordFiles(files=files, id_key=id_key)


def _split_info(info, split: str, name: str):
    """TFDS's description of `split`: a split ("train"), a slice ("train[:10%]") or several
    joined with "+" ("train+unlabelled", as STL-10's labelled and unlabelled images)."""
    try:
        return info.splits[split]
    except (KeyError, ValueError, AssertionError, TypeError) as err:
        raise ValueError(
            f"Split {split!r} not in dataset {name!r}; available splits: {sorted(info.splits)} "
            "(slices such as 'train[:10%]' and unions such as 'train+unlabelled' work too)."
        ) from err


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
    unlabelled: bool = False,
    root_if_no_split: bool = False,
) -> _Raw:
    """The source `dataset` names, before decoding; ``unlabelled``: read without labels (an
    image folder as every image at any depth, other sources with their labels dropped;
    ``root_if_no_split``: the whole folder when it has no folder named ``split``)."""
    if unlabelled:
        folder = image_folder_root(dataset) if isinstance(dataset, str) else None
        if folder is not None:
            return _unlabelled_folder_raw(folder, split, strict, warn, root_if_no_split)
        raw = _open_raw(dataset, data_dir, split, strict, input_context, shuffle_files, seed, warn)
        return _without_labels(raw)
    sh = (shuffle_files, seed)
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset must be a non-empty string, got {dataset!r}.")
    if dataset in ("embedded", EMBEDDED_NAME):
        vdir = _find_version_dir(os.path.join(EMBEDDED_DIR, EMBEDDED_NAME))
        if vdir is None:
            raise FileNotFoundError(
                f"The embedded dataset is missing from {EMBEDDED_DIR!r} (an installation "
                "without its package data?). Reinstall tf_simclr, or regenerate it from a checkout "
                "with `python data/generate_embedded.py`."
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
    unlabelled: bool = False,
    root_if_no_split: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Open a source; returns (dataset of {"image": uint8 [H, W, 3], "label": int64}, info).

    ``dataset``: "embedded", a TFDS name (read from ``data_dir``; never downloaded), a
    TFDS-format directory, or an image folder root/<split>/<class>/*. Grayscale, RGBA and
    palette images become RGB. With ``input_context`` each input pipeline reads a disjoint
    part. Undecodable images are skipped with a warning (``strict=True``: they raise).
    ``with_ids`` adds an "id" string; ``indices`` keeps only those example positions (of the
    stored order). ``shuffle_files`` shuffles the read order with ``seed`` (file order for
    TFDS; the whole file list for image folders, whose stored order is sorted by class).
    ``unlabelled``: every label is -1 (UNLABELLED) and ``info`` has no classes; an image
    folder is then every image at any depth under root/<split> (or root, for "train" of a
    folder without split folders), class folders or not; with ``root_if_no_split``, root
    itself for any split it has no folder for (--mode=embed embeds any folder).
    """
    # A subset of a TFDS split is picked by position, so its files must be read in order.
    tfds_shuffle = shuffle_files and indices is None
    raw = _open_raw(
        dataset,
        data_dir,
        split,
        strict,
        input_context,
        tfds_shuffle,
        seed,
        unlabelled=unlabelled,
        root_if_no_split=root_if_no_split,
    )
    ds = raw.dataset
    if raw.paths is not None:
        order = np.arange(len(raw.paths)) if indices is None else np.unique(indices)
        if shuffle_files:
            order = np.random.default_rng(seed).permutation(order)
        ds = _folder_dataset(
            [raw.paths[i] for i in order], raw.labels[order], [raw.ids[i] for i in order]
        )
    elif indices is not None and raw.records is not None:
        ds = _chosen_records(raw.records, indices)
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


def check_decodable(
    dataset: str, *, data_dir: str | None = None, split: str = "train", unlabelled: bool = False
) -> None:
    """Raise ValueError unless at least one image of the split decodes. Listing an image
    folder skips the files it can tell are damaged; files that look whole but do not decode
    are skipped while reading, so a split of only those would leave training nothing to read.
    Decodes only until the first good image."""
    ds, info = load_source(dataset, data_dir=data_dir, split=split, unlabelled=unlabelled)
    for _ in ds.take(1):
        return
    listed = info.num_examples.get(split, 0)
    raise ValueError(
        f"None of the {listed} image(s) of split {split!r} of {dataset!r} can be decoded"
        + (
            f" (and {info.skipped_files} more were skipped as damaged)"
            if info.skipped_files
            else ""
        )
        + ": every one is corrupt, so there is nothing to train or evaluate on. Replace them "
        "with readable images (the warnings above name them), or point to the right folder."
    )


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
