"""Top-level workflows behind `tf-simclr --mode=...`: train, eval, train_then_eval, preview,
export, embed (tf_simclr.workflows.embed), and semi_supervised
(tf_simclr.workflows.semi_supervised runs its stages through `run`)."""

from __future__ import annotations

import json
import logging
import os
import time

import tensorflow as tf

from tf_simclr import data as data_lib
from tf_simclr import factory
from tf_simclr.choices import SUPERVISED_TRAIN_MODES
from tf_simclr.config import CONFIG_FILENAME, RESULT_FILENAME, Config, ConfigError
from tf_simclr.data import identity as identity_lib
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.evaluation import visualize
from tf_simclr.network import model as model_lib
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.training import distribute
from tf_simclr.training import history as history_lib
from tf_simclr.workflows import distill as distill_lib
from tf_simclr.workflows import run_data, storage, warm_start
from tf_simclr.workflows import train as train_lib

log = logging.getLogger(__name__)

CURVES_FILENAME = "training_curves.png"


def check_saved_architecture(config: Config) -> None:
    """Refuse a config whose architecture differs from the run saved in its model_dir (the
    checkpoints there would not fit); ConfigError names the settings and both values."""
    path = os.path.join(config.model_dir, CONFIG_FILENAME)
    if not os.path.isfile(path):
        return
    saved = Config.load(config.model_dir)
    if config.mode == "embed":
        # --unlabelled only says how the images to embed are read: the network is the run's.
        config = config.replace(
            unlabelled=saved.unlabelled,
            lineareval_while_pretraining=saved.lineareval_while_pretraining,
        )
    if saved.unlabelled != config.unlabelled:
        trained, now = ("without", "with") if saved.unlabelled else ("with", "without")
        raise ConfigError(
            f"--model_dir={config.model_dir} holds a run trained {trained} labels "
            f"(--unlabelled={saved.unlabelled}), and this one reads its data {now} them: its "
            "network has "
            + ("no" if saved.unlabelled else "an")
            + " online linear head and its data identity is the data read that way. Give "
            f"--unlabelled={str(saved.unlabelled).lower()} (or leave it out: the run's "
            "config.json supplies it), or use a new --model_dir."
        )
    conflicts = saved.architecture_conflicts(config)
    if conflicts:
        raise ConfigError(
            f"--model_dir={config.model_dir} holds a run with another architecture (saved vs "
            f"given: {'; '.join(conflicts)}). Use the run's settings, or a new --model_dir."
        )


def with_absolute_paths(config: Config) -> Config:
    """`config` with its dataset, data_dir, label ids file, --checkpoint and --teacher as
    absolute paths (against this invocation's working directory), so the run's config.json
    means the same files from any other one. Names ("embedded", TFDS names) are kept."""
    return config.replace(
        dataset=identity_lib.absolute_dataset(config.dataset),
        data_dir=identity_lib.absolute_path(config.data_dir),
        label_ids_file=identity_lib.absolute_path(config.label_ids_file),
        checkpoint=identity_lib.absolute_path(config.checkpoint),
        teacher=identity_lib.absolute_path(config.teacher),
        eval_dataset=config.eval_dataset and identity_lib.absolute_dataset(config.eval_dataset),
    )


