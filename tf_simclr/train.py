"""The training loop: SimCLR pretraining or supervised fine-tuning under a tf.distribute strategy.

Several steps run per `tf.function` call (`steps_per_loop`). Checkpoints hold the model, the
optimizer (with its step counter, which drives the learning-rate schedule) and the global step,
so a rerun over the same model_dir resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from tf_simclr import checkpoints as ckpt_lib
from tf_simclr import config as config_lib
from tf_simclr import distribute, factory
from tf_simclr.config import Config
from tf_simclr.model import SUPERVISED_HEAD_NAME

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the step boundary."""


class ModelDirWriteError(OSError):
    """A checkpoint or log could not be written to model_dir (disk full, read-only, removed);
    the last complete checkpoint was left intact."""


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
    """Seeds, optional op determinism and the mixed-precision policy."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.precision)


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries (main thread only)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the next step boundary.", self.signal_name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Progress:
    """A progress bar on an interactive terminal, periodic log lines otherwise."""

    def __init__(self, total: int, initial: int, every: int, images_per_step: int) -> None:
        self.total = total
        self.every = every
        self.images_per_step = images_per_step
        self.last_logged = initial
        self.start_step = initial
        self.start_time = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def images_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (step - self.start_step) * self.images_per_step / max(elapsed, 1e-9)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        rate = self.images_per_second(step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}", img_s=f"{rate:.0f}"
            )
            return
        if step - self.last_logged >= self.every or step >= self.total:
            self.last_logged = step
            remaining = (self.total - step) * self.images_per_step / max(rate, 1e-9)
            hidden = ("learning_rate", "images_per_second")
            shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in hidden)
            log.info(
                "step %d/%d %s lr=%.4g %.0f img/s ETA %s",
                step,
                self.total,
                shown,
                metrics.get("learning_rate", float("nan")),
                rate,
                _format_seconds(remaining),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _check_model_dir_writable(model_dir: str) -> None:
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


def _checkpoint_bytes(*objects) -> int:
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


def _check_free_space(model_dir: str, checkpoint_bytes: int, keep: int) -> None:
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


def _write_error(model_dir: str, what: str, err: BaseException, last_good: str | None):
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


def _save_checkpoint(manager: tf.train.CheckpointManager, step: int, model_dir: str) -> str:
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
        raise _write_error(
            model_dir, f"checkpoint ckpt-{step}", err, good[-1] if good else None
        ) from err


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


def make_step_fn(model, optimizer, head_optimizer=None):
    """The per-replica training step: `SimCLRModel.training_step` (the objective `fit()` uses
    too), returning every metric of the batch (see `SimCLRModel.objective_metric_names`)."""

    def step_fn(batch):
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


def _current_learning_rate(optimizer) -> float:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner.learning_rate
    if callable(lr):
        lr = lr(inner.iterations)
    return float(keras.ops.convert_to_numpy(lr))


def _append_metrics(model_dir: str, record: dict) -> None:
    with open(os.path.join(model_dir, METRICS_FILENAME), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_history(model_dir: str) -> list[dict]:
    """Logged training metrics, one record per logging interval; a resumed run's records follow
    on from the interrupted one's (records past the restored step are dropped)."""
    path = os.path.join(model_dir, METRICS_FILENAME)
    if not os.path.exists(path):
        return []
    records, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f]
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            bad.append(number)
    last = max((n for n, line in enumerate(lines, 1) if line), default=0)
    if bad and bad != [last]:  # a last line cut short by a kill is expected
        log.warning(
            "%s: %d line(s) cannot be parsed and were skipped (line %s); the training curves "
            "miss those records.",
            path,
            len(bad),
            ", ".join(str(n) for n in bad[:5]),
        )
    by_step = {}
    for record in records:
        by_step[record["step"]] = record  # later (resumed) records win
    return [by_step[s] for s in sorted(by_step)]


def _truncate_history(model_dir: str, step: int) -> None:
    """Drop logged records newer than the checkpoint we resume from, so curves have no repeats."""
    kept = [r for r in read_history(model_dir) if r["step"] <= step]
    path = os.path.join(model_dir, METRICS_FILENAME)
    if os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, path)


def _save_config(config: Config, model_dir: str, resumed_step: int | None) -> None:
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


