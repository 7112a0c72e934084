"""Builds the library's pieces (model, optimizer, datasets) from a `Config`.

The modules themselves take explicit arguments; this is the one place that maps config fields
onto them, so train/eval/export all build exactly the same things.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from tf_simclr import data as data_lib
from tf_simclr import objectives
from tf_simclr.choices import SUPERVISED_TRAIN_MODES
from tf_simclr.config import Config
from tf_simclr.network import model as model_lib
from tf_simclr.network import resnet
from tf_simclr.training import optim
from tf_simclr.training.precision import policy_scope

log = logging.getLogger(__name__)


def model_num_classes(config: Config, dataset_classes: int | None) -> int | None:
    """Classes of the supervised head: --num_classes, else the dataset's."""
    return config.num_classes or dataset_classes


def build_model(
    config: Config,
    num_classes: int,
    *,
    train_mode: str | None = None,
    precision: str = "float32",
):
    """The SimCLR model (ResNet encoder + heads) described by `config`; `num_classes` (the
    dataset's) is used unless the config fixes the head's classes (--num_classes).

    ``precision`` is the Keras dtype policy its layers compute in (a `tf_simclr.training.precision`
    policy, not "auto"): training passes its chosen one, evaluation and export use float32.
    """
    with policy_scope(precision):
        return _build_model(config, num_classes, train_mode)


def float32_twin(config: Config, model, num_classes: int):
    """``model`` itself if it computes in float32, else a float32 copy with its weights
    (evaluation and exports compute in float32 whatever precision training used)."""
    if model.compute_dtype == "float32":
        return model
    twin = build_model(config, num_classes, train_mode=model.train_mode)
    twin.set_weights(model.get_weights())
    return twin


def _build_model(config: Config, num_classes: int, train_mode: str | None):
    num_classes = model_num_classes(config, num_classes)
    encoder = resnet.build_resnet(
        config.resnet_depth,
        config.width_multiplier,
        # Any spatial size, so exports accept other resolutions; the stem follows image_size.
        input_shape=(None, None, 3),
        cifar_stem=config.image_size <= 32,
        sk_ratio=config.sk_ratio,
        se_ratio=config.se_ratio,
        batch_norm_decay=config.batch_norm_decay,
        global_bn=config.global_bn,
        fused_batch_norm=config.fused_batch_norm,
    )
    train_mode = train_mode or config.train_mode
    model = model_lib.SimCLRModel(
        encoder,
        num_classes=num_classes,
        proj_head_mode=config.proj_head_mode,
        proj_out_dim=config.proj_out_dim,
        num_proj_layers=config.num_proj_layers,
        ft_proj_selector=config.ft_proj_selector,
        train_mode=train_mode,
        lineareval_while_pretraining=config.lineareval_while_pretraining,
        global_bn=config.global_bn,
        batch_norm_decay=config.batch_norm_decay,
        fine_tune_after_block=config.fine_tune_after_block,
        zero_init_logits_layer=config.zero_init_logits_layer,
        sup_head_input_norm=config.sup_head_input_norm,
        fused_batch_norm=config.fused_batch_norm,
        ft_update_unused_head_bn=config.ft_update_unused_head_bn,
        objective=build_objective(config, train_mode),
    )
    # Build the variables now so checkpoints restore eagerly and counts are known.
    model(tf.zeros([1, config.image_size, config.image_size, 3]), training=False)
    return model


def build_objective(config: Config, train_mode: str | None = None):
    """The training objective of `train_mode` (default --train_mode) with its settings: the
    one place a run's objective is chosen."""
    return objectives.for_train_mode(
        train_mode or config.train_mode,
        temperature=config.temperature,
        hidden_norm=config.hidden_norm,
        loss_scale=config.loss_scale,
        head_weight_decay=head_l2_coefficient(config),
        distill_temperature=config.distill_temperature,
        distill_alpha=config.distill_alpha,
    )


def learning_rate_schedule(config: Config, num_train_examples: int, schedule_steps=None):
    """Scaled base learning rate with linear warmup and cosine decay to zero (over the steps
    `schedule_steps` holds, for a time budget not yet planned: see `schedule_steps`)."""
    base = optim.scale_learning_rate(
        config.learning_rate, config.train_batch_size, config.learning_rate_scaling
    )
    if schedule_steps is not None:
        return optim.PlannedWarmupCosineDecay(base, schedule_steps)
    total = config.train_steps_for(num_train_examples)
    warmup = config.warmup_steps_for(num_train_examples)
    if warmup > total:
        log.warning(
            "Warmup (%d steps) is longer than training (%d): warming up over all of it.",
            warmup,
            total,
        )
        warmup = total
    return optim.WarmupCosineDecay(base_learning_rate=base, warmup_steps=warmup, total_steps=total)


