"""The settings of a tf_simclr run: one validated `Config`, declared in typed groups, with a
JSON round trip.

`run.py` turns absl flags into a `Config`; the library only ever sees the `Config` (or explicit
arguments taken from it), never global flags.

How the settings are laid out:

- Each group of settings is a dataclass of its own fields: `RunSettings` (what to do, from
  which model), `DataSettings`, `AugmentationSettings`, `ModelSettings`,
  `OptimisationSettings` (the loss, the optimizer and the schedule), `EvaluationSettings`,
  `RuntimeSettings` (devices, checkpoints and what the run writes) and `RecipeSettings`
  (--mode=semi_supervised's stages). A field is declared once, in its group, with
  `_setting(default, help, choices=..., role=...)`: its flag help, its valid values and, where
  it has one, its role for a saved run (ENCODER, ARCHITECTURE, INVOCATION, OPERATIONAL, RECORD).
- `Config` inherits every group, so it stays one flat dataclass: `config.learning_rate`,
  `Config(learning_rate=...)`, `config.replace(learning_rate=...)`, the flags (one per field,
  same name) and config.json (one flat object) are what they always were.
- `config.model` (and `.run`, `.data`, ... one per name in GROUPS) is that group's values as an
  instance of its dataclass: a typed view for code that needs one group. It is a copy; change a
  setting with `config.replace`.
- The field lists a saved run is read with (ENCODER_FIELDS, ARCHITECTURE_FIELDS, RECIPE_FIELDS,
  ...) are computed from the roles and groups, never kept by hand; the valid values come from
  tf_simclr.choices and the rules from tf_simclr.config_checks, one function per group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

from tf_simclr.choices import (
    BRIGHTNESS_MODES,
    LOSS_SCALES,
    LR_SCALINGS,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    PROJ_HEAD_MODES,
    RESNET_DEPTHS,
    STRATEGIES,
    SUP_HEAD_OPTIMIZERS,
    SUPERVISED_TRAIN_MODES,
    TRAIN_MODES,
    ConfigError,
)
from tf_simclr.training.budget import UNPLANNED_STEPS

CONFIG_FILENAME = "config.json"
RESULT_FILENAME = "result.json"  # written by tf_simclr.workflows.runner at the end of a run
CONFIG_HISTORY_FILENAME = "config_history.jsonl"

# The role of a setting for a saved run (a field has at most one):
# Part of the encoder and projection head a run with --checkpoint (fine-tuning, transfer
# evaluation) takes from it; image_size too, unless given (ENCODER_FIELDS).
ENCODER = "encoder"
# Decides, with the encoder, which variables the network has: a model_dir's checkpoints only fit
# a model built with the same values; image_size matters through the stem it selects
# (ARCHITECTURE_FIELDS).
ARCHITECTURE = "architecture"
# What to do now, never inherited from a saved run, and not part of Config.hash.
INVOCATION = "invocation"
# How the run waits, logs and what it writes besides the model: not part of Config.hash.
OPERATIONAL = "operational"
# What the runner records about a run: no flag, not part of Config.hash or changed_settings
# (see DataSettings.data_identity).
RECORD = "record"
ROLES = (ENCODER, ARCHITECTURE, INVOCATION, OPERATIONAL, RECORD)

# Settings whose default depends on --train_mode (and --random_init): their Config field
# defaults to None, "the mode's default", filled in from this table when the Config is built, so
# config.json records the value that ran and a value the user gave is always kept.
# Pretraining: the embedded recipe (README "Measured on the embedded default").
# Fine-tuning a pretrained encoder: its 12 epochs at 4.0 took 500 labelled images (24 steps)
# to chance level (10.9% on embedded); the semi-supervised recipe's 200 epochs at 0.5 reached
# 45.8%, and on held-out training images (bench/finetune_defaults.py) 32.6% against 10.2%,
# the encoder's probe on the same 500 labels 19.7% (README "Defaults per training mode").
# From random weights (--random_init, the supervised baseline): 4.0 beat 0.5 at 200 epochs
# (30.7 vs 21.4%). Distillation learns from all training images with the pretraining schedule
# (12 epochs at 4.0: 49.9% from a 45.8% teacher).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"learning_rate": 4.0, "train_epochs": 12},
    "finetune": {"learning_rate": 0.5, "train_epochs": 200},
    "finetune_from_scratch": {"learning_rate": 4.0, "train_epochs": 200},
    "distill": {"learning_rate": 4.0, "train_epochs": 12},
}
MODE_DEFAULT_FIELDS = tuple(MODE_DEFAULTS["pretrain"])
_MODE_NAMES = {
    "pretrain": "Pretraining",
    "finetune": "Fine-tuning",
    "finetune_from_scratch": "Fine-tuning from random weights",
    "distill": "Distillation",
}


def mode_defaults_key(train_mode: str, random_init: bool = False) -> str:
    """The MODE_DEFAULTS entry that applies to a run of `train_mode` (`random_init`: fine-tuning
    from random weights)."""
    if train_mode == "finetune" and random_init:
        return "finetune_from_scratch"
    return train_mode


def mode_defaults_help(name: str) -> str:
    """The sentence of a mode-dependent flag's help that lists its default per mode."""
    values = ", ".join(
        f"{_MODE_NAMES[key].lower()} {table[name]:g}" for key, table in MODE_DEFAULTS.items()
    )
    return f"Default by --train_mode: {values}."