def run(config: Config) -> dict:
    """Run the configured mode; returns what it produced (metrics, paths)."""
    train_lib.setup_runtime(config)
    config = with_absolute_paths(config)
    if config.evaluates_checkpoint():
        _check_transfer_output(config)
    if config.mode != "preview":
        check_saved_architecture(config)
    if config.mode == "preview":
        return {"preview": preview(config)}
    if config.mode == "embed":
        from tf_simclr.workflows import embed

        return embed.run_embed(config)
    if config.mode == "semi_supervised":
        from tf_simclr.workflows import semi_supervised

        result = semi_supervised.run_recipe(config, run_stage=run)
        if _is_chief(config):
            write_result(config, result)
        return result
    if config.strategy == "multi_worker" and config.export and not distribute.is_chief_task():
        config = config.replace(export=False)  # workers share model_dir: the chief exports
    strategy = distribute.make_strategy(
        config.strategy,
        tpu_name=config.tpu_name,
        tpu_zone=config.tpu_zone,
        gcp_project=config.gcp_project,
        num_cpu_devices=config.num_cpu_devices or None,
        collective_timeout=config.collective_timeout,
    )
    log.info("Strategy %s with %d replica(s).", config.strategy, strategy.num_replicas_in_sync)
    if config.mode == "export":
        run_data.check_own_data(config, run_data.identity_of(config), reader="export")
        return {"export_path": export_latest(config, strategy)}
    if config.mode == "eval":
        return evaluate_checkpoints(config, strategy)

    if config.mode == "train_then_eval" or config.eval_dataset:
        _check_evaluation_data(config)  # before training, not after it
    config = _with_checked_data(config)
    start = time.perf_counter()
    state = train_lib.train(config, strategy)
    result = {
        "step": state.step,
        "total_steps": state.total_steps,
        "precision": state.model.dtype_policy.name,
    }
    if state.budget:  # --train_minutes: the plan and the training time against the budget
        result["budget"] = state.budget
    # Evaluation and the export compute in float32 whatever precision training used.
    trained = factory.float32_twin(config, state.model, state.num_classes)
    if config.mode == "train_then_eval":
        result.update(evaluate_model(config, trained, state.num_classes))
        _add_warnings(config, result, state.num_classes)
    result["train_seconds"] = time.perf_counter() - start
    result["images_per_second"] = state.images_per_second
    curves = history_lib.plot_history(
        state.history, os.path.join(config.model_dir, CURVES_FILENAME)
    )
    if curves:
        result["curves"] = curves
    if config.export:
        result["export_path"] = _export(config, trained, state.step)
    if _is_chief(config):  # workers share model_dir: only the chief writes there
        write_result(config, result)
    return result


def _with_checked_data(config: Config) -> Config:
    """Training: `config` with the identity of its data, to be recorded in config.json, after
    checking it against the run it resumes (refused if other) and noting what a --checkpoint
    was trained on (transfer is allowed). The teacher's is checked where it is loaded."""
    current = run_data.identity_of(config)
    if run_data.has_checkpoints(config.model_dir):
        run_data.check_own_data(config, current, reader="resume")
    elif config.checkpoint and not config.random_init:
        run_data.pretrained_identity(config, current, purpose="fine-tuning")
    _log_unlabelled(config)
    # Files that look whole but do not decode are skipped while reading: not all of them.
    data_lib.check_decodable(
        config.dataset,
        data_dir=config.data_dir,
        split=config.train_split,
        unlabelled=config.unlabelled,
    )
    return config.replace(data_identity=current)


def _log_unlabelled(config: Config) -> None:
    """--unlabelled: how the training data is read, and that the online head is off."""
    if not config.unlabelled:
        return
    root = data_lib.image_folder_root(config.dataset)
    if root is not None:
        log.info("%s", data_lib.describe_unlabelled_folder(root, config.train_split))
    else:
        log.info(
            "Reading split %r of %s as unlabelled images (--unlabelled): labels ignored.",
            config.train_split,
            config.dataset,
        )
    log.info(
        "The online linear head is not trained: the training data has no labels "
        "(--unlabelled switches --lineareval_while_pretraining off)."
    )


def _add_warnings(config: Config, result: dict, num_classes: int) -> None:
    """A fine-tuned or distilled network that ends below its encoder's linear probe, or near
    chance: result["warnings"] names the likely cause and the flags (also logged)."""
    from tf_simclr.workflows.report import weak_result_warnings

    warnings = weak_result_warnings(
        result.get("metrics", {}),
        config,
        num_classes=num_classes,
        total_steps=result.get("total_steps"),
    )
    for warning in warnings:
        log.warning("%s", warning)
    if warnings:
        result["warnings"] = warnings


def _is_chief(config: Config) -> bool:
    return config.strategy != "multi_worker" or distribute.is_chief_task()


def _check_eval_split(config: Config) -> None:
    root = data_lib.image_folder_root(config.dataset)
    if root is not None:
        # Both splits' layout before any training (the eval split is otherwise read after it).
        data_lib.check_image_folder(root, (config.train_split, config.eval_split))
    info = factory.dataset_info(config)
    _check_enough_classes(info.num_classes, config.dataset)
    splits = info.num_examples
    if config.eval_split not in splits:
        raise ValueError(
            f"--eval_split={config.eval_split!r} is not a split of {config.dataset}; "
            f"available: {', '.join(sorted(splits))}."
        )