def head_l2_coefficient(config: Config) -> float:
    """Coefficient of the supervised head's L2 term added to the loss (0: none).

    Under LARS the supervised head gets neither the optimizer's weight decay nor its trust
    ratio; as in the reference code, the loss carries weight_decay * ||kernel||^2 / 2 for it
    instead. That applies when the main optimizer trains the head: fine-tuning, and
    pretraining with --sup_head_optimizer=shared.
    """
    shared = config.train_mode in SUPERVISED_TRAIN_MODES or config.sup_head_optimizer == "shared"
    return config.weight_decay if config.optimizer == "lars" and shared else 0.0


def schedule_steps(config: Config, num_train_examples: int):
    """A --train_minutes run whose steps are not planned yet: the warmup and total steps its
    schedules are laid out over (optim.ScheduleSteps), which its planner assigns once the first
    loops are timed (tf_simclr.workflows.timed_run). Until then: the --warmup_epochs warmup, and
    no decay. None otherwise (the schedule's steps are known: `learning_rate_schedule`)."""
    if config.train_minutes is None or config.budget_plan:
        return None
    return optim.ScheduleSteps(
        config.warmup_steps_for(num_train_examples), config.train_steps_for(num_train_examples)
    )


def build_optimizer(
    config: Config, num_train_examples: int, *, learning_rate=None, schedule_steps=None
):
    """The optimizer named by --optimizer, on the warmup + cosine schedule (over
    `schedule_steps`, if given), or the given `learning_rate` (a float or schedule)."""
    if learning_rate is None:
        learning_rate = learning_rate_schedule(config, num_train_examples, schedule_steps)
    optimizer = optim.build_optimizer(
        config.optimizer,
        learning_rate=learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        # "auto" never chooses float16, the one policy that needs a loss-scaling wrapper.
        mixed_precision=None if config.precision == "auto" else config.precision,
    )
    return optimizer


def build_head_optimizer(config: Config, model, num_train_examples: int, *, schedule_steps=None):
    """Pretraining with a linear-eval head: its own momentum SGD on the same warmup + cosine
    shape, at --sup_head_learning_rate (linearly scaled). Under LARS the head gets no trust
    scaling, so at contrastive learning rates (~1 and up) it would diverge. None otherwise
    (also with --sup_head_optimizer=shared: the main optimizer trains it, as the reference)."""
    if config.train_mode != "pretrain" or not getattr(model, "supervised_head_variables", None):
        return None
    if config.sup_head_optimizer == "shared":
        return None
    schedule = learning_rate_schedule(
        config.replace(learning_rate=config.sup_head_learning_rate, learning_rate_scaling="linear"),
        num_train_examples,
        schedule_steps,
    )
    head_optimizer = optim.build_optimizer(
        "momentum",
        learning_rate=schedule,
        momentum=0.9,
        weight_decay=config.weight_decay,
    )  # no loss scaling: the head's gradient comes from the unscaled float32 sup_loss
    head_optimizer.build(model.supervised_head_variables)
    return head_optimizer


def dataset_info(config: Config, split: str | None = None):
    """DatasetInfo of the configured source (sizes and classes), read without decoding images
    (--unlabelled: without labels, so no classes)."""
    _, info = data_lib.load_source(
        config.dataset,
        data_dir=config.data_dir,
        split=split or config.train_split,
        strict=config.strict_data,  # corrupt files stop the run before anything is built
        unlabelled=config.unlabelled,
    )
    return info


def eval_data_config(config: Config) -> Config:
    """The config the frozen-feature evaluations (kNN, linear probe) read their data from:
    with --eval_dataset, that labelled dataset, fit on its "train" split; else `config`."""
    if not config.eval_dataset:
        return config
    return config.replace(
        dataset=config.eval_dataset, train_split="train", unlabelled=False, eval_dataset=None
    )


def num_train_examples(config: Config) -> int:
    """Examples per training epoch: the train split, or its labelled subset when fine-tuning
    on a label fraction / id file (distillation trains on every example)."""
    labelled_subset = objectives.OBJECTIVES[config.train_mode].batches == "labelled_subset"
    return data_lib.count_examples(
        config.dataset,
        data_dir=config.data_dir,
        split=config.train_split,
        label_fraction=config.label_fraction if labelled_subset else None,
        label_ids_file=config.label_ids_file if labelled_subset else None,
        seed=config.seed,
        strict=config.strict_data,
        unlabelled=config.unlabelled,
    )


