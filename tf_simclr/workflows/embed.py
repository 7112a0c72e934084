"""`--mode=embed`: one model output (--embed_output, final_avg_pool by default) for every image
of a split (--eval_split of --dataset: an image folder, a TFDS dataset or 'embedded'), computed
with the evaluation preprocessing (central crop, bicubic resize to --image_size) and written as
one .npz file with the images' ids, paths and labels, plus a JSON summary beside it. With
--unlabelled an image folder is every image at any depth (under ROOT/<--eval_split>, else
ROOT), its labels all -1 and no class names; a TFDS split keeps its labels (-1: none).

The model is --checkpoint (a model_dir, a ckpt-N prefix, an export model_dir/saved_model/<step>
or a converted published model's model_dir) or, without it, the newest checkpoint in
--model_dir. Every problem that can be found without running the network (no model, an empty
or unreadable folder, an unknown output, an unwritable destination) stops the run before it
starts; the file is written to a temporary name and renamed, so it is complete or absent."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid

import numpy as np
import tensorflow as tf

from tf_simclr import augment, factory
from tf_simclr import data as data_lib
from tf_simclr.config import CONFIG_FILENAME, Config, ConfigError, run_config_of_checkpoint
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.evaluation import visualize
from tf_simclr.network.model import SUPERVISED_HEAD_NAME
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.training.progress import Progress
from tf_simclr.workflows import export as export_lib
from tf_simclr.workflows import storage, warm_start

log = logging.getLogger(__name__)

EMBEDDINGS_FILENAME = "embeddings.npz"


def output_path(config: Config) -> str:
    """The .npz file --mode=embed writes: --embed_out, else model_dir/embeddings.npz."""
    path = config.embed_out or os.path.join(config.model_dir, EMBEDDINGS_FILENAME)
    return os.path.abspath(os.path.expanduser(path))


def neighbours_path(npz_path: str) -> str:
    """The picture of nearest neighbours beside the .npz (embeddings_neighbours.png)."""
    return os.path.splitext(npz_path)[0] + "_neighbours.png"


def summary_path(npz_path: str) -> str:
    """The JSON summary written beside the .npz file (embeddings.npz -> embeddings.json)."""
    return os.path.splitext(npz_path)[0] + ".json"


def run_embed(config: Config) -> dict:
    """Embed every image of --eval_split with the model of --checkpoint (or --model_dir) and
    write the .npz file and its summary; returns the summary (with "embeddings": the path)."""
    start = time.perf_counter()
    out = output_path(config)
    if config.embed_neighbours < 0:
        raise ConfigError(
            f"--embed_neighbours={config.embed_neighbours}: give a number of images >= 0."
        )
    _check_settings_source(config)
    _check_destination(out)
    kind, model_path = _resolve_model(config)
    split = _open_split(config)
    model = _load_model(config, kind, model_path)
    _check_output_name(config, model, model_path)

    features, labels, ids = _extract(config, model, model_path, split)
    arrays, summary = _results(config, split, out, model_path, features, labels, ids)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    picture = None
    if config.embed_neighbours and len(ids) > 1:
        picture = _neighbours_picture(split, features, arrays["labels"], ids, config)
        summary["neighbours"] = neighbours_path(out)
    write_embeddings(out, arrays, summary)
    if picture is not None:
        from PIL import Image

        _write_atomically(summary["neighbours"], lambda f: Image.fromarray(picture).save(f, "PNG"))
        log.info("Wrote %s.", summary["neighbours"])
    log.info(
        "Wrote %d embeddings of shape %s to %s.", summary["count"], tuple(summary["shape"]), out
    )
    return summary


def _extract(config: Config, model, model_path: str, split: _Split):
    """The features, labels and ids of every image of `split`, with progress."""
    batches = math.ceil(split.expected / config.eval_batch_size)
    log.info(
        "Embedding %d images of split %r of %s with %s (output %s, %d px, %d batches).",
        split.expected,
        config.eval_split,
        config.dataset,
        model_path,
        config.embed_output,
        config.image_size,
        batches,
    )
    progress = Progress(
        total=batches,
        initial=0,
        every=max(1, config.log_every_steps),
        images_per_step=config.eval_batch_size,
        unit="batch",
    )
    ids: list[str] = []

    def collect(features, batch) -> None:
        ids.extend(i.decode("utf-8") for i in batch["id"].numpy())
        progress.update(math.ceil(len(ids) / config.eval_batch_size), {})

    try:
        features, labels = eval_lib.extract_features(
            model, split.dataset, feature_key=config.embed_output, on_batch=[collect]
        )
    finally:
        progress.close()
    return features, labels, ids


def _results(config: Config, split: _Split, out: str, model_path: str, features, labels, ids):
    """The arrays of the .npz file and its summary, with the images that could not be read
    counted (and named where the listing gave their ids) and logged."""
    # With the files the listing refused: those decoding skipped (damaged past the listing's
    # checks), named where the listing gave their ids (image folders), else only counted.
    embedded = set(ids)
    bad = split.bad_before + [i for i in split.listed_ids if i not in embedded]
    bad_count = len(split.bad_before) + max(0, split.expected - len(ids))
    arrays = {
        "features": features,
        "ids": np.asarray(ids, dtype=str),
        "labels": labels if split.labelled else np.full(len(ids), -1, np.int64),
        "class_names": np.asarray(split.class_names, dtype=str),
        "output": np.asarray(config.embed_output),
    }
    if split.paths is not None:
        arrays["paths"] = np.asarray([split.paths[i] for i in ids], dtype=str)
    summary = {
        "embeddings": out,
        "count": int(features.shape[0]),
        "shape": [int(d) for d in features.shape[1:]],
        "output": config.embed_output,
        "model": model_path,
        "dataset": config.dataset,
        "split": config.eval_split,
        "image_size": config.image_size,
        "labelled": split.labelled,
        "bad_images": bad_count,
        "bad_image_names": bad,
    }
    if split.folder is not None:
        summary["folder"] = split.folder
    if bad_count:
        log.warning(
            "%d image(s) of split %r could not be read and are not in %s%s%s",
            bad_count,
            config.eval_split,
            out,
            f": {', '.join(bad[:5])}" if bad else "",
            f" and {len(bad) - 5} more (all named in {summary_path(out)})" if len(bad) > 5 else "",
        )
    return arrays, summary


@dataclasses.dataclass
class _Split:
    """The split to embed: its dataset of {"image", "label", "id"} batches and what is known
    of it before it is read."""

    dataset: tf.data.Dataset
    expected: int  # images that should be embedded
    listed_ids: list[str]  # their ids, where known before reading (image folders)
    bad_before: list[str]  # ids of the files the listing already refused
    paths: dict[str, str] | None  # id -> absolute file path (image folders)
    labelled: bool
    class_names: tuple[str, ...]
    folder: str | None = None  # the directory an image folder's ids are relative to


def _check_settings_source(config: Config) -> None:
    """Over a --model_dir that holds a run, the settings (image size, architecture) are that
    run's: a --checkpoint from elsewhere would be embedded with them, so it is refused."""
    if not config.checkpoint or not os.path.isfile(os.path.join(config.model_dir, CONFIG_FILENAME)):
        return
    path = os.path.abspath(config.checkpoint)
    inside = (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path)))
    if any(os.path.isdir(d) and os.path.samefile(d, config.model_dir) for d in inside):
        return
    raise ConfigError(
        f"--model_dir={config.model_dir} holds a run, whose settings (image size, "
        f"architecture) would be used with --checkpoint={config.checkpoint}, a model from "
        "elsewhere. Give a --model_dir without a run (the embeddings are written there), or "
        "drop --checkpoint to embed with the run's own newest checkpoint."
    )


