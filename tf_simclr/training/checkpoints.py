"""Checkpoint discovery, validation and restore with fallback past damaged checkpoints."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil

import tensorflow as tf

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"ckpt-(\d+)\.index$")


class CheckpointError(RuntimeError):
    """Checkpoints exist in model_dir but none of them can be restored."""


def variables_by_path(variables) -> dict:
    """{variable.path: variable}; paths come from layer names, so they are stable across
    rebuilds of the same architecture (and shared between pretraining and fine-tuning)."""
    found = {}
    for variable in variables:
        path = getattr(variable, "path", None) or variable.name
        if path in found and found[path] is not variable:
            raise ValueError(f"Two variables share the path {path!r}; name the layers uniquely.")
        found[path] = variable
    return found


def training_checkpoint(model, optimizer=None, **extra) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint of every model weight (trainable and batch-norm statistics) and
    every optimizer variable, each keyed by its path, plus `extra` trackables.

    Keras 3 layers holding sub-layers in Python lists are not walked by tf.train.Checkpoint, so
    checkpointing the model object would silently miss most of its weights; flat path-keyed
    dicts save all of them, and let fine-tuning restore the encoder of a pretraining run.
    """
    objects = {"model_weights": variables_by_path(model.weights)}
    if optimizer is not None:
        objects["optimizer_variables"] = variables_by_path(optimizer.variables)
    objects.update(extra)
    return tf.train.Checkpoint(**objects)


def checkpoint_key(path: str, collection: str = "model_weights") -> str:
    """The key under which `training_checkpoint` stores the variable of Keras path `path`.

    tf.train.Checkpoint escapes dictionary keys ("." becomes "..", "/" becomes ".S").
    """
    local = path.replace(".", "..").replace("/", ".S")
    return f"{collection}/{local}/.ATTRIBUTES/VARIABLE_VALUE"


def stored_model_weight_paths(prefix: str) -> list[str]:
    """Keras paths of the model weights a `training_checkpoint` file holds."""
    paths = []
    for key in tf.train.load_checkpoint(prefix).get_variable_to_shape_map():
        if key.startswith("model_weights/") and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE"):
            local = key[len("model_weights/") : -len("/.ATTRIBUTES/VARIABLE_VALUE")]
            paths.append(_unescape(local))
    return sorted(paths)


def _unescape(local: str) -> str:
    # Inverse of checkpoint_key's escaping: ".S" -> "/", ".." -> ".".
    out, i = [], 0
    while i < len(local):
        if local.startswith(".S", i):
            out.append("/")
            i += 2
        elif local.startswith("..", i):
            out.append(".")
            i += 2
        else:
            out.append(local[i])
            i += 1
    return "".join(out)


def read_model_weights(prefix: str, paths) -> dict:
    """{path: value} for each of `paths` that the checkpoint `prefix` holds a model weight for."""
    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    keys = {p: checkpoint_key(p) for p in paths}
    return {p: reader.get_tensor(key) for p, key in keys.items() if key in stored}


def check_checkpoint_fits(prefix: str, model) -> None:
    """Raise CheckpointError unless checkpoint `prefix` holds exactly the model's weights: every
    weight of `model`, and no model weight the model lacks (another architecture). Optimizer
    state in the file is ignored."""
    stored = {
        key
        for key in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
        if key.startswith("model_weights/")
    }
    expected = {checkpoint_key(w.path): w.path for w in model.weights}
    missing = sorted(p for key, p in expected.items() if key not in stored)
    extra = sorted(stored - set(expected))
    if not (missing or extra):
        return
    parts = []
    if missing:
        parts.append(
            f"it lacks {len(missing)} of the model's {len(expected)} weights (e.g. {missing[0]})"
        )
    if extra:
        name = _unescape(extra[0][len("model_weights/") :].split("/.ATTRIBUTES")[0])
        parts.append(f"it holds {len(extra)} weights the model does not have (e.g. {name})")
    raise CheckpointError(
        f"Checkpoint {prefix} was written by another architecture than the one configured: "
        f"{'; '.join(parts)}. Use the run's own settings (its config.json) or the matching "
        "--resnet_depth/--width_multiplier/... flags."
    )