def _cache_setting(config: Config):
    # False still lets the data module cache small fixed-size datasets in memory ("auto").
    return True if config.cache_dataset else "auto"


def _start_batch(start_step: int, input_context) -> int:
    """Batches this pipeline already produced after `start_step` global steps: one per step for a
    single pipeline of global batches, one per local replica per step for per-worker pipelines."""
    if input_context is None or start_step == 0:
        return start_step
    per_pipeline = input_context.num_replicas_in_sync // max(1, input_context.num_input_pipelines)
    return start_step * max(1, per_pipeline)


def pretrain_dataset_fn(config: Config, global_batch_size: int, start_step: int = 0):
    """A function of a tf.distribute.InputContext giving this replica's two-view dataset
    (the data module divides the global batch by the replicas itself)."""

    def dataset_fn(input_context: tf.distribute.InputContext | None = None):
        dataset, _ = data_lib.build_pretrain_dataset(
            config.dataset,
            data_dir=config.data_dir,
            split=config.train_split,
            batch_size=global_batch_size,
            image_size=config.image_size,
            augmentations=config.augmentation_spec(),
            color_jitter_strength=config.color_jitter_strength,
            brightness=config.brightness,
            seed=config.seed,
            input_context=input_context,
            cache=_cache_setting(config),
            shuffle_buffer=config.shuffle_buffer,
            strict=config.strict_data,
            start_batch=_start_batch(start_step, input_context),
            unlabelled=config.unlabelled,
        )
        return dataset

    return dataset_fn


def finetune_dataset_fn(config: Config, global_batch_size: int, start_step: int = 0):
    """A function of an InputContext giving this replica's labelled fine-tuning dataset."""
    return _single_view_dataset_fn(
        data_lib.build_finetune_dataset, config, global_batch_size, start_step
    )


def distill_dataset_fn(config: Config, global_batch_size: int, start_step: int = 0):
    """A function of an InputContext giving this replica's distillation dataset: every
    training image, labels kept only on the labelled subset."""
    return _single_view_dataset_fn(
        data_lib.build_distill_dataset, config, global_batch_size, start_step
    )


def _single_view_dataset_fn(build, config: Config, global_batch_size: int, start_step: int):
    # The input pipelines of one run read the split's labels (for a label subset) once.
    label_cache = data_lib.LabelCache()

    def dataset_fn(input_context: tf.distribute.InputContext | None = None):
        dataset, _ = build(
            config.dataset,
            data_dir=config.data_dir,
            split=config.train_split,
            batch_size=global_batch_size,
            image_size=config.image_size,
            seed=config.seed,
            label_fraction=config.label_fraction,
            label_ids_file=config.label_ids_file,
            augmentations=config.augmentation_spec(),
            color_jitter_strength=config.color_jitter_strength,
            brightness=config.brightness,
            input_context=input_context,
            cache=_cache_setting(config),
            shuffle_buffer=config.shuffle_buffer,
            strict=config.strict_data,
            start_batch=_start_batch(start_step, input_context),
            label_cache=label_cache,
        )
        return dataset

    return dataset_fn


# The training pipeline of each kind of batches an objective takes (its `batches`).
TRAINING_BATCHES = {
    "two_views": pretrain_dataset_fn,
    "labelled_subset": finetune_dataset_fn,
    "all_images": distill_dataset_fn,
}


def training_dataset_fn(config: Config, global_batch_size: int, start_step: int = 0):
    """The training pipeline of the batches config.train_mode's objective takes."""
    build = TRAINING_BATCHES[objectives.OBJECTIVES[config.train_mode].batches]
    return build(config, global_batch_size, start_step=start_step)


def eval_dataset(config: Config, split: str, label_cache: data_lib.LabelCache | None = None):
    """Single pass over `split` with evaluation preprocessing. With --eval_steps, over a
    class-stratified subset of eval_steps * eval_batch_size examples (not the first batches,
    which in a class-sorted image folder hold only the first classes); choosing it reads the
    split's labels, once per `label_cache` given."""
    return eval_dataset_and_info(config, split, label_cache)[0]


def eval_dataset_and_info(
    config: Config, split: str, label_cache: data_lib.LabelCache | None = None
):
    """`eval_dataset` and the source's DatasetInfo (class names, sizes)."""
    subset = config.eval_steps * config.eval_batch_size if config.eval_steps > 0 else None
    return data_lib.build_eval_dataset(
        config.dataset,
        data_dir=config.data_dir,
        split=split,
        batch_size=config.eval_batch_size,
        image_size=config.image_size,
        strict=config.strict_data,
        max_examples=subset,
        seed=config.seed,
        label_cache=label_cache,
    )