def describe_mode_defaults(config: Config) -> str | None:
    """The log line naming the mode defaults `config` was given (None when it took none or
    when they are the pretraining ones), e.g. "Fine-tuning defaults (not given): ..."."""
    key = mode_defaults_key(config.train_mode, config.random_init)
    chosen = [name for name in MODE_DEFAULT_FIELDS if name in config.mode_defaulted]
    if not chosen or key == "pretrain":
        return None
    values = " ".join(f"--{name}={getattr(config, name):g}" for name in chosen)
    return (
        f"{_MODE_NAMES[key]} defaults (not given on the command line): {values}. Give a flag "
        "to choose another value."
    )


def _setting(default, help: str, *, choices: tuple | None = None, role: str | None = None):
    """A Config field with its flag help, valid values and role (ROLES) next to it (run.py
    builds its flags from these; `validate` checks the choices)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "role": role}
    )


def has_flag(field: dataclasses.Field) -> bool:
    """Whether a Config field is a command-line flag (records such as data_identity are not)."""
    return field.metadata.get("role") != RECORD


def help_text(field: dataclasses.Field) -> str:
    """The --help text of a Config field, with its valid values (and its default per
    --train_mode, for the MODE_DEFAULT_FIELDS)."""
    text = field.metadata.get("help", "")
    if field.name in MODE_DEFAULT_FIELDS:
        text = f"{text} {mode_defaults_help(field.name)}"
    choices = field.metadata.get("choices")
    if choices:
        text = f"{text} One of: {', '.join(str(c) for c in choices)}."
    return text


@dataclasses.dataclass
class RunSettings:
    """What to do, and from which model."""

    mode: str = _setting("train_then_eval", "What to do.", choices=MODES, role=INVOCATION)
    train_mode: str = _setting(
        "pretrain",
        "Contrastive pretraining, supervised fine-tuning, or distillation of --teacher into a "
        "student on all training images.",
        choices=TRAIN_MODES,
        role=ARCHITECTURE,
    )
    model_dir: str = _setting(
        "/tmp/tf_simclr",
        "Directory for checkpoints, summaries, config.json, result.json and exports.",
        role=INVOCATION,
    )
    checkpoint: str | None = _setting(
        None,
        "A pretrained model: a model_dir, a ckpt-N prefix or an export model_dir/saved_model/<step>. Fine-tuning (and, optionally, distillation's student) starts from it; --mode=eval evaluates its frozen features on --dataset (transfer).",
    )
    random_init: bool = _setting(
        False,
        "Fine-tuning: start from random weights instead of --checkpoint (the supervised "
        "baseline trained from scratch on the same labels).",
    )
    teacher: str | None = _setting(
        None,
        "Distillation: the frozen teacher, a tf_simclr model_dir or checkpoint prefix with a "
        "supervised head (a fine-tuned run, or a model converted by python -m tf_simclr.convert), or an "
        "exported module model_dir/saved_model/<step>.",
    )


@dataclasses.dataclass
class DataSettings:
    """The images: where they come from, their size, the labelled subset."""

    dataset: str = _setting(
        "embedded",
        "'embedded' (shapes10, shipped inside the package), a TFDS name (with --data_dir), a TFDS-format directory, or an image folder root/<split>/<class>/*.jpg.",
    )
    data_dir: str | None = _setting(
        None, "TFDS data_dir holding prepared datasets (no downloads are attempted)."
    )
    unlabelled: bool = _setting(
        False,
        "The training data has no labels: an image folder is read as every image at any depth under ROOT/<train_split> (under ROOT when it has no train/ folder), class folders or not; other sources' labels are ignored. Pretraining only; the online linear head (--lineareval_while_pretraining) is switched off, and the kNN and linear probe need --eval_dataset. With --mode=embed: the images to embed are read so (ROOT/<eval_split>, else ROOT), with any model.",
    )
    eval_dataset: str | None = _setting(
        None,
        "Labelled data for the kNN and the linear probe (same forms as --dataset, read with --data_dir): they fit on its 'train' split and score on its --eval_split, instead of the training data's. Both splits must have the same classes. Pretraining only.",
    )
    train_split: str = _setting("train", "Split to train on.")
    eval_split: str = _setting(
        "test", "Split to evaluate on (of --eval_dataset when given, else of --dataset)."
    )
    cache_dataset: bool = _setting(False, "Cache decoded images in memory (small datasets).")
    shuffle_buffer: int = _setting(
        10_000,
        "Training examples held in the shuffle buffer (a dataset no larger is shuffled whole). Filling it comes before the first step: smaller starts sooner and holds fewer decoded images in memory, larger mixes better.",
    )
    image_size: int = _setting(
        32, "Input side in pixels; <= 32 selects the CIFAR stem (--checkpoint: its run's)."
    )
    label_fraction: float | None = _setting(
        None, "Fine-tuning: class-balanced fraction of labelled training examples."
    )
    label_ids_file: str | None = _setting(
        None, "Fine-tuning: file of training example ids (one per line) to use."
    )
    strict_data: bool = _setting(
        False, "Fail on corrupt image files instead of skipping them with a count."
    )
    # Not a setting (no flag): the identity of the data the run trains on (dataset, split,
    # classes, example count, fingerprint; tf_simclr.data.identity), recorded by the runner
    # when a run starts and compared by tf_simclr.workflows.run_data wherever a run is read again. It
    # lives in config.json, the file every reader of a run already opens, so a run stays one
    # self-describing file; it is left out of Config.hash and changed_settings (it is not a
    # choice) and a given value is never taken over by `resolve`. None: not recorded yet, or a
    # run written before tf_simclr recorded it (its data cannot be checked).
    data_identity: dict | None = _setting(None, "", role=RECORD)


@dataclasses.dataclass
class AugmentationSettings:
    """The random views of each image."""

    augmentations: str | None = _setting(
        None,
        "Comma-separated operators, e.g. crop,flip,color,blur (default from the recipe: crop,flip,color plus blur with --use_blur).",
    )
    # None: the composition's own strength, 1.0 for the default crop,flip,color, which is the
    # embedded recipe's (colour is shapes10's main nuisance; measured +15.9 linear-probe points
    # over random weights, 0.5: +7.0), and a preset's own (cifar: 0.5).
    color_jitter_strength: float | None = _setting(
        None,
        "Colour distortion strength s (ImageNet 1.0, CIFAR 0.5); default: 1.0, or the "
        "--augmentations preset's own.",
    )
    use_blur: bool = _setting(
        False, "Add Gaussian blur to the default augmentations (ImageNet recipe)."
    )
    brightness: str = _setting(
        "multiplicative",
        "Brightness jitter form (multiplicative: SimCLRv2, additive: v1).",
        choices=BRIGHTNESS_MODES,
    )


@dataclasses.dataclass
class ModelSettings:
    """The network: encoder, projection head, supervised head and their batch norm."""

    resnet_depth: int = _setting(18, "ResNet depth.", choices=RESNET_DEPTHS, role=ENCODER)
    width_multiplier: float = _setting(
        0.25, "ResNet width multiplier (e.g. 0.25, 0.5, 1, 2, 4).", role=ENCODER
    )
    sk_ratio: float = _setting(
        0.0, "Selective-kernel ratio (SimCLRv2 uses 0.0625; 0 disables).", role=ENCODER
    )
    se_ratio: float = _setting(0.0, "Squeeze-excitation ratio (0 disables).", role=ENCODER)
    proj_head_mode: str = _setting(
        "nonlinear", "Projection head.", choices=PROJ_HEAD_MODES, role=ENCODER
    )
    proj_out_dim: int = _setting(128, "Projection output dimension.", role=ENCODER)
    num_proj_layers: int = _setting(
        2, "Layers in the nonlinear projection head (SimCLRv2: 3).", role=ENCODER
    )
    ft_proj_selector: int = _setting(
        0, "Fine-tune from this projection-head layer (0: encoder output).", role=ARCHITECTURE
    )
    global_bn: bool = _setting(True, "Synchronise batch-norm statistics across replicas.")
    batch_norm_decay: float = _setting(0.9, "Batch-norm moving-average decay (momentum).")
    lineareval_while_pretraining: bool = _setting(
        True,
        "Train a linear head on stop_gradient features meanwhile (off with --unlabelled).",
        role=ARCHITECTURE,
    )
    zero_init_logits_layer: bool = _setting(
        False, "Zero-initialise the supervised head when fine-tuning."
    )
    fine_tune_after_block: int = _setting(
        -1, "Fine-tuning: freeze the stem and block groups <= this (-1: none)."
    )
    num_classes: int = _setting(
        0,
        "Classes of the supervised head (0: the dataset's). Set by python -m tf_simclr.convert for published models (1000 ImageNet classes).",
        role=ARCHITECTURE,
    )
    # Where tf_simclr departs from the reference code on purpose; each setting has the
    # reference's behaviour as its other value (python -m tf_simclr.convert writes those for models
    # converted from the reference; README "Parity with the reference code"). Also
    # OptimisationSettings.sup_head_optimizer.
    sup_head_input_norm: bool = _setting(
        True,
        "Pretraining: standardise the linear-eval head's input with a parameter-free batch norm (tf_simclr; the reference code has none).",
        role=ARCHITECTURE,
    )
    ft_update_unused_head_bn: bool = _setting(
        False,
        "Fine-tuning: keep the batch-norm layers of projection-head layers above --ft_proj_selector in training mode, so their moving statistics follow the batches, as the reference code does (they get no gradient either way).",
    )
    fused_batch_norm: bool = _setting(
        True,
        "Batch norm through TF's fused kernel (faster; numerically stabler statistics). false: statistics as the reference code computes them (E[x^2]-E[x]^2), for bit-level parity with it.",
    )


@dataclasses.dataclass
class OptimisationSettings:
    """What is minimised (the loss), with which optimizer, on which batches, for how long."""

    train_batch_size: int = _setting(256, "Global training batch size (split over replicas).")
    # None: the --train_mode's default (MODE_DEFAULTS), filled in by Config.__post_init__.
    train_epochs: int | None = _setting(
        None,
        "Training epochs, over the labelled examples when fine-tuning (ignored when "
        "--train_steps > 0).",
    )
    train_steps: int = _setting(0, "Training steps; overrides --train_epochs when > 0.")
    # A budget instead of a length: the steps that fit are planned while training
    # (tf_simclr.training.budget), and the schedule is laid out over them.
    train_minutes: float | None = _setting(
        None,
        "Train for this many minutes of training time (wall clock, from the start of the "
        "training loop; evaluation after it not counted) instead of --train_epochs or "
        "--train_steps: the steps that fit are planned from the speed of the first loops, and "
        "the learning-rate schedule ends at the last of them. Warmup: --warmup_epochs, at most "
        "1/6 of the planned steps.",
    )
    warmup_epochs: float = _setting(2.0, "Linear learning-rate warmup, in epochs.")
    optimizer: str = _setting("lars", "Optimizer.", choices=OPTIMIZERS)
    # LARS moves each weight by about lr * 0.001 of its norm per step: a short schedule needs
    # a larger base rate than the 1.0 of 1000-epoch CIFAR runs. None: the --train_mode's
    # default (MODE_DEFAULTS), filled in by Config.__post_init__.
    learning_rate: float | None = _setting(
        None, "Base learning rate, scaled by --learning_rate_scaling."
    )
    learning_rate_scaling: str = _setting(
        "linear", "lr = base*B/256 (linear) or base*sqrt(B) (sqrt).", choices=LR_SCALINGS
    )
    momentum: float = _setting(0.9, "Momentum of LARS / SGD.")
    weight_decay: float = _setting(1e-4, "Weight decay (batch norm and biases excluded).")
    sup_head_learning_rate: float = _setting(
        0.1,
        "Pretraining: base learning rate (x B/256) of the linear-eval head, which has its own momentum-SGD optimizer.",
    )
    sup_head_optimizer: str = _setting(
        "momentum",
        "Pretraining. momentum: the linear-eval head has its own momentum SGD at --sup_head_learning_rate (tf_simclr); shared: the main optimizer trains it at the main learning rate, with an L2 term on its kernel and no LARS trust ratio (the reference code).",
        choices=SUP_HEAD_OPTIMIZERS,
    )
    temperature: float = _setting(0.5, "NT-Xent temperature tau.")
    hidden_norm: bool = _setting(True, "L2-normalise projections before the contrastive loss.")
    loss_scale: str = _setting(
        "paper", "The paper's loss, or the reference code's 2x.", choices=LOSS_SCALES
    )
    distill_temperature: float = _setting(
        1.0, "Distillation: temperature softening both the teacher's and the student's logits."
    )
    distill_alpha: float = _setting(
        0.0,
        "Distillation: weight of the supervised loss on the labelled examples (--label_fraction"
        " / --label_ids_file, or all); the distillation loss gets 1 - alpha (0: pure "
        "distillation).",
    )
    # Not a setting (no flag): the steps a --train_minutes run planned (a
    # tf_simclr.training.budget.BudgetPlan record: budget_minutes, planned_steps, warmup_steps,
    # the measured seconds per step, ...), written into config.json once the plan is fixed. A
    # resumed run keeps it and does not plan again. None: no budget, or not planned yet.
    budget_plan: dict | None = _setting(None, "", role=RECORD)


@dataclasses.dataclass
class EvaluationSettings:
    """How the learned features and the trained network are scored and pictured."""

    eval_batch_size: int = _setting(256, "Evaluation batch size.")
    eval_steps: int = _setting(0, "Evaluation batches per split (0: the whole split).")
    knn_eval: bool = _setting(True, "Report weighted kNN accuracy of frozen features.")
    knn_k: int = _setting(200, "Neighbours for the kNN evaluation.")
    knn_temperature: float = _setting(0.1, "Temperature of the weighted kNN vote.")
    linear_eval: bool = _setting(True, "Train a linear probe on frozen features after pretraining.")
    linear_eval_epochs: int = _setting(100, "Epochs of the frozen-feature linear probe.")
    random_init_baseline: bool = _setting(
        True, "Also evaluate the same architecture with random weights."
    )
    eval_timeout: int = _setting(
        0,
        "mode=eval: wait this many seconds for each new checkpoint (0: latest once).",
        role=INVOCATION,
    )
    # Pictures from the features the kNN and linear evaluations extract anyway (pretraining).
    neighbour_images: int = _setting(
        8,
        "Test images in neighbours.png, drawn across the classes (seeded by --seed), each next to its 8 nearest training images by the learned features (0: no picture).",
        role=OPERATIONAL,
    )
    projector_embeddings: int = _setting(
        1000,
        "Test-set features written, with their images and labels, for TensorBoard's projector (0: none; at most 10000).",
        role=OPERATIONAL,
    )
    # --mode=embed (tf_simclr.workflows.embed): what is written, and where; never part of a
    # run, so never inherited from a saved config.json.
    embed_output: str = _setting(
        "final_avg_pool",
        "mode=embed: the model output written for every image of --eval_split (final_avg_pool: the representation h; also proj_head_input, proj_head_output, block_group1..4, logits_sup of a model with a supervised head).",
        role=INVOCATION,
    )
    embed_out: str | None = _setting(
        None,
        "mode=embed: the .npz file written (default: --model_dir/embeddings.npz), with a .json summary beside it.",
        role=INVOCATION,
    )
    embed_neighbours: int = _setting(
        0,
        "mode=embed: this many images, spread evenly over the split, each drawn with its 8 nearest other images by the features in <embed_out>_neighbours.png (0: no picture).",
        role=INVOCATION,
    )


@dataclasses.dataclass
class RuntimeSettings:
    """Where and how the run executes: devices, numerics, seeds, checkpoints, logs, exports."""

    strategy: str = _setting(
        "default", "Distribution strategy (multi_worker reads TF_CONFIG).", choices=STRATEGIES
    )
    num_cpu_devices: int = _setting(
        0, "mirrored on a CPU-only machine: split the CPU into this many devices."
    )
    # multi_worker: seconds to wait for the other workers (at startup and for each training loop)
    # before exiting with an error naming them; 0 waits forever.
    collective_timeout: int = _setting(
        600,
        "multi_worker: seconds to wait for the other workers (at startup and for each training loop) before exiting with an error naming them (exit code 75; rerun all workers to resume). 0 waits forever.",
        role=OPERATIONAL,
    )
    use_tpu: bool = _setting(False, "Same as --strategy=tpu.")
    tpu_name: str | None = _setting(None, "TPU name or grpc:// address.")
    tpu_zone: str | None = _setting(None, "GCE zone of the TPU.")
    gcp_project: str | None = _setting(None, "GCP project of the TPU.")
    precision: str = _setting(
        "auto",
        "Training's numeric policy: 'auto' is mixed_bfloat16 where the hardware computes "
        "bfloat16 (CPUs with AVX512_BF16 or AMX, TPUs, GPUs of compute capability >= 8.0) and "
        "float32 elsewhere. Weights, batch-norm statistics, the loss, optimizer state and "
        "checkpoints stay float32; evaluation and exports compute in float32.",
        choices=PRECISIONS,
    )
    seed: int = _setting(0, "Random seed for weights, data order and augmentations.")
    deterministic: bool = _setting(
        False, "Enable TF op determinism (slower; bit-reproducible runs)."
    )
    steps_per_loop: int = _setting(10, "Training steps per tf.function call.")
    checkpoint_epochs: int = _setting(10, "Epochs between checkpoints.")
    checkpoint_steps: int = _setting(
        0, "Steps between checkpoints; overrides --checkpoint_epochs when > 0."
    )
    checkpoint_minutes: float = _setting(
        0.0,
        "Also save a checkpoint at the end of the first loop after each multiple of this many "
        "minutes of training time (0: off). E.g. --train_minutes=20 --checkpoint_minutes=5 "
        "keeps the model at about 5, 10, 15 and 20 minutes (with --keep_checkpoint_max >= 4).",
        role=OPERATIONAL,
    )
    keep_checkpoint_max: int = _setting(5, "Checkpoints to keep.")
    keep_hub_module_max: int = _setting(1, "Exported SavedModels to keep.")
    log_every_steps: int = _setting(
        10, "Steps between progress log lines (non-interactive output).", role=OPERATIONAL
    )
    export: bool = _setting(
        True, "Export a SavedModel (TF-Hub module) at the end of training.", role=OPERATIONAL
    )
    summaries: bool = _setting(True, "Write TensorBoard summaries to model_dir.", role=OPERATIONAL)


@dataclasses.dataclass
class RecipeSettings:
    """--mode=semi_supervised (tf_simclr.workflows.semi_supervised): the stages after
    pretraining. They shape the recipe's stages, no single trained model (so they are left out
    of Config.hash and of changed_settings)."""

    # On the embedded recipe's 500 labelled images (10%), fine-tuning for 30 / 100 / 200 epochs
    # gave 20.6 / 37.1 / 45.8% top-1 (README, "Semi-supervised learning"): few labels need
    # many passes. SimCLRv2 used 60 (1%) and 30 (10%) ImageNet epochs.
    # The fine-tuning mode's defaults (MODE_DEFAULTS), so the recipe and a fine-tuning run on
    # their own train alike.
    semi_finetune_epochs: int = _setting(
        MODE_DEFAULTS["finetune"]["train_epochs"],
        "semi_supervised: epochs over the labelled examples of fine-tuning and of the "
        "supervised baseline trained from scratch.",
    )
    semi_finetune_learning_rate: float = _setting(
        MODE_DEFAULTS["finetune"]["learning_rate"],
        "semi_supervised: base learning rate of the fine-tuning stage.",
    )
    semi_distill_epochs: int = _setting(
        0,
        "semi_supervised: epochs of distillation over all training images (0: the pretraining "
        "schedule, --train_steps or --train_epochs).",
    )
    # The labelled subset can be smaller than the batch pretraining wants (1% of CIFAR-10 is
    # 500 images): the fine-tuning stages get a batch of their own.
    semi_finetune_batch_size: int = _setting(
        0,
        "semi_supervised: batch size of fine-tuning and of the supervised baseline, which see "
        "the labelled examples only (0: --train_batch_size).",
    )


# The groups by the name of their view on a Config (config.model, ...), in the order of
# Config's fields.
GROUPS: dict[str, type] = {
    "run": RunSettings,
    "data": DataSettings,
    "augmentation": AugmentationSettings,
    "model": ModelSettings,
    "optimisation": OptimisationSettings,
    "evaluation": EvaluationSettings,
    "runtime": RuntimeSettings,
    "recipe": RecipeSettings,
}


def group_of(name: str) -> str:
    """The GROUPS name of the group that declares the Config field `name`."""
    for group, settings in GROUPS.items():
        if name in settings.__dataclass_fields__:
            return group
    raise KeyError(name)


def _view(config: Config, group: type):
    return group(**{f.name: getattr(config, f.name) for f in dataclasses.fields(group)})


# The bases in reverse: a dataclass takes its fields from the last base first, so Config's
# fields run from RunSettings to RecipeSettings, the order of GROUPS.
@dataclasses.dataclass
class Config(
    RecipeSettings,
    RuntimeSettings,
    EvaluationSettings,
    OptimisationSettings,
    ModelSettings,
    AugmentationSettings,
    DataSettings,
    RunSettings,
):
    """All hyperparameters of a tf_simclr run. Defaults: the CIFAR-style recipe on the embedded
    dataset, sized so `python run.py --mode=train_then_eval` finishes in minutes on 2 CPU cores.

    Its fields are declared in the groups it inherits (GROUPS); `config.model` and the like give
    one group's values as that group's dataclass."""

    # -- typed views of the groups (copies: change a setting with `replace`) -----------------
    @property
    def run(self) -> RunSettings:
        return _view(self, RunSettings)

    @property
    def data(self) -> DataSettings:
        return _view(self, DataSettings)

    @property
    def augmentation(self) -> AugmentationSettings:
        return _view(self, AugmentationSettings)

    @property
    def model(self) -> ModelSettings:
        return _view(self, ModelSettings)

    @property
    def optimisation(self) -> OptimisationSettings:
        return _view(self, OptimisationSettings)

    @property
    def evaluation(self) -> EvaluationSettings:
        return _view(self, EvaluationSettings)

    @property
    def runtime(self) -> RuntimeSettings:
        return _view(self, RuntimeSettings)

    @property
    def recipe(self) -> RecipeSettings:
        return _view(self, RecipeSettings)

    def __post_init__(self) -> None:
        self._fill_mode_defaults()
        # Unlabelled data gives the online linear head nothing to learn from: it is not built
        # (config.json records that, so every reader of the run builds the same network).
        if self.unlabelled and self.lineareval_while_pretraining:
            self.lineareval_while_pretraining = False
        if self.use_tpu and self.strategy == "default":
            self.strategy = "tpu"
        # "~/runs" means the home directory, as in a shell (not a folder named "~").
        if isinstance(self.model_dir, str):
            self.model_dir = os.path.expanduser(self.model_dir)
        if isinstance(self.checkpoint, str):
            self.checkpoint = os.path.expanduser(self.checkpoint)
        if isinstance(self.teacher, str):
            self.teacher = os.path.expanduser(self.teacher)
        self.validate()

    def _fill_mode_defaults(self) -> None:
        # Which fields took the mode's default: not a dataclass field, so it is neither saved
        # nor compared; a Config built from explicit values (config.json) has none.
        self.mode_defaulted = ()
        table = MODE_DEFAULTS.get(mode_defaults_key(self.train_mode, self.random_init))
        if table is None:  # an unknown train_mode: validate() names it
            table = MODE_DEFAULTS["pretrain"]
        filled = []
        for name in MODE_DEFAULT_FIELDS:
            if name == "train_epochs" and self.train_minutes is not None:
                continue  # a time budget sets the length: None records "not given"
            if getattr(self, name) is None:
                setattr(self, name, table[name])
                filled.append(name)
        self.mode_defaulted = tuple(filled)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid flag and its valid values (the rules
        live in tf_simclr.config_checks)."""
        from tf_simclr.config_checks import validate

        validate(self)

    # -- derived values ---------------------------------------------------------------------
    def evaluates_checkpoint(self) -> bool:
        """--mode=eval --checkpoint=PRETRAINED: the frozen features of that model evaluated on
        --dataset (transfer; tf_simclr.workflows.runner), the results written into --model_dir."""
        return self.mode == "eval" and bool(self.checkpoint) and self.train_mode == "pretrain"

    def augmentation_spec(self) -> str:
        """The augmentation composition: explicit --augmentations, else the recipe's
        (pretraining: crop, flip, colour; fine-tuning and distillation: crop and flip; blur
        with --use_blur)."""
        if self.augmentations:
            return self.augmentations
        base = "crop,flip" if self.train_mode in SUPERVISED_TRAIN_MODES else "crop,flip,color"
        return base + ",blur" if self.use_blur else base

    def train_steps_for(self, num_train_examples: int) -> int:
        """Total optimisation steps: --train_steps, or epochs over the training split; with
        --train_minutes, the steps planned (budget_plan), or UNPLANNED_STEPS before that."""
        if self.train_minutes is not None:
            return self.budget_plan["planned_steps"] if self.budget_plan else UNPLANNED_STEPS
        if self.train_steps > 0:
            return self.train_steps
        return max(1, math.ceil(self.train_epochs * num_train_examples / self.train_batch_size))

    def warmup_steps_for(self, num_train_examples: int) -> int:
        """Warmup steps: --warmup_epochs over the training split; with a planned
        --train_minutes, the warmup planned (at most 1/6 of the planned steps)."""
        if self.train_minutes is not None and self.budget_plan:
            return self.budget_plan["warmup_steps"]
        return int(round(self.warmup_epochs * num_train_examples / self.train_batch_size))

    def checkpoint_every_for(self, num_train_examples: int) -> int:
        """Steps between checkpoints (always at the end of training too)."""
        if self.checkpoint_steps > 0:
            return self.checkpoint_steps
        steps_per_epoch = max(1, num_train_examples // self.train_batch_size)
        return max(1, self.checkpoint_epochs * steps_per_epoch)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown config keys: {', '.join(unknown)}.")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes`. A setting that took the mode's default takes the new mode's
        when the change switches --train_mode (or --random_init), unless it is changed too."""
        new_key = mode_defaults_key(
            changes.get("train_mode", self.train_mode),
            changes.get("random_init", self.random_init),
        )
        same_mode = new_key == mode_defaults_key(self.train_mode, self.random_init)
        if not same_mode:
            for name in self.mode_defaulted:
                changes.setdefault(name, None)
        copy = dataclasses.replace(self, **changes)
        if same_mode:  # still the mode's defaults, for a later change of mode
            copy.mode_defaulted = tuple(n for n in self.mode_defaulted if n not in changes)
        return copy

    def hash(self) -> str:
        """A short hash of the settings that define the trained model (not mode/paths)."""
        payload = {
            k: v
            for k, v in sorted(self.to_dict().items())
            if k not in _UNHASHED_FIELDS
            and not (k in _HASHED_WHEN_SET and v == Config.__dataclass_fields__[k].default)
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def save(self, model_dir: str | None = None) -> str:
        """Write config.json into model_dir atomically; returns its path."""
        directory = model_dir or self.model_dir
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_FILENAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, model_dir: str) -> Config:
        """The Config saved in model_dir/config.json; ConfigError names the file if it cannot
        be read or parsed."""
        path = os.path.join(model_dir, CONFIG_FILENAME)
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the file is damaged. "
                "Restore it, or delete it and give the run's flags on the command line."
            ) from err
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{path} does not hold a valid tf_simclr config: {err}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not a text file: the file is damaged.") from err

    def architecture_conflicts(self, other: Config) -> list[str]:
        """Architecture settings in which `other` differs from this config, as
        "name: this vs other" strings (empty when checkpoints of one fit the other)."""
        conflicts = [
            f"--{name}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in ARCHITECTURE_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]
        if (self.image_size <= 32) != (other.image_size <= 32):
            conflicts.append(
                f"--image_size: {self.image_size} vs {other.image_size} (a different stem)"
            )
        return conflicts


def _fields_with_role(*roles: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata["role"] in roles)


# Read from the declarations above (in the order of Config's fields); see ROLES.
ENCODER_FIELDS = _fields_with_role(ENCODER)
ARCHITECTURE_FIELDS = _fields_with_role(ARCHITECTURE, ENCODER)
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(RecipeSettings))
_INVOCATION_FIELDS = _fields_with_role(INVOCATION)
_RECORD_FIELDS = _fields_with_role(RECORD)
# What Config.hash leaves out: all but the settings that define the trained model.
_UNHASHED_FIELDS = _fields_with_role(INVOCATION, OPERATIONAL, RECORD) + RECIPE_FIELDS
# Settings added after runs recorded their hash (result.json's config_hash, which
# --mode=semi_supervised compares to skip finished stages): part of it only when they differ
# from their default, so the runs written before them keep their hash.
_HASHED_WHEN_SET = ("train_minutes", "unlabelled", "eval_dataset", "shuffle_buffer")


def resolve(given: dict[str, Any], saved: Config | None, *, source: str = "") -> Config:
    """The Config of a run: `saved` (the model_dir's config.json) with the explicitly `given`
    values on top, or the defaults with `given` when nothing was saved.

    A given architecture setting that differs from the saved one raises ConfigError naming both
    values (the saved checkpoints would not fit). What to do (mode, model_dir, eval_timeout)
    always comes from `given` or the defaults.
    """
    if saved is None:
        return Config(**given)
    conflicts = []
    for name, value in given.items():
        if name in ARCHITECTURE_FIELDS and getattr(saved, name) != value:
            conflicts.append(f"--{name}={value!r} (the run has {getattr(saved, name)!r})")
    if "image_size" in given and (given["image_size"] <= 32) != (saved.image_size <= 32):
        conflicts.append(
            f"--image_size={given['image_size']} (the run has {saved.image_size}: another stem)"
        )
    if conflicts:
        raise ConfigError(
            f"{source or 'The model_dir'} holds a run with another architecture: "
            f"{'; '.join(conflicts)}. Drop these flags (the run's config.json supplies them) or "
            "use a new --model_dir."
        )
    values = saved.to_dict()
    defaults = Config.__dataclass_fields__
    for name in _INVOCATION_FIELDS:
        values[name] = defaults[name].default
    values.update({k: v for k, v in given.items() if k not in _RECORD_FIELDS})
    return Config(**values)


def run_config_of_checkpoint(path: str) -> Config | None:
    """The config.json of the tf_simclr run a --checkpoint comes from (a model_dir, a
    model_dir/ckpt-N prefix or a model_dir/saved_model/<step> export), or None."""
    path = os.path.expanduser(path)
    candidates = [path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    for directory in candidates:
        if directory and os.path.isfile(os.path.join(directory, CONFIG_FILENAME)):
            return Config.load(directory)
    return None


def with_encoder_of_checkpoint(given: dict[str, Any]) -> dict[str, Any]:
    """`given` plus the encoder settings (ENCODER_FIELDS, and image_size) of the run its
    --checkpoint comes from, for those not given; a given one that differs (an image_size that
    selects the other stem) raises ConfigError naming both."""
    source = run_config_of_checkpoint(given["checkpoint"])
    if source is None:
        return given
    conflicts = [
        f"--{name}={given[name]!r} (the checkpoint's run has {getattr(source, name)!r})"
        for name in ENCODER_FIELDS
        if name in given and given[name] != getattr(source, name)
    ]
    size = given.get("image_size", source.image_size)
    if (size <= 32) != (source.image_size <= 32):  # the stem is part of the encoder
        conflicts.append(
            f"--image_size={size} (the checkpoint's run has {source.image_size}, the "
            f"{'CIFAR' if source.image_size <= 32 else 'ImageNet'} stem: images are resized to "
            "any size on the same side of 32 px)"
        )
    if conflicts:
        raise ConfigError(
            f"--checkpoint={given['checkpoint']} was trained with another encoder: "
            f"{'; '.join(conflicts)}. Drop these flags to use that encoder."
        )
    values = dict(given)
    for name in ENCODER_FIELDS:
        values.setdefault(name, getattr(source, name))
    values["image_size"] = size  # the encoder's input size: the pretraining run's by default
    return values


def changed_settings(old: Config, new: Config) -> dict[str, list]:
    """{name: [old, new]} for the settings (not the invocation) that differ."""
    return {
        name: [value, getattr(new, name)]
        for name, value in old.to_dict().items()
        if name not in _INVOCATION_FIELDS + RECIPE_FIELDS + _RECORD_FIELDS
        and value != getattr(new, name)
    }
