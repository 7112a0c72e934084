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
from tf_simclr.training.budget import TrainingClock

# Kept importable from here, where they were defined before the loop was cut into modules.
from tf_simclr.training.history import plot_history, read_history  # noqa: F401
from tf_simclr.training.interrupts import StopRequest
from tf_simclr.training.progress import Progress
from tf_simclr.workflows import run_data, storage, timed_run, warm_start
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
    budget: dict | None = None  # a --train_minutes run's plan and training time


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


def _load_teacher(config: Config, num_classes: int, strategy):
    """Distillation's frozen teacher, refused unless it predicts the dataset's classes."""
    from tf_simclr.workflows import distill

    teacher = distill.load_teacher(
        config.teacher, image_size=config.image_size, precision=config.precision, strategy=strategy
    )
    if teacher.num_classes != num_classes:
        raise distill.TeacherError(
            f"--teacher={config.teacher} predicts {teacher.num_classes} classes but "
            f"{config.dataset} has {num_classes}: its predictions are another label space. "
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


@dataclass
class RunPlan:
    """What a run trains on and for how long, checked before anything is built."""

    config: Config  # with the precision chosen for this machine
    role: distribute.WorkerRole
    num_classes: int
    num_train: int
    total_steps: int
    checkpoint_every: int


@dataclass
class AssembledRun:
    """The run's network, optimizers and checkpointing, built under the strategy."""

    plan: RunPlan
    strategy: tf.distribute.Strategy
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    head_optimizer: keras.optimizers.Optimizer | None
    teacher: object | None  # distillation's frozen teacher
    global_step: tf.Variable
    manager: tf.train.CheckpointManager
    # A --train_minutes run not yet planned: the schedules' steps, set by its planner.
    schedule_steps: object | None = None

    @property
    def step(self) -> int:
        return int(self.global_step.numpy())


def train(
    config: Config, strategy: tf.distribute.Strategy, *, clock=time.perf_counter
) -> TrainState:
    """Pretrain or fine-tune as configured; resume from model_dir if it holds checkpoints.

    The phases: plan (checks, step counts), assemble (network, optimizers, checkpoint),
    restore (resume or warm start), loop (train, log, save), and the state left behind.
    `clock` (seconds) times the training (tests give a fake one)."""
    plan = plan_run(config, strategy)
    try:
        run = assemble(plan, strategy)
        restored = restore(run)
        state = TrainState(
            run.model, run.optimizer, run.step, plan.total_steps, plan.num_classes, restored
        )
        if state.step >= plan.total_steps:
            log.info("Training already finished (step %d of %d).", state.step, plan.total_steps)
            state.history = history_lib.read_history(plan.config.model_dir)
            state.budget = timed_run.summary(plan.config, state.history)
            return state
        run_loop(run, state, clock=clock)
    finally:
        plan.role.close()
    return state


def plan_run(config: Config, strategy: tf.distribute.Strategy) -> RunPlan:
    """Chooses the precision and this process's role, and checks model_dir, the dataset and
    the batch size against each other before anything is built."""
    choice = precision_lib.choose_precision(config.precision, strategy=strategy)
    log.info("Precision %s (%s).", choice.policy, choice.reason)
    config = config.replace(precision=choice.policy)
    config = timed_run.with_recorded_plan(config)  # --train_minutes: a resumed run's plan
    # Multi-worker: only the chief writes into model_dir; the other workers save checkpoints to a
    # temporary model_dir/worker_tmp_<i> and keep no logs. Waits on peers get a watchdog.
    role = distribute.WorkerRole(
        strategy, config.model_dir, collective_timeout=config.collective_timeout
    )
    storage.check_model_dir_writable(role.write_dir)
    for directory in dict.fromkeys((config.model_dir, role.write_dir)):  # read by restore, manager
        ckpt_lib.check_state_file(directory)
    distribute.check_batch_divisible(config.train_batch_size, strategy, flag="--train_batch_size")
    info = factory.dataset_info(config)
    num_train = _check_dataset(config, info)
    return RunPlan(
        config=config,
        role=role,
        num_classes=info.num_classes,
        num_train=num_train,
        total_steps=config.train_steps_for(num_train),
        checkpoint_every=config.checkpoint_every_for(num_train),
    )


def _check_dataset(config: Config, info) -> int:
    """The number of training examples, once the split, the head's classes and the batch size
    are known to fit the dataset."""
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
    return num_train


def assemble(plan: RunPlan, strategy: tf.distribute.Strategy) -> AssembledRun:
    """The network, its optimizers (built on the variables each trains), the global step and
    the checkpoint manager writing into the role's directory."""
    config = plan.config
    teacher = (
        _load_teacher(config, plan.num_classes, strategy)
        if config.train_mode == "distill"
        else None
    )
    with strategy.scope():
        model = _build_student(config, plan.num_classes)
        steps = factory.schedule_steps(config, plan.num_train)  # a budget not yet planned
        optimizer = factory.build_optimizer(config, plan.num_train, schedule_steps=steps)
        head_optimizer = factory.build_head_optimizer(
            config, model, plan.num_train, schedule_steps=steps
        )
        head_ids = {id(v) for v in model.supervised_head_variables} if head_optimizer else set()
        optimizer.build([v for v in model.optimized_variables if id(v) not in head_ids])
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    extra = {"global_step": global_step}
    if head_optimizer is not None:
        extra["head_optimizer_variables"] = ckpt_lib.variables_by_path(head_optimizer.variables)
    checkpoint = ckpt_lib.training_checkpoint(model, optimizer, **extra)
    manager = tf.train.CheckpointManager(
        checkpoint,
        plan.role.write_dir,
        max_to_keep=config.keep_checkpoint_max,
        step_counter=global_step,
    )
    return AssembledRun(
        plan, strategy, model, optimizer, head_optimizer, teacher, global_step, manager, steps
    )


def restore(run: AssembledRun) -> str | None:
    """Resumes from model_dir's latest valid checkpoint (returned), or starts from the
    configured initial weights; then checks the disk space and, on the chief, cuts the
    history back to the restored step and records the config."""
    config, role, model_dir = run.plan.config, run.plan.role, run.plan.config.model_dir
    restored = ckpt_lib.restore_latest_valid(run.manager.checkpoint, model_dir)
    ckpt_lib.remove_interrupted_saves(role.write_dir)
    if restored:
        log.info("Resuming from %s at step %d.", restored, run.step)
    elif config.random_init:
        log.info("Training from random weights (--random_init): no --checkpoint.")
    elif config.train_mode == "finetune" or config.checkpoint:
        warm_start.restore_initial_weights(config, run.model)
    role.check_same_step(run.strategy, run.step, restored)  # multi-worker only
    trackables = (run.model, run.optimizer, run.head_optimizer)
    storage.check_free_space(
        model_dir,
        storage.checkpoint_bytes(*(t for t in trackables if t is not None)),
        config.keep_checkpoint_max,
    )
    if role.chief:  # (multi-worker: the other workers keep no logs)
        # Records past the restored step (or any, when starting over) would repeat in the curves.
        history_lib.truncate_history(model_dir, run.step)
        storage.save_config(config, model_dir, run.step if restored else None)
    return restored


def run_loop(run: AssembledRun, state: TrainState, *, clock=time.perf_counter) -> None:
    """Trains from `state.step` to the end, `steps_per_loop` steps a call: each call's mean
    metrics and the training time so far go to the history, TensorBoard and the progress
    display, and checkpoints are saved as configured (always at the end, and at a stop
    signal). A --train_minutes run plans its end meanwhile (timed_run). Fills in `state`."""
    config, role = run.plan.config, run.plan.role
    # The data stream resumes where the checkpoint left it, so a resumed run sees the same
    # batches (and augmentations) as an uninterrupted one.
    dataset_fn = factory.training_dataset_fn(config, config.train_batch_size, start_step=state.step)
    iterator = iter(_distribute(run.strategy, dataset_fn))
    step_fn = make_step_fn(run.model, run.optimizer, run.head_optimizer, run.teacher)
    shares, rates = run.model.objective_metric_names()
    train_loop = _make_train_loop(run.strategy, step_fn, run.global_step, shares + rates)
    writer = None
    if config.summaries and role.chief:
        writer = tf.summary.create_file_writer(config.model_dir)
    _log_start(run)
    progress = Progress(
        run.plan.total_steps, state.step, config.log_every_steps, config.train_batch_size
    )
    last_finite = (history_lib.read_history(config.model_dir) or [None])[-1]
    timer = TrainingClock(  # the training time continues from the run it resumes
        (last_finite or {}).get("train_seconds", 0.0), clock, 60 * config.checkpoint_minutes
    )
    timed = timed_run.start(run, state.step, progress)  # None unless planning a budget
    step = last_saved = state.step
    try:
        with StopRequest() as stop:
            if writer is not None and step == 0 and config.train_mode == "pretrain":
                _write_view_summaries(writer, dataset_fn)
            while step < run.plan.total_steps:
                num_steps = min(config.steps_per_loop, run.plan.total_steps - step)
                means = _run_steps(run, train_loop, iterator, num_steps, last_finite)
                step = run.step
                last_finite = {"step": step, **means, "train_seconds": round(timer.elapsed(), 3)}
                _record(run, last_finite, state, writer)
                progress.update(step, means)
                if timed is not None:
                    timed.after_loop(step, last_finite["train_seconds"])
                time_due = timer.checkpoint_due(last_finite["train_seconds"])
                if (
                    time_due
                    or step - last_saved >= run.plan.checkpoint_every
                    or step >= run.plan.total_steps
                ):
                    _save(run, step)
                    last_saved = step
                if stop.signal_name is not None:
                    if last_saved != step:
                        _save(run, step)
                    raise TrainingInterrupted(
                        f"Stopped by {stop.signal_name} at step {step}"
                        f"{'' if progress.total is None else f'/{progress.total}'}; "
                        f"checkpoint saved in {config.model_dir}. Rerun the same command to "
                        "resume."
                    )
    finally:
        progress.close()
        if writer is not None:
            writer.flush()
    state.step = step
    state.total_steps = run.plan.total_steps  # a budget's planned steps
    state.checkpoint_path = role.checkpoint_path(run.manager.latest_checkpoint)
    state.images_per_second = progress.images_per_second(step)
    # A non-chief worker returns no history, so that nothing plots over the chief's curves.
    state.history = history_lib.read_history(config.model_dir) if role.chief else []
    state.budget = timed_run.summary(run.plan.config, state.history)


def _log_start(run: AssembledRun) -> None:
    config, plan = run.plan.config, run.plan
    if config.train_minutes is not None:
        return  # timed_run.start says how a time budget is planned
    log.info(
        "Training %s for %d steps (batch %d on %d replica(s), %d examples, %.1f epochs).",
        config.train_mode,
        plan.total_steps,
        config.train_batch_size,
        run.strategy.num_replicas_in_sync,
        plan.num_train,
        plan.total_steps * config.train_batch_size / plan.num_train,
    )


def _run_steps(run: AssembledRun, train_loop, iterator, num_steps: int, last_finite) -> dict:
    """Runs `num_steps` training steps; their mean metrics with the learning rate and the
    throughput. Refuses a non-finite loss before anything is saved."""
    step, model_dir = run.step, run.plan.config.model_dir
    loop_start = time.perf_counter()
    # Multi-worker: a lost peer becomes WorkerLostError, a stuck one a watchdog exit.
    with run.plan.role.collective_phase(
        f"Training step {step + 1}" + (f"-{step + num_steps}" if num_steps > 1 else ""),
        hint=f"Rerun every worker with the same command: they resume from the last "
        f"checkpoint in {model_dir}.",
    ):
        means, last_loss = train_loop(iterator, tf.constant(num_steps, tf.int32))
        means = {k: float(v) for k, v in means.items()}
    loop_time = time.perf_counter() - loop_start
    if not (math.isfinite(means["loss"]) and math.isfinite(float(last_loss))):
        raise NonFiniteLossError(
            f"The training loss became non-finite between steps {step} and "
            f"{step + num_steps}. Last finite metrics: {last_finite or 'none logged yet'}. "
            f"The last good checkpoint ({run.manager.latest_checkpoint or 'none yet'}) "
            "was kept; the diverged weights were not saved. Try a lower "
            "--learning_rate, or check the data for corrupt images."
        )
    means["learning_rate"] = _current_learning_rate(run.optimizer)
    means["images_per_second"] = num_steps * run.plan.config.train_batch_size / max(loop_time, 1e-9)
    return means


def _record(run: AssembledRun, record: dict, state: TrainState, writer) -> None:
    """One loop's metrics into the history file (chief only), `state` and TensorBoard."""
    config = run.plan.config
    try:
        if run.plan.role.chief:
            history_lib.append_metrics(config.model_dir, record)
    except OSError as err:
        raise storage.write_error(
            config.model_dir, history_lib.METRICS_FILENAME, err, run.manager.latest_checkpoint
        ) from err
    state.history.append(record)
    if writer is not None:
        with writer.as_default(step=record["step"]):
            for key, value in record.items():
                if key != "step":
                    tf.summary.scalar(f"train/{key}", value)
            tf.summary.scalar("train/weight_decay", config.weight_decay)


def _save(run: AssembledRun, step: int) -> None:
    storage.save_checkpoint(run.manager, step, run.plan.role.write_dir)
    run.plan.role.after_save()  # a non-chief worker drops its copy


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