def _check_evaluation_data(config: Config) -> None:
    """The labelled data the kNN and linear probe read, checked before any training: its
    splits exist and (--eval_dataset) have the same classes, at least 2."""
    target = factory.eval_data_config(config)
    root = data_lib.image_folder_root(target.dataset)
    if config.eval_dataset and root is not None:
        data_lib.check_same_classes(root, (target.train_split, target.eval_split))
    _check_eval_split(target)
    _check_splits_have_labels(config, target)


def _check_splits_have_labels(config: Config, target: Config) -> None:
    """The evaluation split, and the split the kNN bank and the probe are fit on, each hold
    a labelled example (a split of only label -1, as STL-10's "unlabelled", has none): found
    before training, not when its features are extracted after it."""
    of = f" of --eval_dataset={target.dataset}" if config.eval_dataset else ""
    if not _has_labels(target, target.eval_split):
        raise ValueError(
            f"--eval_split={target.eval_split!r}{of} has no labelled example (every label -1): "
            "the accuracies score labelled images. Give a split with labels (e.g. "
            "--eval_split=test)."
        )
    if not (config.knn_eval or config.linear_eval):
        return
    if _has_labels(target, target.train_split):
        return
    if config.eval_dataset:
        flag = f"The 'train' split of --eval_dataset={target.dataset}"
        fix = "Give an --eval_dataset whose train split has labels"
    else:
        flag = f"--train_split={target.train_split!r}"
        fix = (
            "Give --eval_dataset=<labelled data> to fit and score them on, a --train_split "
            "with labels (e.g. 'train' or 'train+unlabelled'), or --mode=train to pretrain "
            "only"
        )
    raise ValueError(
        f"{flag} has no labelled example (every label -1): the kNN bank and the linear probe "
        f"are fit on its labelled images after training. {fix}."
    )


def _has_labels(config: Config, split: str) -> bool:
    return data_lib.has_labelled_example(
        config.dataset, data_dir=config.data_dir, split=split, strict=config.strict_data
    )


def _check_enough_classes(num_classes: int, dataset: str) -> None:
    if num_classes < 2:
        raise ValueError(
            f"{dataset} has {num_classes} class: every accuracy would be 1.0 whatever the "
            "model computes. Evaluate on labelled data with 2 or more classes, or use "
            "--mode=train (pretraining needs no labels)."
        )


def _feature_metrics(
    config: Config,
    model,
    num_classes: int,
    prefix: str = "",
    pictures: bool = False,
    choose_weight_decay: bool = False,
    label_cache: data_lib.LabelCache | None = None,
    head_prefix: str | None = None,
) -> tuple[dict, dict]:
    """kNN and linear-probe accuracy of frozen final_avg_pool features (`choose_weight_decay`:
    the probe's weight decay chosen on held-out training examples, reported as
    "linear_weight_decay"). With `pictures`, the same features also give the nearest-neighbour
    picture and the projector files (written by the chief). With `head_prefix`, the supervised
    head's top-1 (and top-5) on the eval split, from the same pass over it, lead the metrics
    under that prefix. Returns (metrics, {"neighbours": path, "projector": path} as written)."""
    files = {}
    if not (config.knn_eval or config.linear_eval):
        return {}, files
    pictures = pictures and _is_chief(config)
    num_queries = config.neighbour_images if pictures else 0
    num_embeddings = config.projector_embeddings if pictures else 0
    # The test split first: the picture's queries are drawn from it across the classes, and
    # their neighbours then found while the training features stream past.
    first = visualize.FirstExamples(num_embeddings)
    queries = visualize.QueriesAcrossClasses(num_queries, seed=config.seed)
    test_data, info = factory.eval_dataset_and_info(config, config.eval_split, label_cache)
    keys = ("final_avg_pool",) + (("logits_sup",) if head_prefix is not None else ())
    test_outputs, test_y = eval_lib.extract_outputs(
        model, test_data, keys, on_batch=[first, queries]
    )
    test_x = test_outputs["final_avg_pool"]
    head = {}
    if head_prefix is not None:
        scores = eval_lib.logits_accuracy(
            test_outputs["logits_sup"], test_y, source=f"--eval_split={config.eval_split!r}"
        )
        head = {head_prefix + k: v for k, v in scores.items()}
    query_index, query_y, query_images = queries.chosen()
    search = visualize.NeighbourSearch(test_x[query_index]) if len(query_index) else None
    train_x, train_y = eval_lib.extract_features(
        model,
        factory.eval_dataset(config, config.train_split, label_cache),
        on_batch=[search] if search else (),
    )
    # Unlabelled images (label -1) are neither in the kNN bank nor fit nor scored.
    labelled = (
        *eval_lib.labelled_only(train_x, train_y, source=f"--train_split={config.train_split!r}"),
        *eval_lib.labelled_only(test_x, test_y, source=f"--eval_split={config.eval_split!r}"),
    )
    metrics = {**head, **_knn_and_probe(config, labelled, num_classes, prefix, choose_weight_decay)}
    if search is not None:
        files["neighbours"] = visualize.write_neighbours(
            os.path.join(config.model_dir, visualize.NEIGHBOURS_FILENAME),
            search,
            query_images,
            query_y,
            train_y,
        )
        log.info("Wrote %s.", files["neighbours"])
    if num_embeddings:
        count = min(num_embeddings, len(test_x))
        files["projector"] = visualize.write_projector(
            config.model_dir,
            test_x[:count],
            test_y[:count],
            first.thumbnails()[:count],
            info.class_names,
        )
        log.info("Wrote %d embeddings for TensorBoard's projector.", count)
    return metrics, files


