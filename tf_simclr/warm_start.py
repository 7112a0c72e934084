"""Fine-tuning's starting point: the pretrained weights from --checkpoint (a checkpoint prefix,
a model_dir or an exported module), refused when they come from another architecture; a
supervised head for another number of classes starts afresh."""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from tf_simclr import checkpoints as ckpt_lib
from tf_simclr import factory
from tf_simclr.config import Config
from tf_simclr.model import SUPERVISED_HEAD_NAME

log = logging.getLogger(__name__)


def _restore_from_exported_module(config: Config, model, path: str) -> dict:
    """Fine-tuning from a tf_simclr SavedModel export (model_dir/saved_model/<step>).

    A SavedModel keeps its variables in the exporting model's order but not their Keras paths,
    so the pretraining model of this config is rebuilt to recover the paths, checked shape by
    shape, and the weights are copied into `model` by path.
    """
    from tf_simclr import export as export_lib

    loaded = tf.saved_model.load(path)
    reference = factory.build_model(
        config.replace(fine_tune_after_block=-1), model.num_classes, train_mode="pretrain"
    )
    ref_vars = export_lib.distinct_variables(reference.variables)
    saved = list(loaded.variables)
    # The supervised head may differ in its number of classes (another labelled dataset).
    mismatch = len(saved) != len(ref_vars) or any(
        tuple(a.shape) != tuple(b.shape) and SUPERVISED_HEAD_NAME not in b.path
        for a, b in zip(saved, ref_vars, strict=False)
    )
    if mismatch:
        raise ValueError(
            f"--checkpoint={path} was exported from a different architecture than the flags "
            "describe (variable count or shapes differ): use the pretraining run's model flags "
            "(--resnet_depth, --width_multiplier, --sk_ratio, --proj_head_mode, ...)."
        )
    values = {v.path: s.numpy() for v, s in zip(ref_vars, saved, strict=True)}
    return ckpt_lib.assign_weights_by_path(
        model.weights, values, replaceable=(SUPERVISED_HEAD_NAME,), source=f"--checkpoint={path}"
    )


def _check_same_encoder(path: str, model, values: dict) -> None:
    """Fine-tuning: every weight but the supervised head's must come from the checkpoint, and
    the checkpoint must not hold network weights the model lacks (a deeper or wider net)."""
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


def restore_initial_weights(config: Config, model) -> None:
    """Fine-tuning: load pretrained weights from --checkpoint (a checkpoint prefix, a model_dir
    or an exported module). A supervised head for another number of classes starts afresh."""
    path = config.checkpoint
    if not path:
        raise ValueError(
            "--train_mode=finetune needs --checkpoint: a pretraining checkpoint (prefix or "
            "model_dir) or an exported module (model_dir/saved_model/<step>). Without it the "
            "encoder would start from random weights."
        )
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        counts = _restore_from_exported_module(config, model, path)
    else:
        path = ckpt_lib.resolve_checkpoint(path)
        values = ckpt_lib.read_model_weights(path, [w.path for w in model.weights])
        _check_same_encoder(path, model, values)
        counts = ckpt_lib.assign_weights_by_path(
            model.weights,
            values,
            replaceable=(SUPERVISED_HEAD_NAME,),
            source=f"--checkpoint={path}",
        )
        if counts["copied"] == 0:
            raise ValueError(
                f"--checkpoint={path} holds none of this model's weights: it is not a tf_simclr "
                "training checkpoint, or its layer names differ."
            )
    if config.zero_init_logits_layer and model.has_supervised_head:
        model.zero_supervised_head()
    log.info(
        "Initialised %d of %d weights from %s (%d new: a head for another number of classes "
        "or layers the checkpoint lacks).",
        counts["copied"],
        len(model.weights),
        path,
        counts["kept_replaceable"] + counts["missing"],
    )
