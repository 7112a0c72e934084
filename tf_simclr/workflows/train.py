"""The training loop: SimCLR pretraining or supervised fine-tuning under a tf.distribute strategy.

Several steps run per `tf.function` call (`steps_per_loop`). Checkpoints hold the model, the
optimizer (with its step counter, which drives the learning-rate schedule) and the global step,
so a rerun over the same model_dir resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from tf_simclr import factory
from tf_simclr.config import Config
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.training import distribute
from tf_simclr.training import history as history_lib
from tf_simclr.training import precision as precision_lib

# Kept importable from here, where they were defined before the loop was cut into modules.
from tf_simclr.training.history import plot_history, read_history  # noqa: F401
from tf_simclr.training.interrupts import StopRequest
from tf_simclr.training.progress import Progress
from tf_simclr.workflows import run_data, storage, warm_start
from tf_simclr.workflows.storage import ModelDirWriteError  # noqa: F401
from tf_simclr.workflows.storage import checkpoint_bytes as _checkpoint_bytes  # noqa: F401

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the step boundary."""


@dataclass
class TrainState:
    """What a training run leaves behind for evaluation and export."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: int
    total_steps: int
    num_classes: int
    checkpoint_path: str | None
    history: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0


def setup_runtime(config: Config) -> None:
    """Seeds and optional op determinism. (The training model gets its dtype policy from
    `train`; nothing here sets Keras' global policy.)"""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def _distribute(strategy: tf.distribute.Strategy, dataset_fn):
    """Multi-worker and TPU: one pipeline per worker/host reading its own shard. One machine:
    one pipeline of global batches split across the replicas, so each step sees exactly the
    examples a single device would (the loss curve does not depend on the replica count)."""
    per_host = isinstance(
        strategy,
        (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy),
    )
    if per_host:
        return strategy.distribute_datasets_from_function(dataset_fn)
    return strategy.experimental_distribute_dataset(dataset_fn(None))


def make_step_fn(model, optimizer, head_optimizer=None, teacher=None):
    """The per-replica training step: `SimCLRModel.training_step` (the objective `fit()` uses
    too), returning every metric of the batch (see `SimCLRModel.objective_metric_names`).
    With a `teacher` (distillation), its logits of the batch's images join the batch first."""

    def step_fn(batch):
        if teacher is not None:
            batch = {**batch, "teacher_logits": teacher.logits(batch["image"])}
        return model.training_step(batch, optimizer, head_optimizer).metrics()

    return step_fn


def _make_train_loop(strategy, step_fn, global_step: tf.Variable, metric_names: list[str]):
    @tf.function
    def train_loop(iterator, num_steps):
        sums = [tf.constant(0.0) for _ in metric_names]
        last_loss = tf.constant(0.0)
        for _ in tf.range(num_steps):
            per_replica = strategy.run(step_fn, args=(next(iterator),))
            # Loss shares ("...loss") add up over replicas; rates average.
            reduced = [
                distribute.reduce_per_replica(
                    strategy, per_replica[name], op="sum" if name.endswith("loss") else "mean"
                )
                for name in metric_names
            ]
            sums = [s + tf.cast(r, tf.float32) for s, r in zip(sums, reduced, strict=True)]
            last_loss = tf.cast(reduced[metric_names.index("loss")], tf.float32)
            global_step.assign_add(1)
        means = [s / tf.cast(num_steps, tf.float32) for s in sums]
        return dict(zip(metric_names, means, strict=True)), last_loss

    return train_loop


def _load_teacher(config: Config, info, strategy):
    """Distillation's frozen teacher, refused unless it predicts the dataset's classes."""
    from tf_simclr.workflows import distill

    teacher = distill.load_teacher(
        config.teacher, image_size=config.image_size, precision=config.precision, strategy=strategy
    )
    if teacher.num_classes != info.num_classes:
        raise distill.TeacherError(
            f"--teacher={config.teacher} predicts {teacher.num_classes} classes but "
            f"{config.dataset} has {info.num_classes}: its predictions are another label space. "
            "Fine-tune a teacher on this dataset first (--train_mode=finetune "
            "--checkpoint=<pretrained> --dataset=...), and distil that one."
        )
    # The same number is not enough: the same class names, in the same label order.
    run_data.check_teacher(config, config.data_identity or run_data.identity_of(config))
    return teacher


def _build_student(config: Config, num_classes: int):
    """The network to train; for distillation, a build failure names the student's flags."""
    try:
        return factory.build_model(config, num_classes, precision=config.precision)
    except (ValueError, TypeError) as err:
        if config.train_mode != "distill":
            raise
        raise ValueError(
            f"The student (--resnet_depth={config.resnet_depth} --width_multiplier="
            f"{config.width_multiplier} --sk_ratio={config.sk_ratio} --image_size="
            f"{config.image_size}) cannot be built: {err}"
        ) from err


def _current_learning_rate(optimizer) -> float:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner.learning_rate
    if callable(lr):
        lr = lr(inner.iterations)
    return float(keras.ops.convert_to_numpy(lr))


def train(config: Config, strategy: tf.distribute.Strategy) -> TrainState:
    """Pretrain or fine-tune as configured; resume from model_dir if it holds checkpoints."""
    model_dir = config.model_dir
    choice = precision_lib.choose_precision(config.precision, strategy=strategy)
    log.info("Precision %s (%s).", choice.policy, choice.reason)
    config = config.replace(precision=choice.policy)
    # Multi-worker: only the chief writes into model_dir; the other workers save checkpoints to a
    # temporary model_dir/worker_tmp_<i> and keep no logs. Waits on peers get a watchdog.
    role = distribute.WorkerRole(strategy, model_dir, collective_timeout=config.collective_timeout)
    storage.check_model_dir_writable(role.write_dir)
    for directory in dict.fromkeys((model_dir, role.write_dir)):  # read by restore, manager
        ckpt_lib.check_state_file(directory)
    num_replicas = strategy.num_replicas_in_sync
    distribute.check_batch_divisible(config.train_batch_size, strategy, flag="--train_batch_size")
    info = factory.dataset_info(config)
    if config.train_split not in info.num_examples:
        raise ValueError(
            f"--train_split={config.train_split!r} is not a split of {config.dataset}; "
            f"available: {', '.join(sorted(info.num_examples))}."
        )
    if config.num_classes and config.num_classes != info.num_classes:
        raise ValueError(
            f"The model's supervised head has --num_classes={config.num_classes} classes but "
            f"{config.dataset} has {info.num_classes}: its labels are another label space. "
            "To train on this dataset, fine-tune into a new model_dir "
            "(--train_mode=finetune --checkpoint=<this model_dir>), which gives it a new head."
        )
    num_train = factory.num_train_examples(config)
    if config.train_batch_size > num_train:
        raise ValueError(
            f"--train_batch_size={config.train_batch_size} is larger than the "
            f"{num_train} training examples of split {config.train_split!r}: lower the batch size."
        )
    total_steps = config.train_steps_for(num_train)
    checkpoint_every = config.checkpoint_every_for(num_train)

    teacher = _load_teacher(config, info, strategy) if config.train_mode == "distill" else None
    with strategy.scope():
        model = _build_student(config, info.num_classes)
        optimizer = factory.build_optimizer(config, num_train)
        head_optimizer = factory.build_head_optimizer(config, model, num_train)
        head_ids = {id(v) for v in model.supervised_head_variables} if head_optimizer else set()
        optimizer.build([v for v in model.optimized_variables if id(v) not in head_ids])
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    extra = {"global_step": global_step}
    if head_optimizer is not None:
        extra["head_optimizer_variables"] = ckpt_lib.variables_by_path(head_optimizer.variables)
    checkpoint = ckpt_lib.training_checkpoint(model, optimizer, **extra)
    manager = tf.train.CheckpointManager(
        checkpoint, role.write_dir, max_to_keep=config.keep_checkpoint_max, step_counter=global_step
    )
    restored = ckpt_lib.restore_latest_valid(checkpoint, model_dir)
    ckpt_lib.remove_interrupted_saves(role.write_dir)
    if restored:
        log.info("Resuming from %s at step %d.", restored, int(global_step.numpy()))
    elif config.random_init:
        log.info("Training from random weights (--random_init): no --checkpoint.")
    elif config.train_mode == "finetune" or config.checkpoint:
        warm_start.restore_initial_weights(config, model)
    role.check_same_step(strategy, int(global_step.numpy()), restored)  # multi-worker only
    storage.check_free_space(
        model_dir,
        storage.checkpoint_bytes(*(t for t in (model, optimizer, head_optimizer) if t is not None)),
        config.keep_checkpoint_max,
    )
    if role.chief:  # (multi-worker: the other workers keep no logs)
        # Records past the restored step (or any, when starting over) would repeat in the curves.
        history_lib.truncate_history(model_dir, int(global_step.numpy()))
        storage.save_config(config, model_dir, int(global_step.numpy()) if restored else None)

    step = int(global_step.numpy())
    state = TrainState(model, optimizer, step, total_steps, info.num_classes, restored)
    if step >= total_steps:
        log.info("Training already finished (step %d of %d).", step, total_steps)
        state.history = history_lib.read_history(model_dir)
        role.close()
        return state

    # The data stream resumes where the checkpoint left it, so a resumed run sees the same
    # batches (and augmentations) as an uninterrupted one.
    dataset_fn = factory.training_dataset_fn(config, config.train_batch_size, start_step=step)
    dist_dataset = _distribute(strategy, dataset_fn)
    iterator = iter(dist_dataset)
    step_fn = make_step_fn(model, optimizer, head_optimizer, teacher)
    shares, rates = model.objective_metric_names()
    train_loop = _make_train_loop(strategy, step_fn, global_step, shares + rates)

    writer = tf.summary.create_file_writer(model_dir) if config.summaries and role.chief else None
    log.info(
        "Training %s for %d steps (batch %d on %d replica(s), %d examples, %.1f epochs).",
        config.train_mode,
        total_steps,
        config.train_batch_size,
        num_replicas,
        num_train,
        total_steps * config.train_batch_size / num_train,
    )
    progress = Progress(total_steps, step, config.log_every_steps, config.train_batch_size)
    last_finite = (history_lib.read_history(model_dir) or [None])[-1]
    last_saved = step
    try:
        with StopRequest() as stop:
            if writer is not None and step == 0 and config.train_mode == "pretrain":
                _write_view_summaries(writer, dataset_fn)
            while step < total_steps:
                n = min(config.steps_per_loop, total_steps - step)
                loop_start = time.perf_counter()
                # Multi-worker: a lost peer becomes WorkerLostError, a stuck one a watchdog exit.
                with role.collective_phase(
                    f"Training step {step + 1}" + (f"-{step + n}" if n > 1 else ""),
                    hint=f"Rerun every worker with the same command: they resume from the last "
                    f"checkpoint in {model_dir}.",
                ):
                    means, last_loss = train_loop(iterator, tf.constant(n, tf.int32))
                    means = {k: float(v) for k, v in means.items()}
                loop_time = time.perf_counter() - loop_start
                if not (math.isfinite(means["loss"]) and math.isfinite(float(last_loss))):
                    raise NonFiniteLossError(
                        f"The training loss became non-finite between steps {step} and "
                        f"{step + n}. Last finite metrics: {last_finite or 'none logged yet'}. "
                        f"The last good checkpoint ({manager.latest_checkpoint or 'none yet'}) "
                        "was kept; the diverged weights were not saved. Try a lower "
                        "--learning_rate, or check the data for corrupt images."
                    )
                step = int(global_step.numpy())
                means["learning_rate"] = _current_learning_rate(optimizer)
                means["images_per_second"] = n * config.train_batch_size / max(loop_time, 1e-9)
                last_finite = {"step": step, **means}
                try:
                    if role.chief:
                        history_lib.append_metrics(model_dir, last_finite)
                except OSError as err:
                    raise storage.write_error(
                        model_dir, history_lib.METRICS_FILENAME, err, manager.latest_checkpoint
                    ) from err
                state.history.append(last_finite)
                if writer is not None:
                    with writer.as_default(step=step):
                        for key, value in means.items():
                            tf.summary.scalar(f"train/{key}", value)
                        tf.summary.scalar("train/weight_decay", config.weight_decay)
                progress.update(step, means)
                if step - last_saved >= checkpoint_every or step >= total_steps:
                    storage.save_checkpoint(manager, step, role.write_dir)
                    role.after_save()  # a non-chief worker drops its copy
                    last_saved = step
                if stop.signal_name is not None:
                    if last_saved != step:
                        storage.save_checkpoint(manager, step, role.write_dir)
                        role.after_save()
                    raise TrainingInterrupted(
                        f"Stopped by {stop.signal_name} at step {step}/{total_steps}; checkpoint "
                        f"saved in {model_dir}. Rerun the same command to resume."
                    )
    finally:
        progress.close()
        role.close()
        if writer is not None:
            writer.flush()
    state.step = step
    state.checkpoint_path = role.checkpoint_path(manager.latest_checkpoint)
    state.images_per_second = progress.images_per_second(step)
    # A non-chief worker returns no history, so that nothing plots over the chief's curves.
    state.history = history_lib.read_history(model_dir) if role.chief else []
    return state


def _write_view_summaries(writer, dataset_fn, max_images: int = 8) -> None:
    """A few augmented views as TensorBoard images, so users can see what the model trains on."""
    try:
        batch = next(iter(dataset_fn(None).take(1)))
    except (tf.errors.OpError, StopIteration) as err:
        log.warning("Could not write augmented-view summaries: %s", err)
        return
    with writer.as_default(step=0):
        tf.summary.image("views/view1", batch["view1"][:max_images], max_outputs=max_images)
        tf.summary.image("views/view2", batch["view2"][:max_images], max_outputs=max_images)