def _check_destination(out: str) -> None:
    if os.path.isdir(out):
        raise ConfigError(
            f"--embed_out={out} is a directory: give the path of the .npz file to write "
            f"(e.g. {os.path.join(out, EMBEDDINGS_FILENAME)})."
        )
    if not out.endswith(".npz"):
        raise ConfigError(f"--embed_out={out} must end in .npz (the file numpy.load reads).")
    storage.check_model_dir_writable(os.path.dirname(out))


def _resolve_model(config: Config) -> tuple[str, str]:
    """("export", directory) or ("checkpoint", prefix) of --checkpoint, else of --model_dir's
    newest intact checkpoint; FileNotFoundError or ValueError naming the problem."""
    if config.checkpoint:
        return warm_start.resolve_checkpoint(config.checkpoint)
    try:
        return warm_start.resolve_checkpoint(config.model_dir, flag="--model_dir")
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(
            f"--mode=embed uses the newest checkpoint in --model_dir={config.model_dir}, and "
            f"there is none: {err} Train first (--mode=train), or name the model with "
            "--checkpoint (a model_dir, ckpt-N prefix or export)."
        ) from None


def _open_split(config: Config) -> _Split:
    """The split with the evaluation preprocessing; an empty or unreadable image folder (or a
    missing split) raises ValueError naming it, before any model is loaded. With --unlabelled
    an image folder is every image at any depth under ROOT/<--eval_split>, or under ROOT when
    it has no such folder (labels -1, no classes)."""
    split = config.eval_split
    root = data_lib.image_folder_root(config.dataset)
    listed_ids, bad_before, paths, split_dir = [], [], None, None
    if root is not None:
        files, bad, split_dir = _list_folder(config, root)
        listed_ids = [os.path.relpath(p, split_dir).replace(os.sep, "/") for p in files]
        bad_before = [os.path.relpath(p, split_dir).replace(os.sep, "/") for p in bad]
        paths = {i: os.path.abspath(p) for i, p in zip(listed_ids, files, strict=True)}
    source, info = data_lib.load_source(
        config.dataset,
        data_dir=config.data_dir,
        split=split,
        strict=config.strict_data,
        with_ids=True,
        unlabelled=config.unlabelled,
        root_if_no_split=True,
    )
    image_size = config.image_size
    # As the evaluation pipeline (data.build_eval_dataset) preprocesses, keeping the ids.
    dataset = source.map(
        tf.autograph.experimental.do_not_convert(
            lambda d: {
                "image": augment.preprocess_for_eval(d["image"], image_size),
                "label": tf.cast(d["label"], tf.int32),
                "id": d["id"],
            }
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.batch(config.eval_batch_size).prefetch(tf.data.AUTOTUNE)
    expected = len(listed_ids) if root is not None else int(info.num_examples.get(split, 0))
    return _Split(
        dataset=dataset,
        expected=expected,
        listed_ids=listed_ids,
        bad_before=bad_before,
        paths=paths,
        labelled=info.num_classes > 0,
        class_names=tuple(info.class_names),
        folder=split_dir and os.path.abspath(split_dir),
    )


def _list_folder(config: Config, root: str) -> tuple[list[str], list[str], str]:
    """(good files, refused files, the folder the ids are relative to) of the image folder
    `root`: split --eval_split by class folders, or with --unlabelled every image at any depth
    (as training's --unlabelled reads a folder); ValueError naming the folder and the flag."""
    split = config.eval_split
    try:
        if config.unlabelled:
            log.info("%s", data_lib.describe_unlabelled_folder(root, split, root_if_no_split=True))
            return data_lib.list_unlabelled_images(
                root, split, strict=config.strict_data, root_if_no_split=True
            )
        files, _, _, bad = data_lib.list_image_folder(root, split, strict=config.strict_data)
    except ValueError as err:
        reading = " as unlabelled images (--unlabelled)" if config.unlabelled else ""
        raise ValueError(
            f"--mode=embed reads split --eval_split={split!r} of the image folder "
            f"--dataset={root}{reading}: {err}"
        ) from None
    return files, bad, os.path.dirname(os.path.dirname(files[0]))


def nearest_neighbours(features: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """[Q, k] positions of each query's k most cosine-similar other rows of `features` (the
    query itself left out; of equal similarities the earlier row first)."""
    x = features.reshape(len(features), -1).astype(np.float64)
    unit = x / np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), 1e-12))
    similarities = unit[queries] @ unit.T
    similarities[np.arange(len(queries)), queries] = -np.inf
    positions = np.broadcast_to(np.arange(len(features)), similarities.shape)
    return np.lexsort((positions, -similarities), axis=1)[:, :k]


