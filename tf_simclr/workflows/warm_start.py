"""Weights from the pretrained model a --checkpoint names (a checkpoint prefix, a model_dir or an
exported module): fine-tuning's starting point, and the frozen encoder `--mode=eval
--checkpoint` evaluates on another dataset (transfer). Weights of another architecture are
refused; a supervised head for another number of classes, or (fine-tuning) for other class
names or another label order (by the runs' recorded data, tf_simclr.workflows.run_data), starts afresh."""

from __future__ import annotations

import logging
import os
import re

import tensorflow as tf

from tf_simclr import factory
from tf_simclr.config import Config, run_config_of_checkpoint
from tf_simclr.network.model import SUPERVISED_HEAD_NAME
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.workflows import run_data

log = logging.getLogger(__name__)

_WHAT_TO_GIVE = (
    "Give a tf_simclr model_dir, a checkpoint prefix such as model_dir/ckpt-500, or an export "
    "model_dir/saved_model/<step> (a published SimCLR model: convert it first with "
    "python -m tf_simclr.convert)."
)


def resolve_checkpoint(path: str, flag: str = "--checkpoint") -> tuple[str, str]:
    """What --checkpoint=`path` names: ("export", directory) for a SavedModel export, else
    ("checkpoint", prefix), a model_dir giving its newest intact checkpoint. Raises
    FileNotFoundError or ValueError saying what `path` is and what to give instead (naming
    the command-line `flag` it came from)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "export", path
    # "model_dir/ckpt-500.index" (or a data file) names the checkpoint ckpt-500.
    prefix = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
    if os.path.isdir(prefix):
        if ckpt_lib.list_checkpoints(prefix):
            return "checkpoint", ckpt_lib.latest_valid_checkpoint(prefix)  # skips damaged ones
        exports = os.path.join(prefix, "saved_model")
        if os.path.isdir(exports) and os.listdir(exports):
            raise FileNotFoundError(
                f"{flag}={prefix} holds no ckpt-* files, only exports: give one of them, "
                f"e.g. {flag}={os.path.join(exports, sorted(os.listdir(exports))[-1])}."
            )
        raise FileNotFoundError(
            f"{flag}={prefix} is a directory without ckpt-* files or a saved_model.pb: "
            f"not a model. {_WHAT_TO_GIVE}"
        )
    if os.path.exists(prefix + ".index"):
        ckpt_lib.validate_checkpoint(prefix)
        return "checkpoint", prefix
    if os.path.isfile(prefix):
        raise ValueError(
            f"{flag}={prefix} is a file, not a model (a checkpoint is named by its prefix: "
            f"ckpt-500 for ckpt-500.index and ckpt-500.data-*). {_WHAT_TO_GIVE}"
        )
    raise FileNotFoundError(
        f"{flag}={prefix} is not a checkpoint (no {prefix}.index). {_WHAT_TO_GIVE}"
    )


def step_of(path: str) -> int | None:
    """The training step of a checkpoint prefix (ckpt-N) or export directory (.../N)."""
    match = re.search(r"(?:ckpt-|[/\\])(\d+)[/\\]?$", path)
    return int(match.group(1)) if match else None


def _values_from_exported_module(config: Config, model, path: str) -> dict:
    """{weight path: value} from a tf_simclr SavedModel export (model_dir/saved_model/<step>).

    A SavedModel keeps its variables in the exporting model's order but not their Keras paths,
    so the exporting model is rebuilt to recover the paths (from its run's config.json when the
    export sits in a model_dir, else from `config` as a pretraining model), checked shape by
    shape.
    """
    from tf_simclr.workflows import export as export_lib

    loaded = tf.saved_model.load(path)
    source = run_config_of_checkpoint(path)
    if source is not None:
        exporter, train_mode = source.replace(fine_tune_after_block=-1), source.train_mode
    else:
        exporter, train_mode = config.replace(fine_tune_after_block=-1), "pretrain"
    # The head's class count is free: only its shape may differ (another labelled dataset).
    reference = factory.build_model(exporter, model.num_classes or 1, train_mode=train_mode)
    ref_vars = export_lib.distinct_variables(reference.variables)
    saved = list(getattr(loaded, "variables", ()))
    mismatch = len(saved) != len(ref_vars) or any(
        tuple(a.shape) != tuple(b.shape) and SUPERVISED_HEAD_NAME not in b.path
        for a, b in zip(saved, ref_vars, strict=False)
    )
    values = {v.path: s for v, s in zip(ref_vars, saved, strict=False)}
    # The exporting run's own architecture may still differ from the model's.
    mismatch = mismatch or any(
        w.path not in values or tuple(values[w.path].shape) != tuple(w.shape)
        for w in model.weights
        if SUPERVISED_HEAD_NAME not in w.path
    )
    if mismatch:
        raise ValueError(
            f"--checkpoint={path} was exported from a different architecture than the flags "
            "describe (variable count or shapes differ): use the pretraining run's model flags "
            "(--resnet_depth, --width_multiplier, --sk_ratio, --proj_head_mode, ...). A "
            "published SimCLR module is read by python -m tf_simclr.convert, not here."
        )
    return {path: value.numpy() for path, value in values.items()}


def _check_same_encoder(path: str, model, values: dict) -> None:
    """Every weight but the supervised head's must come from the checkpoint, and the checkpoint
    must not hold network weights the model lacks (a deeper or wider net)."""
    if not values:
        raise ValueError(
            f"--checkpoint={path} holds none of this model's weights: it is not a tf_simclr "
            f"training checkpoint, or its layer names differ. {_WHAT_TO_GIVE}"
        )
    missing = [
        w.path for w in model.weights if w.path not in values and SUPERVISED_HEAD_NAME not in w.path
    ]
    paths = {w.path for w in model.weights}
    stored = ckpt_lib.stored_model_weight_paths(path)
    extra = [p for p in stored if p not in paths and SUPERVISED_HEAD_NAME not in p]
    if missing or extra:
        detail = []
        if missing:
            detail.append(
                f"{len(missing)} of the model's weights are not in it (e.g. {missing[0]})"
            )
        if extra:
            detail.append(f"it holds {len(extra)} weights the model lacks (e.g. {extra[0]})")
        raise ValueError(
            f"--checkpoint={path} was trained with another architecture than the flags describe: "
            f"{'; '.join(detail)}. Give the pretraining run's model flags (--resnet_depth, "
            "--width_multiplier, --sk_ratio, --proj_head_mode, --num_proj_layers, ...), or "
            "point --checkpoint at its model_dir so they are read from its config.json."
        )


def _pretrained_values(config: Config, model) -> tuple[str, dict]:
    """(the checkpoint prefix or export read, {weight path: value}) for --checkpoint."""
    kind, path = resolve_checkpoint(config.checkpoint)
    if kind == "export":
        return path, _values_from_exported_module(config, model, path)
    values = ckpt_lib.read_model_weights(path, [w.path for w in model.weights])
    _check_same_encoder(path, model, values)
    return path, values


def _same_dataset(a: str, b: str) -> bool:
    if a == b:
        return True
    a, b = os.path.expanduser(a), os.path.expanduser(b)
    return os.path.isdir(a) and os.path.isdir(b) and os.path.samefile(a, b)


def _same_label_space(source: Config, config: Config) -> bool:
    """Whether the checkpoint's run was trained on the classes of config's data, in the same
    label order (by the recorded data identities; for a run that predates them, by the
    dataset path)."""
    if source.data_identity is None:
        return _same_dataset(source.dataset, config.dataset)
    current = config.data_identity or run_data.identity_of(config)
    return run_data.same_label_space(source.data_identity, current)


def _head_saw_other_labels(source: Config | None, config: Config) -> bool:
    """With a labelled subset (--label_fraction / --label_ids_file): whether the checkpoint's
    supervised head may have been trained on labels outside it. A pretraining run's online
    head learns from every label of its training split, and a run on another subset (or of
    unknown origin) from others: kept, they would carry those labels into the fine-tuned
    network and its accuracy. (The reference code restores no head for its label-fraction
    fine-tuning either.)"""
    if config.label_fraction is None and config.label_ids_file is None:
        return False
    if source is None or source.train_mode == "pretrain":
        return True
    same_subset = (source.label_fraction, source.label_ids_file, source.seed)
    return same_subset != (config.label_fraction, config.label_ids_file, config.seed)


def restore_initial_weights(config: Config, model) -> None:
    """Fine-tuning: load pretrained weights from --checkpoint (a checkpoint prefix, a model_dir
    or an exported module). A supervised head for another number of classes, one trained
    on other classes (by the checkpoint run's recorded data: another label space, whatever
    the number of classes), or one that saw labels outside this run's labelled subset,
    starts afresh."""
    if not config.checkpoint:
        raise ValueError(
            "--train_mode=finetune needs --checkpoint: a pretraining checkpoint (prefix or "
            "model_dir) or an exported module (model_dir/saved_model/<step>). Without it the "
            "encoder would start from random weights."
        )
    path, values = _pretrained_values(config, model)
    source = run_config_of_checkpoint(config.checkpoint)
    if source is not None and not _same_label_space(source, config):
        # Transfer: its classes are another label space, whatever their number.
        values = {p: v for p, v in values.items() if SUPERVISED_HEAD_NAME not in p}
        log.info(
            "%s was trained on other classes (%s): the supervised head for %s starts afresh.",
            path,
            source.dataset,
            config.dataset,
        )
    elif _head_saw_other_labels(source, config):
        values = {p: v for p, v in values.items() if SUPERVISED_HEAD_NAME not in p}
        log.info(
            "The supervised head of %s was trained on labels outside this run's labelled "
            "subset (%s): it starts afresh, so only the subset's labels reach the fine-tuned "
            "network.",
            path,
            "a pretraining run's online head saw all of them"
            if source is not None and source.train_mode == "pretrain"
            else "another or an unknown subset",
        )
    counts = ckpt_lib.assign_weights_by_path(
        model.weights, values, replaceable=(SUPERVISED_HEAD_NAME,), source=f"--checkpoint={path}"
    )
    if counts["copied"] == 0:
        raise ValueError(
            f"--checkpoint={path} holds none of this model's weights: it is not a tf_simclr "
            f"training checkpoint, or its layer names differ. {_WHAT_TO_GIVE}"
        )
    if config.zero_init_logits_layer and model.has_supervised_head:
        model.zero_supervised_head()
    log.info(
        "Initialised %d of %d weights from %s (%d new: a head for another number of classes "
        "or dataset, or layers the checkpoint lacks).",
        counts["copied"],
        len(model.weights),
        path,
        len(model.weights) - counts["copied"],
    )


def restore_frozen_encoder(config: Config, model) -> str:
    """`--mode=eval --checkpoint`: every weight of `model`, a network without a supervised
    head, from the pretrained model --checkpoint names (whose own head, for its own classes,
    is not read). Returns the checkpoint prefix or export directory read."""
    path, values = _pretrained_values(config, model)
    counts = ckpt_lib.assign_weights_by_path(
        model.weights, values, replaceable=(SUPERVISED_HEAD_NAME,), source=f"--checkpoint={path}"
    )
    if counts["copied"] != len(model.weights):
        raise ValueError(
            f"--checkpoint={path} lacks {len(model.weights) - counts['copied']} of the "
            f"{len(model.weights)} weights of the encoder and projection head the flags "
            "describe: it was trained with another architecture. Point --checkpoint at its "
            "model_dir (its config.json gives the architecture) or give its model flags."
        )
    log.info(
        "Restored the %d weights of the encoder and projection head from %s.",
        len(model.weights),
        path,
    )
    return path