def _knn_and_probe(
    config: Config, features: tuple, num_classes: int, prefix: str, choose_weight_decay: bool
) -> dict:
    """kNN and linear-probe metrics of (train features, labels, test features, labels)."""
    train_x, train_y, test_x, test_y = features
    metrics = {}
    if config.knn_eval:
        knn = eval_lib.knn_accuracy(
            train_x,
            train_y,
            test_x,
            test_y,
            num_classes=num_classes,
            k=config.knn_k,
            temperature=config.knn_temperature,
        )
        metrics.update({prefix + k: v for k, v in knn.items()})
    if config.linear_eval:
        probe = dict(num_classes=num_classes, epochs=config.linear_eval_epochs, seed=config.seed)
        weight_decay = eval_lib.LINEAR_WEIGHT_DECAY
        if choose_weight_decay:
            weight_decay, _ = eval_lib.choose_weight_decay(train_x, train_y, **probe)
            metrics[prefix + "linear_weight_decay"] = weight_decay
        linear = eval_lib.linear_eval(
            train_x, train_y, test_x, test_y, weight_decay=weight_decay, **probe
        )
        metrics.update({prefix + k: v for k, v in linear.items()})
    return metrics


def evaluate_model(
    config: Config, model, num_classes: int, *, choose_weight_decay: bool = False
) -> dict:
    """All evaluations that apply to the configured train_mode, plus the random-init baseline
    and its gains (`choose_weight_decay`: see _feature_metrics). Returns {"metrics": {...}} and
    the paths of the pictures written ("neighbours", "projector"). With --eval_dataset, the
    frozen-feature evaluations on that labelled data only (`num_classes` is not used)."""
    if config.eval_dataset:
        return _evaluate_on_eval_dataset(config, model, choose_weight_decay)
    _check_enough_classes(num_classes, config.dataset)
    log.info("Evaluating on split %r.", config.eval_split)
    metrics, files = {}, {}
    # Every evaluation below reads the same class-stratified --eval_steps subsets: choosing
    # them reads each split's labels once.
    label_cache = data_lib.LabelCache()
    head_classes = getattr(getattr(model, "supervised_head", None), "units", None)
    head_fits = head_classes is None or head_classes == num_classes
    if not head_fits:
        log.warning(
            "The supervised head predicts %d classes but %s has %d: its accuracy is not "
            "reported; the frozen features are evaluated (kNN, linear probe) instead.",
            head_classes,
            config.dataset,
            num_classes,
        )
    supervised = config.train_mode in SUPERVISED_TRAIN_MODES
    # One traced inference function for the supervised head's accuracy and the features.
    inference = eval_lib.InferenceFunction(model)
    wants_head = head_fits and (supervised or config.lineareval_while_pretraining)
    head_key = {"finetune": "finetune", "distill": "student"}.get(config.train_mode, "sup_head")
    frozen_features = config.train_mode == "pretrain" or not head_fits
    # Where the frozen features are evaluated, the head's accuracy comes from their pass over
    # the eval split (one read of it instead of two).
    head_with_features = wants_head and frozen_features and (config.knn_eval or config.linear_eval)
    if wants_head and not head_with_features:
        sup = eval_lib.classification_accuracy(
            inference,
            factory.eval_dataset(config, config.eval_split, label_cache),
            source=f"--eval_split={config.eval_split!r}",
        )
        metrics.update({f"{head_key}_{k}": v for k, v in sup.items()})
    if config.train_mode == "distill":
        # The teacher on the same split, in float32 like the student's evaluation (its classes
        # were checked before: run_data.check_teacher).
        teacher = distill_lib.load_teacher(config.teacher, image_size=config.image_size)
        scores = eval_lib.classification_accuracy(
            teacher, factory.eval_dataset(config, config.eval_split, label_cache)
        )
        metrics.update({f"teacher_{k}": v for k, v in scores.items()})
        metrics.update(_teacher_encoder_probe(config))
    if head_fits and config.train_mode == "finetune" and config.checkpoint:
        if not config.random_init:
            metrics.update(_encoder_probe_on_labelled(config, num_classes))
    if frozen_features:
        head_prefix = f"{head_key}_" if head_with_features else None
        features, files = _frozen_feature_metrics(
            config, inference, num_classes, choose_weight_decay, label_cache, head_prefix
        )
        metrics.update(features)
    return {"metrics": metrics, **files}