def _neighbours_picture(split: _Split, features, labels, ids, config: Config) -> np.ndarray:
    """--embed_neighbours images spread evenly over the split, each with its nearest others;
    the thumbnails come from a second pass over the split, matched by id."""
    count = min(config.embed_neighbours, len(ids))
    queries = np.unique(np.linspace(0, len(ids) - 1, count).round().astype(np.int64))
    neighbours = nearest_neighbours(features, queries, min(visualize.NEIGHBOURS_K, len(ids) - 1))
    wanted = {ids[i] for i in np.concatenate([queries, neighbours.ravel()])}
    thumbnails = {}
    for batch in split.dataset:
        for image_id, image in zip(batch["id"].numpy(), batch["image"].numpy(), strict=True):
            image_id = image_id.decode("utf-8")
            if image_id in wanted:
                thumbnails[image_id] = visualize.thumbnails(image[None])[0]
        if len(thumbnails) == len(wanted):
            break
    # An unlabelled query or neighbour (-1) has no class to match: a grey frame.
    unlabelled = (labels[neighbours] < 0) | (labels[queries] < 0)[:, None]
    return visualize.neighbours_picture(
        np.stack([thumbnails[ids[q]] for q in queries]),
        np.stack([[thumbnails[ids[n]] for n in row] for row in neighbours]),
        (labels[neighbours] == labels[queries][:, None]) & ~unlabelled,
        caption=f"image | its {neighbours.shape[1]} nearest images of the split",
        unlabelled=unlabelled,
    )


