"""The rules a `Config` must satisfy: valid choices and ranges, and combinations of flags that
would be ignored or contradict each other. Each error names the flag and the fix.

One function per group of settings (tf_simclr.config.GROUPS): a rule lives with the group of
the flag its message names, also when it depends on settings of another group."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

# Below tf_simclr.config, which calls `validate` on every Config it builds: the rules take the
# Config as it is (its fields), so this module needs only the choices.
from tf_simclr.choices import (
    EVALUATING_MODES,
    MAX_PROJECTOR_EMBEDDINGS,
    SUPERVISED_TRAIN_MODES,
    TRAINING_MODES,
    ConfigError,
)


def validate(config) -> None:
    """Raise ConfigError naming the first invalid flag and its valid values."""
    for field in dataclasses.fields(config):
        if field.metadata.get("choices"):
            _choice(field.name, getattr(config, field.name), field.metadata["choices"])
    for check in (
        _check_run,
        _check_data,
        _check_augmentation,
        _check_model,
        _check_optimisation,
        _check_evaluation,
        _check_runtime,
        _check_recipe,
    ):
        check(config)


def _check_run(config) -> None:
    if not config.model_dir:
        raise ConfigError("--model_dir must be a directory path (it holds checkpoints).")
    if (
        config.checkpoint
        and config.train_mode == "pretrain"
        and config.mode not in ("eval", "embed")
    ):
        does = {
            "export": "exports the newest checkpoint in --model_dir",
            "preview": "uses no model",
        }.get(config.mode, "pretrains, resuming from the checkpoints in --model_dir by itself")
        raise ConfigError(
            "--checkpoint only applies to --train_mode=finetune or distill (the weights to "
            "start from), to --mode=eval (that model's frozen features, evaluated on "
            f"--dataset) and to --mode=embed; --mode={config.mode} {does}. Drop --checkpoint, add "
            "--train_mode=finetune, or use --mode=eval."
        )
    if config.random_init and (config.train_mode != "finetune" or config.checkpoint):
        raise ConfigError(
            "--random_init trains the supervised head and encoder from random weights: it "
            "needs --train_mode=finetune and no --checkpoint."
        )
    if config.train_mode == "distill" and not config.teacher:
        raise ConfigError(
            "--train_mode=distill needs --teacher: the model_dir, checkpoint or export of "
            "a network with a supervised head (e.g. a --train_mode=finetune run)."
        )
    if config.teacher and config.train_mode != "distill":
        raise ConfigError(
            f"--teacher only applies to --train_mode=distill (got --train_mode="
            f"{config.train_mode}): add --train_mode=distill or drop --teacher."
        )


def _check_data(config) -> None:
    if not config.dataset:
        raise ConfigError("--dataset is empty: give a TFDS name, a directory or 'embedded'.")
    _positive("image_size", config.image_size)
    _positive("shuffle_buffer", config.shuffle_buffer)
    if config.image_size < 8:
        raise ConfigError(
            f"--image_size={config.image_size} is too small for a ResNet: use 8 or more "
            "(32 for CIFAR-size data, 224 for ImageNet)."
        )
    if config.label_fraction is not None and not 0.0 < config.label_fraction <= 1.0:
        raise ConfigError(
            f"--label_fraction must be in (0, 1] (e.g. 0.01 or 0.1), got {config.label_fraction}."
        )
    if config.label_fraction is not None and config.label_ids_file:
        raise ConfigError("Give either --label_fraction or --label_ids_file, not both.")
    labelled = config.label_fraction is not None or config.label_ids_file
    # (--mode=semi_supervised gives the labels to its fine-tuning stages: _check_recipe)
    if (
        labelled
        and config.mode != "semi_supervised"
        and config.train_mode not in SUPERVISED_TRAIN_MODES
    ):
        raise ConfigError(
            "--label_fraction/--label_ids_file only apply to --train_mode=finetune (the "
            "labels it trains on) and distill (those its --distill_alpha term uses)."
        )
    evaluates = config.mode in EVALUATING_MODES and (
        config.knn_eval or config.linear_eval or config.random_init_baseline
    )
    # With --eval_dataset, the kNN bank and the probe's training data are its "train" split.
    fit_split = "train" if config.eval_dataset else config.train_split
    if evaluates and config.eval_split == fit_split:
        of = " of --eval_dataset" if config.eval_dataset else ""
        raise ConfigError(
            f"--eval_split={config.eval_split!r} is the training split{of}: the kNN and linear "
            "probe would be scored on the examples they were fit on (a kNN finds each image "
            "itself). Give a held-out split (e.g. --eval_split=test)."
        )
    _check_unlabelled(config)
    _check_eval_dataset(config)


def _check_unlabelled(config) -> None:
    """--unlabelled: pretraining only, and nothing to evaluate on without --eval_dataset.
    (--mode=embed reads its images that way with any model: no check.)"""
    if not config.unlabelled or config.mode == "embed":
        return
    if config.mode == "semi_supervised" or config.train_mode != "pretrain":
        what = (
            "--mode=semi_supervised fine-tunes on labels"
            if config.mode == "semi_supervised"
            else f"--train_mode={config.train_mode} trains on labels"
        )
        raise ConfigError(
            f"--unlabelled says the training data has no labels, but {what}. Contrastive "
            "pretraining (--train_mode=pretrain) is what learns from unlabelled images; "
            "fine-tune its checkpoint on labelled data afterwards (without --unlabelled)."
        )
    if config.mode in ("train_then_eval", "eval") and not config.eval_dataset:
        raise ConfigError(
            f"--mode={config.mode} evaluates the features with a kNN and a linear probe, which "
            "need labels, and --unlabelled says the training data has none. Add "
            "--eval_dataset=<labelled data> (an image folder with train/ and test/ class "
            "folders, or a TFDS name) to evaluate on it, or use --mode=train to pretrain only."
        )


def _check_eval_dataset(config) -> None:
    """--eval_dataset: labelled data for the frozen-feature evaluations of pretraining."""
    if config.eval_dataset is None:
        return
    if not config.eval_dataset.strip():
        raise ConfigError(
            "--eval_dataset is empty: give an image folder, a TFDS name or a TFDS-format "
            "directory, or leave it out to evaluate on --dataset."
        )
    if config.mode == "semi_supervised" or config.train_mode != "pretrain":
        raise ConfigError(
            "--eval_dataset gives the kNN and linear probe of pretraining their labelled data; "
            f"--mode={config.mode} --train_mode={config.train_mode} evaluates on --dataset. "
            "Drop --eval_dataset (or give the labelled data as --dataset)."
        )
    if config.evaluates_checkpoint():
        raise ConfigError(
            "--mode=eval --checkpoint evaluates that model's frozen features on --dataset: "
            f"give the labelled data as --dataset={config.eval_dataset} and drop --eval_dataset."
        )


def _check_augmentation(config) -> None:
    if config.color_jitter_strength is not None:
        _non_negative_number("color_jitter_strength", config.color_jitter_strength)
    if (
        config.use_blur
        and config.augmentations
        and "blur" not in config.augmentations.lower()
        and config.augmentations.strip().lower() != "imagenet"
    ):
        raise ConfigError(
            f"--use_blur only changes the default augmentations, but --augmentations="
            f"{config.augmentations} is given: add 'blur' to that list (or drop --use_blur)."
        )


def _check_model(config) -> None:
    _positive("proj_out_dim", config.proj_out_dim)
    _positive("width_multiplier", config.width_multiplier)
    _non_negative("num_proj_layers", config.num_proj_layers)
    _non_negative("num_classes", config.num_classes)
    if not 0.0 < config.batch_norm_decay < 1.0:
        raise ConfigError(f"--batch_norm_decay must be in (0, 1), got {config.batch_norm_decay}.")
    if not 0.0 <= config.sk_ratio < 1.0 or not 0.0 <= config.se_ratio < 1.0:
        raise ConfigError("--sk_ratio and --se_ratio must be in [0, 1) (0 turns them off).")
    if config.ft_proj_selector < 0:
        raise ConfigError("--ft_proj_selector must be >= 0 (0: encoder output).")
    if config.proj_head_mode == "nonlinear" and config.num_proj_layers < 1:
        raise ConfigError("--proj_head_mode=nonlinear needs --num_proj_layers >= 1.")
    if config.ft_proj_selector > config.num_proj_layers:
        raise ConfigError(
            f"--ft_proj_selector={config.ft_proj_selector} exceeds --num_proj_layers="
            f"{config.num_proj_layers}."
        )
    if not -1 <= config.fine_tune_after_block <= 4:
        raise ConfigError("--fine_tune_after_block must be in [-1, 4] (-1 trains all blocks).")
    if config.fine_tune_after_block != -1 and config.train_mode not in SUPERVISED_TRAIN_MODES:
        raise ConfigError(
            "--fine_tune_after_block only applies to --train_mode=finetune or distill."
        )


def _check_optimisation(config) -> None:
    _positive("train_batch_size", config.train_batch_size)
    _non_negative("train_steps", config.train_steps)
    if config.train_minutes is not None:
        _check_time_budget(config)
    else:
        _non_negative("train_epochs", config.train_epochs)
        if config.train_steps == 0 and config.train_epochs == 0 and config.mode in TRAINING_MODES:
            raise ConfigError("Set --train_epochs or --train_steps to a positive number.")
        if config.budget_plan:
            raise ConfigError(
                "config.json records the steps a --train_minutes run planned, but no "
                "--train_minutes is set: give the run's --train_minutes, or use a new "
                "--model_dir."
            )
    for name in ("learning_rate", "sup_head_learning_rate", "temperature"):
        _positive_number(name, getattr(config, name))
    for name in ("weight_decay", "warmup_epochs"):
        _non_negative_number(name, getattr(config, name))
    if not 0.0 <= config.momentum < 1.0:
        raise ConfigError(f"--momentum must be in [0, 1), got {config.momentum}.")
    if config.train_mode == "pretrain" and config.train_batch_size < 2:
        raise ConfigError(
            f"--train_batch_size={config.train_batch_size} gives the contrastive loss no "
            "negatives (every other image of the batch is one): use 2 or more (SimCLR uses "
            "256-4096)."
        )
    if not (math.isfinite(config.distill_temperature) and config.distill_temperature > 0):
        raise ConfigError(
            f"--distill_temperature must be a positive number, got {config.distill_temperature}."
        )
    if not 0.0 <= config.distill_alpha <= 1.0:
        raise ConfigError(
            f"--distill_alpha must be in [0, 1] (0: pure distillation, 1: labels only), got "
            f"{config.distill_alpha}."
        )
    if config.distill_alpha == 1.0 and config.train_mode == "distill":
        raise ConfigError(
            "--distill_alpha=1 ignores the teacher: that is fine-tuning on the labelled "
            "examples (--train_mode=finetune). Use a value below 1."
        )


def _check_time_budget(config) -> None:
    """--train_minutes: a positive number, the only length given, on a single-process run."""
    minutes = config.train_minutes
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(
            f"--train_minutes must be a positive number of minutes, got {minutes:g} (e.g. "
            "--train_minutes=10)."
        )
    for name, given in (
        ("train_epochs", config.train_epochs is not None),
        ("train_steps", config.train_steps > 0),
    ):
        if given:
            raise ConfigError(
                f"--train_minutes={minutes:g} and --{name}={getattr(config, name)} both set the "
                f"length of training: give only one of them. (A --model_dir whose run trained "
                f"for --{name} keeps it in its config.json: use a new --model_dir for a time "
                "budget.)"
            )
    if config.mode == "semi_supervised":
        raise ConfigError(
            "--train_minutes does not apply to --mode=semi_supervised, whose stages have "
            "lengths of their own: use --train_epochs or --train_steps."
        )
    if config.strategy == "multi_worker":
        raise ConfigError(
            "--train_minutes plans the steps from the speed this process measures, and the "
            "workers of --strategy=multi_worker would each plan their own: use --train_steps."
        )
    planned = config.budget_plan
    if planned and planned.get("budget_minutes") != minutes:
        raise ConfigError(
            f"--train_minutes={minutes:g}, but the run in --model_dir planned "
            f"{planned.get('planned_steps')} steps for a {planned.get('budget_minutes'):g}-minute "
            "budget (its config.json): drop --train_minutes to resume that plan, or use a new "
            "--model_dir for another budget."
        )


def _check_evaluation(config) -> None:
    _positive("eval_batch_size", config.eval_batch_size)
    _positive("knn_k", config.knn_k)
    _positive_number("knn_temperature", config.knn_temperature)
    for name in (
        "eval_steps",
        "linear_eval_epochs",
        "eval_timeout",
        "neighbour_images",
        "projector_embeddings",
    ):
        _non_negative(name, getattr(config, name))
    if config.projector_embeddings > MAX_PROJECTOR_EMBEDDINGS:
        raise ConfigError(
            f"--projector_embeddings={config.projector_embeddings} is too many: TensorBoard's "
            f"sprite of their images would exceed 8192 px; use {MAX_PROJECTOR_EMBEDDINGS} "
            "or fewer."
        )
    if config.linear_eval and config.linear_eval_epochs == 0:
        raise ConfigError(
            "--linear_eval_epochs=0 would report the accuracy of an untrained probe: give a "
            "positive number of epochs, or --nolinear_eval to skip the linear probe."
        )
    if config.evaluates_checkpoint() and config.eval_timeout:
        raise ConfigError(
            "--eval_timeout waits for new checkpoints in --model_dir, but --mode=eval "
            "--checkpoint evaluates the one model --checkpoint names: drop one of them."
        )


def _check_runtime(config) -> None:
    for name in ("steps_per_loop", "log_every_steps", "keep_checkpoint_max", "keep_hub_module_max"):
        _positive(name, getattr(config, name))
    for name in ("checkpoint_epochs", "checkpoint_steps", "num_cpu_devices", "collective_timeout"):
        _non_negative(name, getattr(config, name))
    _non_negative_number("checkpoint_minutes", config.checkpoint_minutes)
    if config.strategy == "tpu" and not (config.tpu_name or os.environ.get("TPU_NAME")):
        raise ConfigError("--strategy=tpu (or --use_tpu) needs --tpu_name (name or grpc address).")
    if config.num_cpu_devices and config.strategy != "mirrored":
        raise ConfigError("--num_cpu_devices only applies to --strategy=mirrored.")
    # Contradictory flags: one of them would be silently ignored.
    if config.use_tpu and config.strategy != "tpu":
        raise ConfigError(
            f"--use_tpu contradicts --strategy={config.strategy}: give only one of them."
        )


def _check_recipe(config) -> None:
    if config.mode != "semi_supervised":
        return
    if config.label_fraction is None and not config.label_ids_file:
        raise ConfigError(
            "--mode=semi_supervised needs the labelled subset: --label_fraction (e.g. 0.1) "
            "or --label_ids_file."
        )
    if config.train_mode != "pretrain" or config.checkpoint or config.teacher or config.random_init:
        raise ConfigError(
            "--mode=semi_supervised runs every stage itself (pretrain, fine-tune, distil, "
            "the supervised baseline): drop --train_mode, --checkpoint, --teacher and "
            "--random_init."
        )
    if not (
        math.isfinite(config.semi_finetune_learning_rate) and config.semi_finetune_learning_rate > 0
    ):
        raise ConfigError("--semi_finetune_learning_rate must be a positive number.")
    _positive("semi_finetune_epochs", config.semi_finetune_epochs)
    _non_negative("semi_distill_epochs", config.semi_distill_epochs)
    _non_negative("semi_finetune_batch_size", config.semi_finetune_batch_size)


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        valid = ", ".join(str(c) for c in choices)
        raise ConfigError(f"--{name}={value!r} is not valid; choose one of: {valid}.")


def _positive(name: str, value: float) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"--{name} must be a positive number, got {value}.")


def _non_negative(name: str, value: float) -> None:
    if value is None or value < 0:
        raise ConfigError(f"--{name} must be >= 0, got {value}.")


def _positive_number(name: str, value: float) -> None:
    """_positive for a float setting, which NaN and infinity also fail."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--{name} must be a positive number, got {value}.")


def _non_negative_number(name: str, value: float) -> None:
    """_non_negative for a float setting, which NaN and infinity also fail."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--{name} must be >= 0, got {value}.")