def _frozen_feature_metrics(
    config: Config,
    model,
    num_classes: int,
    choose_weight_decay: bool,
    label_cache: data_lib.LabelCache | None = None,
    head_prefix: str | None = None,
) -> tuple[dict, dict]:
    """kNN and linear probe of the frozen features (with the pictures; with `head_prefix`, the
    supervised head's accuracy from the same pass: _feature_metrics), and with
    --random_init_baseline the same for random weights and the gains; (metrics, files)."""
    probe = dict(choose_weight_decay=choose_weight_decay, label_cache=label_cache)
    # Traced once for both splits.
    model = eval_lib.as_inference(model)
    metrics, files = _feature_metrics(
        config, model, num_classes, pictures=True, head_prefix=head_prefix, **probe
    )
    if config.random_init_baseline:
        baseline = factory.build_model(config, num_classes)
        # Its own seed, not a global reseed in the middle of the run.
        model_lib.reinitialize(baseline, seed=config.seed + 1)
        baseline = eval_lib.as_inference(baseline)
        random_init, _ = _feature_metrics(config, baseline, num_classes, "random_init_", **probe)
        for name in list(metrics):
            if name.endswith(("_top1", "_top5")) and "random_init_" + name in random_init:
                metrics[name + "_gain"] = metrics[name] - random_init["random_init_" + name]
        metrics.update(random_init)
    return metrics, files


def _evaluate_on_eval_dataset(config: Config, model, choose_weight_decay: bool) -> dict:
    """--eval_dataset: the kNN and linear probe of the frozen features, fit on its "train"
    split and scored on its --eval_split (the online head, if any, predicts the training
    data's classes: not scored here)."""
    target = factory.eval_data_config(config)
    num_classes = factory.dataset_info(target).num_classes
    _check_enough_classes(num_classes, target.dataset)
    log.info(
        "Evaluating the frozen features on --eval_dataset=%s: kNN bank and linear probe from "
        "its split 'train', scored on its split %r.",
        target.dataset,
        target.eval_split,
    )
    metrics, files = _frozen_feature_metrics(target, model, num_classes, choose_weight_decay)
    return {"metrics": metrics, **files}


def _encoder_probe_on_labelled(config: Config, num_classes: int) -> dict:
    """Fine-tuning: the pretrained encoder (--checkpoint) frozen, with a linear probe trained
    on the same labelled images and scored on the eval split, the yardstick fine-tuning must
    beat ("labelled_linear_top1", ...; {} when the checkpoint can no longer be read)."""
    from tf_simclr.workflows.semi_supervised import probe_on_labelled

    try:
        # The pretraining network without a supervised head (its labels are `config`'s).
        frozen = config.replace(
            mode="eval",
            train_mode="pretrain",
            label_fraction=None,
            label_ids_file=None,
            fine_tune_after_block=-1,
            train_batch_size=max(2, config.train_batch_size),
            lineareval_while_pretraining=False,
            num_classes=0,
        )
        model = factory.build_model(frozen, num_classes)
        warm_start.restore_frozen_encoder(frozen, model)
    except (OSError, ValueError) as err:
        log.warning("The pretrained encoder's linear probe is not reported: %s", err)
        return {}
    log.info("Linear probe of the pretrained encoder on the same labelled images.")
    probe = probe_on_labelled(model, config, num_classes)
    return {k: v for k, v in probe.items() if k in PROBE_METRICS}