def _head_classes(prefix: str) -> int | None:
    """The number of classes of the supervised head a checkpoint holds (None: no head)."""
    for key, shape in tf.train.load_checkpoint(prefix).get_variable_to_shape_map().items():
        if key.startswith("model_weights/") and SUPERVISED_HEAD_NAME in key and len(shape) == 2:
            return int(shape[-1])
    return None


def _load_model(config: Config, kind: str, path: str):
    """A callable images -> dict of outputs: the loaded export, or the network of the
    checkpoint's run (its config.json, else the flags) with every weight restored."""
    if kind == "export":
        log.info("Loading the export %s.", path)
        module = tf.saved_model.load(path)
        if not hasattr(module, export_lib.SERVE_ENDPOINT):
            # A published SimCLR module (the reference code's format) has another call.
            raise ValueError(
                f"--checkpoint={path} is a SavedModel but not a tf_simclr export (it has no "
                f"{export_lib.SERVE_ENDPOINT!r} function). A published SimCLR model is "
                f"converted first: python -m tf_simclr.convert --src={path} --dst=DIR, then "
                "--checkpoint=DIR."
            )
        return module
    source = run_config_of_checkpoint(path) or config
    model = factory.build_model(source, _head_classes(path))
    ckpt_lib.check_checkpoint_fits(path, model)
    ckpt_lib.training_checkpoint(model).restore(path).expect_partial()  # no optimizer state
    log.info("Restored %s.", path)
    return model


def _check_output_name(config: Config, model, path: str) -> None:
    size = config.image_size
    outputs = model(tf.zeros([1, size, size, 3], tf.float32), training=False)
    if config.embed_output not in outputs:
        raise ConfigError(
            f"--embed_output={config.embed_output!r} is not an output of {path}; its outputs: "
            f"{', '.join(sorted(outputs))}."
        )


def write_embeddings(path: str, arrays: dict, summary: dict) -> None:
    """Write `arrays` to the .npz file `path` and `summary` to its .json, each to a temporary
    file in the same folder renamed into place: a failure leaves neither a partial file nor
    the temporary one."""
    _write_atomically(path, lambda f: np.savez(f, **arrays))
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    _write_atomically(summary_path(path), lambda f: f.write(text.encode("utf-8")))


def _write_atomically(path: str, write) -> None:
    folder, name = os.path.split(path)
    # Created with open(), not tempfile.mkstemp: the file gets the umask's permissions (mkstemp
    # makes it readable by its owner only, and the rename would keep that).
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