def assign_weights_by_path(weights, values: dict, *, replaceable=(), source: str = "") -> dict:
    """Copy values[w.path] into every weight w whose path `values` holds.

    A weight whose path contains one of the `replaceable` substrings (a classification head
    whose number of classes changed) keeps its value when the shapes differ; any other shape
    difference means another architecture and raises ValueError before anything is assigned.
    Returns counts: {"copied", "kept_replaceable", "missing"}.
    """
    plan, kept, missing = [], [], 0
    for weight in weights:
        value = values.get(weight.path)
        if value is None:
            missing += 1
        elif tuple(weight.shape) == tuple(value.shape):
            plan.append((weight, value))
        elif any(part in weight.path for part in replaceable):
            kept.append(weight.path)
        else:
            raise ValueError(
                f"{source or 'The checkpoint'} holds {weight.path} with shape "
                f"{tuple(value.shape)} but the model built from the flags has "
                f"{tuple(weight.shape)}: it was trained with another architecture. Use the "
                "pretraining run's model flags (--resnet_depth, --width_multiplier, --sk_ratio, "
                "--proj_head_mode, ...)."
            )
    for weight, value in plan:
        weight.assign(value)
    if kept:
        log.info(
            "Kept the new initial values of %d weight(s) whose shape changed: %s",
            len(kept),
            ", ".join(kept),
        )
    return {"copied": len(plan), "kept_replaceable": len(kept), "missing": missing}


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory`, oldest first, found from their index files (so a
    missing or stale `checkpoint` state file does not hide any)."""
    found = []
    for index in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        match = _CKPT_RE.search(os.path.basename(index))
        if match:
            found.append((int(match.group(1)), index[: -len(".index")]))
    return [prefix for _, prefix in sorted(found)]


def _number(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[-1])


STATE_FILENAME = "checkpoint"


def check_state_file(directory: str) -> None:
    """Raise CheckpointError naming the `checkpoint` state file of `directory` when it is not
    text: TensorFlow's readers (CheckpointManager, get_checkpoint_state) fail on it with a bare
    UnicodeDecodeError. (A text file they cannot parse they ignore, and so does tf_simclr,
    which finds checkpoints from their .index files.)"""
    path = os.path.join(directory, STATE_FILENAME)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(
            f"{path} is not a checkpoint state file (binary data at byte {err.start}): the file "
            f"is damaged. Move it away (e.g. to {path}.damaged) and rerun: the checkpoints "
            "themselves are found from their ckpt-*.index files, and the next save writes a "
            "new state file."
        ) from err


def _state_file_prefixes(directory: str) -> list[str]:
    """Checkpoints named in the `checkpoint` state file, which CheckpointManager rewrites only
    after a save is complete: a listed checkpoint without its files was damaged afterwards."""
    check_state_file(directory)
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        path = os.path.join(directory, STATE_FILENAME)
        if os.path.isfile(path):
            log.warning(
                "%s cannot be parsed (a damaged checkpoint state file); checkpoints are found "
                "from their .index files instead.",
                path,
            )
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    out = []
    for path in paths:
        if not path:
            continue
        path = path if os.path.isabs(path) else os.path.join(directory, path)
        if re.search(r"ckpt-\d+$", path):
            out.append(path)
    return out


def missing_index_checkpoints(directory: str) -> tuple[list[str], list[str]]:
    """(listed, orphans): checkpoints without an .index file. `listed` are named in the state
    file (so they were complete once, then lost files); `orphans` only have data files left
    (a save killed before its index was written, or a deletion killed half-way)."""
    listed = [p for p in _state_file_prefixes(directory) if not os.path.exists(p + ".index")]
    orphans = set()
    for data in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.data-*")):
        match = re.search(r"(ckpt-\d+)\.data-", os.path.basename(data))
        if match:
            prefix = os.path.join(directory, match.group(1))
            if not os.path.exists(prefix + ".index") and prefix not in listed:
                orphans.add(prefix)
    return sorted(set(listed), key=_number), sorted(orphans, key=_number)


def remove_checkpoint_files(prefix: str) -> list[str]:
    """Delete a checkpoint's files and the `<prefix>_temp` directory a failed or killed save
    leaves behind; returns what was removed."""
    removed = []
    for path in glob.glob(glob.escape(prefix) + ".*") + glob.glob(glob.escape(prefix) + "_temp"):
        if not re.search(r"\.(index|data-\d+-of-\d+)$|_temp$", path):
            continue
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError as err:
            log.warning("Could not remove %s: %s", path, err)
    return removed


def remove_interrupted_saves(directory: str) -> list[str]:
    """Delete `ckpt-<N>_temp` directories: the scratch space of a save that was killed. Call
    only when no save into `directory` is running (at the start of training)."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "ckpt-*_temp"))):
        if os.path.isdir(path) and re.search(r"ckpt-\d+_temp$", path):
            log.warning(
                "Removing %s: the scratch files of a checkpoint save that was killed.", path
            )
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def validate_checkpoint(prefix: str) -> None:
    """Read every tensor of a checkpoint so truncated or missing shards fail here, with the
    checkpoint named, rather than half-way through a restore."""
    data_files = glob.glob(glob.escape(prefix) + ".data-*")
    if not data_files:
        raise CheckpointError(f"checkpoint {prefix} has no data files (.data-*).")
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError, ValueError) as err:
        # The reader raises IndexError for a truncated shard ("Read less bytes than requested").
        raise CheckpointError(f"checkpoint {prefix} cannot be read: {err}") from err


def latest_valid_checkpoint(directory: str) -> str:
    """The newest intact checkpoint prefix in `directory` (for eval and export), reporting and
    skipping damaged ones. Raises FileNotFoundError if there is none, CheckpointError if all
    are damaged."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise FileNotFoundError(
            f"No checkpoint in --model_dir={directory}: train first (--mode=train or "
            "train_then_eval), or point --model_dir at a trained run."
        )
    damaged = []
    for prefix in reversed(candidates):
        try:
            validate_checkpoint(prefix)
        except CheckpointError as err:
            log.error("Checkpoint %s is damaged and was skipped: %s", prefix, _first_line(err))
            damaged.append(prefix)
            continue
        if damaged:
            log.warning("Using %s; newer damaged checkpoint(s): %s", prefix, ", ".join(damaged))
        return prefix
    raise CheckpointError(
        f"All {len(damaged)} checkpoint(s) in {directory} are damaged ({', '.join(damaged)})."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def restore_latest_valid(checkpoint: tf.train.Checkpoint, directory: str) -> str | None:
    """Restore the newest checkpoint in `directory` that is intact.

    Damaged checkpoints (truncated or missing files) are reported by name and skipped. Returns
    the restored prefix, or None if the directory holds no checkpoint (or only the data of a
    first save that was interrupted). Raises CheckpointError if checkpoints exist but none can
    be restored, or if an intact checkpoint does not fit the model (other flags): never
    silently starting from scratch over a trained model.
    """
    candidates = list_checkpoints(directory)
    listed_missing, orphans = missing_index_checkpoints(directory)
    damaged = []
    for prefix in reversed(candidates):
        try:
            validate_checkpoint(prefix)
        except CheckpointError as err:
            log.error("Checkpoint %s is damaged and was skipped: %s", prefix, _first_line(err))
            damaged.append(prefix)
            continue
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except tf.errors.OpError as err:
            log.error("Checkpoint %s is damaged and was skipped: %s", prefix, _first_line(err))
            damaged.append(prefix)
            continue
        except (AssertionError, ValueError) as err:
            # The files are intact (validated above): the model built from the flags differs.
            raise CheckpointError(
                f"Checkpoint {prefix} is intact but does not fit the model built from the "
                f"current flags ({_first_line(err)}). {directory} holds a run trained with other "
                "settings or another version of tf_simclr (see its config.json): rerun with "
                "those flags, or use a new --model_dir."
            ) from err
        newer = [p for p in listed_missing + orphans if _number(p) > _number(prefix)]
        for lost in sorted(newer, key=_number):
            if lost in listed_missing:
                log.error(
                    "Checkpoint %s is damaged and was skipped: its .index file is missing.", lost
                )
            else:
                log.warning(
                    "Checkpoint %s is incomplete (data files without .index: an interrupted "
                    "save) and was skipped.",
                    lost,
                )
        damaged += newer
        if damaged:
            log.warning(
                "Fell back to %s; %d newer checkpoint(s) were damaged or incomplete: %s",
                prefix,
                len(damaged),
                ", ".join(sorted(damaged, key=_number)),
            )
        return prefix
    if candidates:
        raise CheckpointError(
            f"All {len(damaged)} checkpoint(s) in {directory} are damaged ({', '.join(damaged)}). "
            "Nothing was overwritten. Move the damaged ckpt-* files away to start from scratch, "
            "or point --model_dir at another directory."
        )
    if listed_missing or len(orphans) > 1:
        lost = sorted(listed_missing + orphans, key=_number)
        raise CheckpointError(
            f"{directory} held a trained model but none of its checkpoints can be restored: "
            f"the .index files of {', '.join(lost)} are missing. Nothing was overwritten. "
            "Restore the missing files, or move the ckpt-* files and the 'checkpoint' file away "
            "to start from scratch, or point --model_dir at another directory."
        )
    for prefix in orphans:  # the first save of a run was interrupted: nothing to resume
        log.warning(
            "Removing %s: a checkpoint whose save was interrupted before completion (no .index).",
            prefix,
        )
        remove_checkpoint_files(prefix)
    return None