# The fine-tuning run's metrics that describe its pretrained encoder's linear probe.
PROBE_METRICS = ("labelled_linear_top1", "labelled_linear_top5", "labelled_examples")


def _teacher_encoder_probe(config: Config) -> dict:
    """Distillation from a tf_simclr fine-tuning run: the linear probe of that teacher's
    pretrained encoder on its labelled images, as its result.json reports it for the same
    dataset and eval split ({} otherwise)."""
    directory = os.path.expanduser(config.teacher or "")
    for candidate in (directory, os.path.dirname(directory)):
        path = os.path.join(candidate, RESULT_FILENAME)
        if not os.path.isfile(os.path.join(candidate, CONFIG_FILENAME)):
            continue
        try:
            teacher_config = Config.load(candidate)
            with open(path, encoding="utf-8") as f:
                metrics = json.load(f).get("metrics", {})
        except (OSError, ValueError):
            return {}
        same_data = (teacher_config.dataset, teacher_config.eval_split) == (
            config.dataset,
            config.eval_split,
        )
        if same_data and "labelled_linear_top1" in metrics:
            return {k: metrics[k] for k in PROBE_METRICS if k in metrics}
        return {}
    return {}


def evaluate_checkpoints(config: Config, strategy) -> dict:
    """mode=eval: evaluate the latest checkpoint, or (eval_timeout > 0) each new one as it
    appears until none arrives within eval_timeout seconds. With --checkpoint (and not
    --train_mode=finetune): the frozen features of that model (evaluate_pretrained)."""
    if config.evaluates_checkpoint():
        return evaluate_pretrained(config, strategy)
    current = run_data.identity_of(config)
    run_data.check_own_data(config, current, reader="eval")
    if config.eval_dataset:
        _check_evaluation_data(config)
    if config.train_mode == "distill":  # teacher_top1 is scored against these labels
        run_data.check_teacher(config, current)
    no_run = not (
        os.path.isfile(os.path.join(config.model_dir, CONFIG_FILENAME))
        or ckpt_lib.list_checkpoints(config.model_dir)
    )
    if config.checkpoint and no_run and not config.eval_timeout:
        raise ConfigError(
            f"--mode=eval --train_mode={config.train_mode} evaluates the checkpoints that "
            f"training wrote into --model_dir={config.model_dir}, and it has none. To evaluate "
            f"the frozen features of --checkpoint={config.checkpoint} on --dataset, drop "
            f"--train_mode={config.train_mode}; to train from it first, use "
            "--mode=train_then_eval."
        )
    model, checkpoint, num_classes = _model_and_checkpoint(config, strategy)
    result = {}
    if config.eval_timeout > 0:
        ckpt_lib.check_state_file(config.model_dir)  # the iterator reads it
        for path in tf.train.checkpoints_iterator(config.model_dir, timeout=config.eval_timeout):
            ckpt_lib.validate_checkpoint(path)  # a new checkpoint, not yet checked
            result = _evaluate_one(config, checkpoint, model, num_classes, path)
        if not result:
            raise FileNotFoundError(
                f"No checkpoint appeared in {config.model_dir} within --eval_timeout="
                f"{config.eval_timeout} s."
            )
        return result
    latest = ckpt_lib.latest_valid_checkpoint(config.model_dir)  # skips damaged ones
    return _evaluate_one(config, checkpoint, model, num_classes, latest)


def _check_transfer_output(config: Config) -> None:
    """`--mode=eval --checkpoint` writes result.json and its pictures into --model_dir: not
    into a directory that holds a run (its config.json or checkpoints), whose results those
    would replace or be mistaken for."""
    holds = [
        what
        for what, present in (
            (CONFIG_FILENAME, os.path.isfile(os.path.join(config.model_dir, CONFIG_FILENAME))),
            ("ckpt-* files", bool(ckpt_lib.list_checkpoints(config.model_dir))),
        )
        if present
    ]
    if holds:
        raise ConfigError(
            f"--model_dir={config.model_dir} holds a run ({' and '.join(holds)}), but "
            f"--mode=eval --checkpoint={config.checkpoint} writes the results of evaluating "
            "that model's frozen features into --model_dir. Give a new --model_dir for them "
            "(to evaluate the run in --model_dir itself, drop --checkpoint)."
        )