def _restore_initial_weights(config: Config, model) -> None:
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
        # "model_dir/ckpt-500.index" (or a data file) names the checkpoint ckpt-500.
        path = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
        if os.path.isdir(path):
            if not ckpt_lib.list_checkpoints(path):
                raise FileNotFoundError(f"--checkpoint={path} is a directory without ckpt-* files.")
            path = ckpt_lib.latest_valid_checkpoint(path)  # skips damaged ones, saying so
        elif not os.path.exists(path + ".index"):
            raise FileNotFoundError(
                f"--checkpoint={path} is not a checkpoint (no {path}.index). Give a checkpoint "
                "prefix such as model_dir/ckpt-500, or a model_dir."
            )
        else:
            ckpt_lib.validate_checkpoint(path)
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


def train(config: Config, strategy: tf.distribute.Strategy) -> TrainState:
    """Pretrain or fine-tune as configured; resume from model_dir if it holds checkpoints."""
    model_dir = config.model_dir
    # Multi-worker: only the chief writes into model_dir; the other workers save checkpoints to a
    # temporary model_dir/worker_tmp_<i> and keep no logs. Waits on peers get a watchdog.
    role = distribute.WorkerRole(strategy, model_dir, collective_timeout=config.collective_timeout)
    _check_model_dir_writable(role.write_dir)
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

    with strategy.scope():
        model = factory.build_model(config, info.num_classes)
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
    elif config.train_mode == "finetune":
        _restore_initial_weights(config, model)
    role.check_same_step(strategy, int(global_step.numpy()), restored)  # multi-worker only
    _check_free_space(
        model_dir,
        _checkpoint_bytes(*(t for t in (model, optimizer, head_optimizer) if t is not None)),
        config.keep_checkpoint_max,
    )
    if role.chief:  # (multi-worker: the other workers keep no logs)
        # Records past the restored step (or any, when starting over) would repeat in the curves.
        _truncate_history(model_dir, int(global_step.numpy()))
        _save_config(config, model_dir, int(global_step.numpy()) if restored else None)

    step = int(global_step.numpy())
    state = TrainState(model, optimizer, step, total_steps, info.num_classes, restored)
    if step >= total_steps:
        log.info("Training already finished (step %d of %d).", step, total_steps)
        state.history = read_history(model_dir)
        role.close()
        return state

    # The data stream resumes where the checkpoint left it, so a resumed run sees the same
    # batches (and augmentations) as an uninterrupted one.
    dataset_fn = (
        factory.pretrain_dataset_fn(config, config.train_batch_size, start_step=step)
        if config.train_mode == "pretrain"
        else factory.finetune_dataset_fn(config, config.train_batch_size, start_step=step)
    )
    dist_dataset = _distribute(strategy, dataset_fn)
    iterator = iter(dist_dataset)
    step_fn = make_step_fn(model, optimizer, head_optimizer)
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
    last_finite = (read_history(model_dir) or [None])[-1]
    last_saved = step
    try:
        with _StopRequest() as stop:
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
                        _append_metrics(model_dir, last_finite)
                except OSError as err:
                    raise _write_error(
                        model_dir, METRICS_FILENAME, err, manager.latest_checkpoint
                    ) from err
                state.history.append(last_finite)
                if writer is not None:
                    with writer.as_default(step=step):
                        for key, value in means.items():
                            tf.summary.scalar(f"train/{key}", value)
                        tf.summary.scalar("train/weight_decay", config.weight_decay)
                progress.update(step, means)
                if step - last_saved >= checkpoint_every or step >= total_steps:
                    _save_checkpoint(manager, step, role.write_dir)
                    role.after_save()  # a non-chief worker drops its copy
                    last_saved = step
                if stop.signal_name is not None:
                    if last_saved != step:
                        _save_checkpoint(manager, step, role.write_dir)
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
    state.history = read_history(model_dir) if role.chief else []
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


def plot_history(history: list[dict], path: str) -> str | None:
    """A PNG of the training curves; returns its path (None when there is nothing to plot)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    panels = [
        ("loss", ["loss", "contrastive_loss", "sup_loss"]),
        ("accuracy", ["contrastive_acc", "sup_acc"]),
        ("learning rate", ["learning_rate"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(steps, [np.nan if v is None else v for v in values], label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
