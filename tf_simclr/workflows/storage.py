"""Writing into model_dir safely: writability and free-space checks before training,
checkpoint saves that never leave a half-written newest checkpoint, and config.json with a
record of the settings a resumed run changed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from tf_simclr import config as config_lib
from tf_simclr.config import Config
from tf_simclr.training import checkpoints as ckpt_lib

log = logging.getLogger(__name__)


class ModelDirWriteError(OSError):
    """A checkpoint or log could not be written to model_dir (disk full, read-only, removed);
    the last complete checkpoint was left intact."""


def check_model_dir_writable(model_dir: str) -> None:
    """Create model_dir if needed and prove it is writable; OSError naming it otherwise."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise OSError(
            f"--model_dir={model_dir} is a file, not a directory. Give the path of a directory "
            "(it is created if missing)."
        )
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise OSError(
            f"--model_dir={model_dir} is not writable ({err.strerror}). Choose a directory you "
            "can write to, or free disk space."
        ) from err


def checkpoint_bytes(*objects) -> int:
    """Bytes of the variables a checkpoint of these objects holds (its data file's size)."""
    seen, total = set(), 0
    for obj in objects:
        for v in obj.variables:
            if id(v) in seen:
                continue
            seen.add(id(v))
            try:  # Keras variables give the dtype as a string, tf.Variables as a tf.DType
                itemsize = tf.as_dtype(v.dtype).size
            except TypeError:
                itemsize = 4
            total += int(np.prod(v.shape)) * itemsize
    return total


def check_free_space(model_dir: str, checkpoint_bytes: int, keep: int) -> None:
    """Refuse to start when not even one checkpoint fits on the disk of model_dir."""
    try:
        free = shutil.disk_usage(model_dir).free
    except OSError:
        return  # remote or unusual filesystems: the save itself will report problems
    needed = int(checkpoint_bytes * 1.05) + (1 << 16)
    if free < needed:
        raise ModelDirWriteError(
            f"--model_dir={model_dir} has {free / 2**20:.1f} MiB free but one checkpoint needs "
            f"about {needed / 2**20:.1f} MiB: the disk is (nearly) full. Free some space or "
            "choose another --model_dir."
        )
    if free < needed * (keep + 1):
        log.warning(
            "--model_dir=%s has %.1f MiB free: fewer than --keep_checkpoint_max=%d checkpoints "
            "of %.1f MiB (plus one being written) fit.",
            model_dir,
            free / 2**20,
            keep,
            needed / 2**20,
        )


def write_error(model_dir: str, what: str, err: BaseException, last_good: str | None):
    """The ModelDirWriteError for a failed write of `what`, saying what is still intact."""
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1]
    intact = (
        f"The last good checkpoint {last_good} is intact"
        if last_good
        else "No checkpoint had been written yet"
    )
    return ModelDirWriteError(
        f"Could not write {what} in --model_dir={model_dir} ({reason}). Is the disk full or the "
        f"directory no longer writable? {intact}; free space (or fix the directory) and rerun "
        "the same command to resume."
    )


def save_checkpoint(manager: tf.train.CheckpointManager, step: int, model_dir: str) -> str:
    """manager.save, turning a failed write into ModelDirWriteError after removing the partial
    files, so a full disk never leaves a half-written newest checkpoint behind."""
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as err:
        prefix = os.path.join(model_dir, f"ckpt-{step}")
        try:
            complete = os.path.exists(prefix + ".index")
            if complete:
                ckpt_lib.validate_checkpoint(prefix)  # the state file update failed, not the data
        except ckpt_lib.CheckpointError:
            complete = False
        if not complete:
            ckpt_lib.remove_checkpoint_files(prefix)
        good = [p for p in ckpt_lib.list_checkpoints(model_dir) if complete or p != prefix]
        raise write_error(
            model_dir, f"checkpoint ckpt-{step}", err, good[-1] if good else None
        ) from err


def save_config(config: Config, model_dir: str, resumed_step: int | None) -> None:
    """Write config.json; when a resumed run's settings changed, say so and append the change
    to config_history.jsonl, so the record shows which steps ran with which settings."""
    path = os.path.join(model_dir, config_lib.CONFIG_FILENAME)
    if resumed_step is not None and os.path.isfile(path):
        changes = config_lib.changed_settings(Config.load(model_dir), config)
        if changes:
            shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
            log.warning(
                "Resuming at step %d with changed settings (%s); recorded in %s.",
                resumed_step,
                shown,
                config_lib.CONFIG_HISTORY_FILENAME,
            )
            record = {"step": resumed_step, "changes": changes, "time": time.time()}
            history = os.path.join(model_dir, config_lib.CONFIG_HISTORY_FILENAME)
            with open(history, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    config.save(model_dir)
