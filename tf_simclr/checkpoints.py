"""Checkpoint discovery, validation and restore with fallback past damaged checkpoints."""

from __future__ import annotations

import glob
import logging
import os
import re

import tensorflow as tf

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"ckpt-(\d+)\.index$")


class CheckpointError(RuntimeError):
    """Checkpoints exist in model_dir but none of them can be restored."""


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory`, oldest first, found from their index files (so a
    missing or stale `checkpoint` state file does not hide any)."""
    found = []
    for index in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        match = _CKPT_RE.search(os.path.basename(index))
        if match:
            found.append((int(match.group(1)), index[: -len(".index")]))
    return [prefix for _, prefix in sorted(found)]


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


def restore_latest_valid(checkpoint: tf.train.Checkpoint, directory: str) -> str | None:
    """Restore the newest checkpoint in `directory` that is intact.

    Damaged checkpoints are reported by name and skipped. Returns the restored prefix, None if
    the directory holds no checkpoint, and raises CheckpointError if checkpoints exist but all
    are damaged (never silently starting from scratch over a trained model).
    """
    candidates = list_checkpoints(directory)
    if not candidates:
        return None
    damaged = []
    for prefix in reversed(candidates):
        try:
            validate_checkpoint(prefix)
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, CheckpointError, AssertionError, ValueError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            log.error("Checkpoint %s is damaged and was skipped: %s", prefix, first_line)
            damaged.append(prefix)
            continue
        if damaged:
            log.warning(
                "Fell back to %s; %d newer checkpoint(s) were damaged: %s",
                prefix,
                len(damaged),
                ", ".join(damaged),
            )
        return prefix
    raise CheckpointError(
        f"All {len(damaged)} checkpoint(s) in {directory} are damaged ({', '.join(damaged)}). "
        "Nothing was overwritten. Move the damaged ckpt-* files away to start from scratch, or "
        "point --model_dir at another directory."
    )