def evaluate_pretrained(config: Config, strategy) -> dict:
    """`--mode=eval --checkpoint=PRETRAINED --dataset=OTHER`: the frozen features of a
    pretrained model on another dataset, as in the SimCLR transfer evaluation. The network is
    built from the config (the CLI takes its encoder and image size from the checkpoint run's
    config.json) without a supervised head, so the pretrained model's own head, for its own
    classes, is not read; OTHER's images are resized to --image_size. kNN, the linear probe
    (its weight decay chosen on held-out training examples) and the random-init baseline;
    result.json and the pictures go into --model_dir."""
    _, path = warm_start.resolve_checkpoint(config.checkpoint)  # not a model: fail first
    frozen = config.replace(checkpoint=path, lineareval_while_pretraining=False, num_classes=0)
    _check_eval_split(frozen)
    run_data.pretrained_identity(
        config, run_data.identity_of(config), purpose="evaluating its frozen features"
    )
    storage.check_model_dir_writable(config.model_dir)
    num_classes = factory.dataset_info(frozen).num_classes
    with strategy.scope():
        model = factory.build_model(frozen, num_classes)
        path = warm_start.restore_frozen_encoder(frozen, model)
    log.info(
        "Evaluating the frozen features of %s on %s, images resized to %d px.",
        path,
        config.dataset,
        config.image_size,
    )
    result = {
        "step": warm_start.step_of(path),
        "checkpoint": path,
        "image_size": config.image_size,
        **evaluate_model(frozen, model, num_classes, choose_weight_decay=True),
    }
    if _is_chief(config):
        write_result(config, result)
    return result


def _model_and_checkpoint(config: Config, strategy):
    """The configured model (built under `strategy`) and a checkpoint object over its weights."""
    num_classes = factory.dataset_info(config).num_classes
    with strategy.scope():
        model = factory.build_model(config, num_classes)
    return model, ckpt_lib.training_checkpoint(model), num_classes


def _evaluate_one(config, checkpoint, model, num_classes, path) -> dict:
    """Restore an already validated checkpoint `path` and evaluate it."""
    ckpt_lib.check_checkpoint_fits(path, model)
    checkpoint.restore(path).expect_partial()  # the optimizer state is not needed here
    step = int(path.rsplit("-", 1)[-1])
    log.info("Evaluating %s.", path)
    result = {"step": step, "checkpoint": path, **evaluate_model(config, model, num_classes)}
    if not config.eval_timeout:  # the finished network, not one of a run still training
        _add_warnings(config, result, num_classes)
    write_result(config, result)
    return result


def _export(config: Config, model, step: int) -> str:
    from tf_simclr.workflows import export as export_lib

    path = export_lib.export_saved_model(
        model,
        os.path.join(config.model_dir, "saved_model"),
        step=step,
        keep_max=config.keep_hub_module_max,
    )
    log.info("Exported SavedModel to %s.", path)
    return path


def export_latest(config: Config, strategy) -> str:
    """mode=export: restore the latest intact checkpoint and export it."""
    model, checkpoint, _ = _model_and_checkpoint(config, strategy)
    latest = ckpt_lib.latest_valid_checkpoint(config.model_dir)  # skips damaged ones
    ckpt_lib.check_checkpoint_fits(latest, model)
    checkpoint.restore(latest).expect_partial()  # the optimizer state is not needed here
    return _export(config, model, int(latest.rsplit("-", 1)[-1]))


def preview(config: Config) -> str:
    """mode=preview: a PNG grid of sample images and their two augmented views."""
    from tf_simclr.evaluation import preview as preview_lib

    os.makedirs(config.model_dir, exist_ok=True)
    path = os.path.join(config.model_dir, "preview.png")
    preview_lib.write_preview(
        path,
        dataset=config.dataset,
        data_dir=config.data_dir,
        split=config.train_split,
        image_size=config.image_size,
        augmentations=config.augmentation_spec(),
        color_jitter_strength=config.color_jitter_strength,
        brightness=config.brightness,
        seed=config.seed,
        unlabelled=config.unlabelled,
    )
    log.info("Wrote %s.", path)
    return path


def write_result(config: Config, result: dict) -> str:
    """result.json in model_dir (atomic), with the config hash identifying the run."""
    payload = {"config_hash": config.hash(), "dataset": config.dataset, **result}
    if config.eval_dataset:
        payload["eval_dataset"] = config.eval_dataset
    path = os.path.join(config.model_dir, RESULT_FILENAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=float)
        f.write("\n")
    os.replace(tmp, path)
    return path
