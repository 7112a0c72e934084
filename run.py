"""tf_simclr command line: absl flags -> Config -> tf_simclr.runner.run.

python run.py --mode=train_then_eval            # the embedded default dataset, a few minutes
python run.py --helpfull                        # every flag
python run.py --flagfile=recipes/cifar10.flags  # a recipe
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import sys
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from tf_simclr.config import (  # noqa: E402
    BRIGHTNESS_MODES,
    CONFIG_FILENAME,
    LOSS_SCALES,
    LR_SCALINGS,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    PROJ_HEAD_MODES,
    STRATEGIES,
    SUP_HEAD_OPTIMIZERS,
    TRAIN_MODES,
    Config,
    ConfigError,
    resolve,
    with_encoder_of_checkpoint,
)

HELP = {
    "mode": f"What to do: {', '.join(MODES)}.",
    "train_mode": f"{' or '.join(TRAIN_MODES)}: contrastive pretraining or supervised fine-tuning.",
    "model_dir": "Directory for checkpoints, summaries, config.json, result.json and exports.",
    "checkpoint": "Fine-tuning: pretraining checkpoint prefix (or model_dir) to start from.",
    "dataset": "'embedded' (shipped in data/), a TFDS name (with --data_dir), a TFDS-format "
    "directory, or an image folder root/<split>/<class>/*.jpg.",
    "data_dir": "TFDS data_dir holding prepared datasets (no downloads are attempted).",
    "train_split": "Split to train on.",
    "eval_split": "Split to evaluate on.",
    "cache_dataset": "Cache decoded images in memory (small datasets).",
    "image_size": "Input side in pixels; <= 32 selects the CIFAR stem.",
    "augmentations": "Comma-separated operators, e.g. crop,flip,color,blur (default from the "
    "recipe: crop,flip,color plus blur with --use_blur).",
    "color_jitter_strength": "Colour distortion strength s (ImageNet 1.0, CIFAR 0.5).",
    "use_blur": "Add Gaussian blur to the default augmentations (ImageNet recipe).",
    "brightness": f"Brightness jitter form: {', '.join(BRIGHTNESS_MODES)} (SimCLRv2, v1).",
    "label_fraction": "Fine-tuning: class-balanced fraction of labelled training examples.",
    "label_ids_file": "Fine-tuning: file of training example ids (one per line) to use.",
    "strict_data": "Fail on corrupt image files instead of skipping them with a count.",
    "train_batch_size": "Global training batch size (split over replicas).",
    "train_epochs": "Training epochs (ignored when --train_steps > 0).",
    "train_steps": "Training steps; overrides --train_epochs when > 0.",
    "eval_batch_size": "Evaluation batch size.",
    "eval_steps": "Evaluation batches per split (0: the whole split).",
    "warmup_epochs": "Linear learning-rate warmup, in epochs.",
    "steps_per_loop": "Training steps per tf.function call.",
    "checkpoint_epochs": "Epochs between checkpoints.",
    "checkpoint_steps": "Steps between checkpoints; overrides --checkpoint_epochs when > 0.",
    "keep_checkpoint_max": "Checkpoints to keep.",
    "keep_hub_module_max": "Exported SavedModels to keep.",
    "log_every_steps": "Steps between progress log lines (non-interactive output).",
    "optimizer": f"Optimizer: {', '.join(OPTIMIZERS)}.",
    "learning_rate": "Base learning rate, scaled by --learning_rate_scaling.",
    "learning_rate_scaling": f"{' or '.join(LR_SCALINGS)}: lr = base*B/256 or base*sqrt(B).",
    "momentum": "Momentum of LARS / SGD.",
    "sup_head_learning_rate": "Pretraining: base learning rate (x B/256) of the linear-eval head, "
    "which has its own momentum-SGD optimizer.",
    "weight_decay": "Weight decay (batch norm and biases excluded).",
    "batch_norm_decay": "Batch-norm moving-average decay (momentum).",
    "precision": f"Numeric policy: {', '.join(PRECISIONS)} (loss always in float32).",
    "temperature": "NT-Xent temperature tau.",
    "hidden_norm": "L2-normalise projections before the contrastive loss.",
    "loss_scale": f"{' or '.join(LOSS_SCALES)}: the paper's loss, or the reference code's 2x.",
    "resnet_depth": "ResNet depth: 18, 34, 50, 101, 152 or 200.",
    "width_multiplier": "ResNet width multiplier (e.g. 0.25, 0.5, 1, 2, 4).",
    "sk_ratio": "Selective-kernel ratio (SimCLRv2 uses 0.0625; 0 disables).",
    "se_ratio": "Squeeze-excitation ratio (0 disables).",
    "proj_head_mode": f"Projection head: {', '.join(PROJ_HEAD_MODES)}.",
    "proj_out_dim": "Projection output dimension.",
    "num_proj_layers": "Layers in the nonlinear projection head (SimCLRv2: 3).",
    "ft_proj_selector": "Fine-tune from this projection-head layer (0: encoder output).",
    "global_bn": "Synchronise batch-norm statistics across replicas.",
    "lineareval_while_pretraining": "Train a linear head on stop_gradient features meanwhile.",
    "zero_init_logits_layer": "Zero-initialise the supervised head when fine-tuning.",
    "fine_tune_after_block": "Fine-tuning: freeze the stem and block groups <= this (-1: none).",
    "num_classes": "Classes of the supervised head (0: the dataset's). Set by tf_simclr.convert "
    "for published models (1000 ImageNet classes).",
    "sup_head_input_norm": "Pretraining: standardise the linear-eval head's input with a "
    "parameter-free batch norm (tf_simclr; the reference code has none).",
    "sup_head_optimizer": f"Pretraining: {' or '.join(SUP_HEAD_OPTIMIZERS)}. momentum: the "
    "linear-eval head has its own momentum SGD at --sup_head_learning_rate (tf_simclr); shared: "
    "the main optimizer trains it at the main learning rate, with an L2 term on its kernel and "
    "no LARS trust ratio (the reference code).",
    "ft_update_unused_head_bn": "Fine-tuning: keep the batch-norm layers of projection-head "
    "layers above --ft_proj_selector in training mode, so their moving statistics follow the "
    "batches, as the reference code does (they get no gradient either way).",
    "fused_batch_norm": "Batch norm through TF's fused kernel (faster; numerically stabler "
    "statistics). false: statistics as the reference code computes them (E[x^2]-E[x]^2), for "
    "bit-level parity with it.",
    "knn_eval": "Report weighted kNN accuracy of frozen features.",
    "knn_k": "Neighbours for the kNN evaluation.",
    "knn_temperature": "Temperature of the weighted kNN vote.",
    "linear_eval": "Train a linear probe on frozen features after pretraining.",
    "linear_eval_epochs": "Epochs of the frozen-feature linear probe.",
    "random_init_baseline": "Also evaluate the same architecture with random weights.",
    "eval_timeout": "mode=eval: wait this many seconds for each new checkpoint (0: latest once).",
    "strategy": f"Distribution: {', '.join(STRATEGIES)} (multi_worker reads TF_CONFIG).",
    "num_cpu_devices": "mirrored on a CPU-only machine: split the CPU into this many devices.",
    "collective_timeout": "multi_worker: seconds to wait for the other workers (at startup and "
    "for each training loop) before exiting with an error naming them (exit code 75; rerun all "
    "workers to resume). 0 waits forever.",
    "use_tpu": "Same as --strategy=tpu.",
    "tpu_name": "TPU name or grpc:// address.",
    "tpu_zone": "GCE zone of the TPU.",
    "gcp_project": "GCP project of the TPU.",
    "seed": "Random seed for weights, data order and augmentations.",
    "deterministic": "Enable TF op determinism (slower; bit-reproducible runs).",
    "export": "Export a SavedModel (TF-Hub module) at the end of training.",
    "summaries": "Write TensorBoard summaries to model_dir.",
}


def _define_flags() -> None:
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        name, default = field.name, field.default
        help_text = HELP[field.name]
        kind = hints[name]
        if kind is bool:
            flags.DEFINE_bool(name, default, help_text)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text)
        elif kind == (float | None):
            flags.DEFINE_float(name, default, help_text)
        else:
            flags.DEFINE_string(name, default, help_text)


_define_flags()
FLAGS = flags.FLAGS


_EMPTY_IS_NONE = (
    "checkpoint",
    "data_dir",
    "augmentations",
    "label_ids_file",
    "tpu_name",
    "tpu_zone",
    "gcp_project",
)


def _given_flags() -> dict:
    """The Config fields set on the command line (or in a --flagfile), with '' as None."""
    given = {}
    for field in dataclasses.fields(Config):
        if FLAGS[field.name].present:
            value = getattr(FLAGS, field.name)
            given[field.name] = None if field.name in _EMPTY_IS_NONE and value == "" else value
    return given


def config_from_flags() -> Config:
    """Turn parsed flags into a validated Config (raises ConfigError).

    Over a model_dir that holds a run (config.json), the run's settings are the base and the
    flags given override them; a given architecture flag that differs is an error. Fine-tuning
    takes the encoder settings its --checkpoint was trained with, unless given.
    """
    given = _given_flags()
    model_dir = os.path.expanduser(given.get("model_dir") or Config.model_dir)
    saved = None
    if os.path.isfile(os.path.join(model_dir, CONFIG_FILENAME)):
        saved = Config.load(model_dir)
    elif given.get("train_mode") == "finetune" and given.get("checkpoint"):
        given = with_encoder_of_checkpoint(given)
    return resolve(given, saved, source=f"--model_dir={model_dir}")


def describe_tf_error(err) -> str:
    """The informative part of a TensorFlow error: its cause and the file or op it names,
    without the Python trace of where the op was defined and the internal node markers."""
    kept = []
    for line in str(getattr(err, "message", err)).splitlines():
        text = line.strip()
        if not text or line.startswith((" ", "\t")) or text.startswith("Detected at node"):
            continue  # the definition trace ("  File ...") and node markers ("\t [[...]]")
        if text == "Graph execution error:":
            continue
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
        text = re.sub(r"\s*\[Op:[^\]]*\](\s*name:\s*\S*)?\s*$", "", text)
        if text:
            kept.append(text)
    return " ".join(kept) or str(err).strip()


def _interrupt(signum, _frame) -> None:
    # SIGTERM outside the training loop behaves like Ctrl-C (the loop installs its own handler
    # that finishes the step and saves first).
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(
            f"Unexpected arguments: {' '.join(argv[1:])} (flags use --name=value)."
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # TFDS and TF log through absl at INFO; keep the console to tf_simclr's own progress.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        config = config_from_flags()
    except ConfigError as err:
        raise app.UsageError(str(err)) from err

    import tensorflow as tf

    from tf_simclr import distribute, runner
    from tf_simclr.checkpoints import CheckpointError
    from tf_simclr.train import NonFiniteLossError, TrainingInterrupted

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if config.strategy == "multi_worker":
            # Bound the wait for the other workers while runner builds the strategy, and let
            # only the chief export into the shared model_dir.
            distribute.set_default_collective_timeout(config.collective_timeout)
            if config.export and not distribute.is_chief_task():
                config = config.replace(export=False)
        result = runner.run(config)
    except TrainingInterrupted as err:
        logging.warning("%s", err)
        return 130
    except distribute.WorkerLostError as err:
        logging.error("%s", err)
        return distribute.WORKER_LOST_EXIT_CODE
    except KeyboardInterrupt as err:
        logging.warning(
            "Interrupted (%s). Complete checkpoints in %s are kept (an unfinished save is "
            "skipped on resume). Rerun the same command to resume.",
            err.args[0] if err.args else "SIGINT",
            config.model_dir,
        )
        return 130
    except (NonFiniteLossError, CheckpointError, FileNotFoundError, ValueError, OSError) as err:
        logging.error("%s", err)
        return 1
    except tf.errors.OpError as err:
        logging.error("TensorFlow error: %s", describe_tf_error(err))
        logging.debug("Details:", exc_info=True)
        return 1
    metrics = result.get("metrics")
    if metrics:
        print("Results:", file=sys.stderr)
        for key, value in sorted(metrics.items()):
            print(f"  {key:28s} {value:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    app.run(main)
