"""`--mode=semi_supervised`: SimCLRv2's recipe in one command, and the table that judges it.

Stages, each an ordinary tf_simclr run in its own subfolder of model_dir (so each resumes,
exports and can be evaluated on its own):

1. ``pretrain/``: contrastive pretraining on every training image, without labels (then the
   usual kNN / linear-probe evaluation with all labels).
2. ``finetune/``: the pretrained network fine-tuned on the labelled subset
   (--label_fraction or --label_ids_file), from projection-head layer --ft_proj_selector.
3. ``distill/``: a student of the same architecture, from random weights, distilled from the
   fine-tuned network on every training image (--distill_temperature, --distill_alpha).

A training split with unlabelled images (label -1, e.g. STL-10's --train_split=
train+unlabelled) works as the paper means it: pretraining and distillation use every image
(the teacher labels the unlabelled ones), while the labelled subset, the baseline and the
probes are drawn from the labelled images only (--label_fraction is a fraction of those).
4. ``supervised/``: the same architecture trained from scratch on the labelled subset only.

The table compares, on the eval split: the supervised baseline, the pretrained encoder's
linear probe trained on the same labelled subset (the one the fine-tuning stage reports), the
fine-tuned network and the distilled student. A stage whose folder already holds the result of the same settings is not rerun; one
whose folder holds a run of other settings is refused, naming them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

from tf_simclr import data as data_lib
from tf_simclr import factory
from tf_simclr.config import (
    CONFIG_FILENAME,
    RECIPE_FIELDS,
    RESULT_FILENAME,
    Config,
    ConfigError,
    changed_settings,
)
from tf_simclr.evaluation import evaluate as eval_lib
from tf_simclr.training import checkpoints as ckpt_lib
from tf_simclr.training import history as history_lib
from tf_simclr.workflows import run_data

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune", "distill", "supervised")
# The stage each one starts from (the baseline starts from nothing).
BUILT_ON = {"finetune": "pretrain", "distill": "finetune"}
TABLE_FILENAME = "semi_supervised.png"
# (row key, label, stage, metric of that stage's result)
ROWS = (
    ("supervised", "supervised from scratch", "supervised", "finetune_top1"),
    # The fine-tuning stage reports its pretrained encoder's probe on the same labelled images
    # (tf_simclr.workflows.runner), the yardstick fine-tuning must beat.
    ("linear_probe", "pretrained, linear probe", "finetune", "labelled_linear_top1"),
    ("finetuned", "pretrained, fine-tuned (teacher)", "finetune", "finetune_top1"),
    ("distilled", "distilled student", "distill", "student_top1"),
)


def stage_configs(config: Config) -> dict[str, Config]:
    """The Config of each stage, derived from the recipe's `config`."""
    root = config.model_dir
    labels = dict(label_fraction=config.label_fraction, label_ids_file=config.label_ids_file)
    no_labels = dict(label_fraction=None, label_ids_file=None)
    # The recipe's own settings are reset in the stages (each stage's config.json keeps the
    # settings it ran with; the stage fields below carry what the recipe's settings say).
    defaults = Config.__dataclass_fields__
    common = dict(
        mode="train_then_eval",
        checkpoint=None,
        teacher=None,
        random_init=False,
        **{name: defaults[name].default for name in RECIPE_FIELDS},
    )
    # A stage with its own schedule flag (--semi_finetune_epochs, --semi_distill_epochs > 0)
    # takes its schedule from it alone: --train_steps and --train_epochs are pretraining's (and
    # distillation's without --semi_distill_epochs). `stage_notes` says so in the log.
    supervised_schedule = dict(
        train_epochs=config.semi_finetune_epochs,
        train_steps=0,
        # A few epochs of few labelled images: warm up over at most a tenth of them.
        warmup_epochs=min(config.warmup_epochs, 0.1 * config.semi_finetune_epochs),
        train_batch_size=config.semi_finetune_batch_size or config.train_batch_size,
    )
    distill_schedule = (
        dict(train_epochs=config.semi_distill_epochs, train_steps=0)
        if config.semi_distill_epochs
        else {}
    )

    distillation = {
        name: defaults[name].default for name in ("distill_temperature", "distill_alpha")
    }

    def stage(name: str, **changes) -> Config:
        # Distillation's settings shape the distill stage only.
        only_there = {} if name == "distill" else distillation
        path = os.path.join(root, name)
        return config.replace(**{**common, **only_there, "model_dir": path, **changes})

    return {
        "pretrain": stage("pretrain", **no_labels, train_mode="pretrain"),
        "finetune": stage(
            "finetune",
            **labels,
            **supervised_schedule,
            train_mode="finetune",
            checkpoint=os.path.join(root, "pretrain"),
            learning_rate=config.semi_finetune_learning_rate,
        ),
        "distill": stage(
            "distill",
            **labels,
            train_mode="distill",
            teacher=os.path.join(root, "finetune"),
            **distill_schedule,
        ),
        "supervised": stage(
            "supervised", **labels, **supervised_schedule, train_mode="finetune", random_init=True
        ),
    }


# (stages, setting, what sets it there instead of the recipe's flag)
_STAGE_SETTINGS = (
    (("finetune", "supervised"), "train_epochs", "--semi_finetune_epochs"),
    (("finetune", "supervised"), "train_steps", "its schedule is --semi_finetune_epochs"),
    (("finetune", "supervised"), "warmup_epochs", "at most a tenth of --semi_finetune_epochs"),
    (("finetune", "supervised"), "train_batch_size", "--semi_finetune_batch_size"),
    (("finetune",), "learning_rate", "--semi_finetune_learning_rate"),
    (("distill",), "train_epochs", "--semi_distill_epochs"),
    (("distill",), "train_steps", "its schedule is --semi_distill_epochs"),
    (("pretrain",), "label_fraction", "pretraining uses no labels"),
    (("pretrain",), "label_ids_file", "pretraining uses no labels"),
    (("pretrain", "finetune", "supervised"), "distill_temperature", "distillation's only"),
    (("pretrain", "finetune", "supervised"), "distill_alpha", "distillation's only"),
)


def stage_notes(config: Config, stage: str, stage_config: Config) -> list[str]:
    """The recipe's settings that `stage` replaces or ignores, each with the reason."""
    return [
        f"--{name}={getattr(config, name)!r} is {getattr(stage_config, name)!r} here ({why})"
        for stages, name, why in _STAGE_SETTINGS
        if stage in stages and getattr(stage_config, name) != getattr(config, name)
    ]


def check_stages_fit_data(config: Config, configs: dict[str, Config]) -> dict[str, int]:
    """Before the first stage: the labelled subset (logged per class) and every stage's batch
    against the examples it trains on, so that no setting is found wrong after pretraining
    (whose finished folder would then refuse other settings). Raises ConfigError naming the
    stage and the flag to change; returns {class name: labelled examples}."""
    counts, total = data_lib.labelled_class_counts(
        config.dataset,
        config.data_dir,
        config.train_split,
        config.label_fraction,
        config.label_ids_file,
        config.seed,
        config.strict_data,
    )
    labelled = sum(counts.values())
    if labelled == 0:
        raise ConfigError(
            f"--train_split={config.train_split!r} has no labelled image in the labelled subset "
            f"({total} images, every one with label -1 or none listed): fine-tuning needs "
            "labels. Give a split that holds labelled images (e.g. 'train' or "
            "'train+unlabelled'), or other --label_ids_file entries."
        )
    log.info(
        "Labelled subset: %d of the %d training examples; per class: %s.",
        labelled,
        total,
        _per_class(counts),
    )
    unseen = [name for name, n in counts.items() if n == 0]
    if unseen:
        log.warning(
            "No labelled example of class(es) %s: fine-tuning and the baseline never see "
            "them, and the distilled student learns them from the teacher alone.",
            ", ".join(unseen),
        )
    examples = {"pretrain": total, "distill": total, "finetune": labelled, "supervised": labelled}
    for stage in STAGES:
        batch = configs[stage].train_batch_size
        if batch <= examples[stage]:
            continue
        if stage in ("finetune", "supervised"):
            raise ConfigError(
                f"Stage {stage}: its batch of {batch} is larger than the {labelled} labelled "
                f"examples. Give --semi_finetune_batch_size={_largest_fitting(labelled)} (or "
                "smaller): the batch of fine-tuning and of the baseline; pretraining and "
                f"distillation keep --train_batch_size={config.train_batch_size}."
            )
        raise ConfigError(
            f"Stage {stage}: --train_batch_size={batch} is larger than the {total} training "
            f"examples of split {config.train_split!r}: lower --train_batch_size."
        )
    return counts


def _per_class(counts: dict[str, int], shown: int = 20) -> str:
    """Every class's count, or for many classes the range and the fewest (a readable line)."""
    if len(counts) <= shown:
        return ", ".join(f"{name} {n}" for name, n in counts.items())
    fewest = sorted(counts.items(), key=lambda item: item[1])[:5]
    return (
        f"{min(counts.values())} to {max(counts.values())} over {len(counts)} classes "
        f"(fewest: {', '.join(f'{name} {n}' for name, n in fewest)})"
    )


def _largest_fitting(count: int) -> int:
    """The largest power of two (at least 1) that is at most `count`."""
    return 1 << max(0, count.bit_length() - 1)


class StageMismatchError(ConfigError):
    """A stage's folder holds a run of other settings (or one older than the stage before)."""


def _finished_result(config: Config) -> dict | None:
    """The result.json a finished run of exactly these settings left in its model_dir."""
    path = os.path.join(config.model_dir, RESULT_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    done = result.get("config_hash") == config.hash() and result.get("step") == result.get(
        "total_steps"
    )
    return result if done and "metrics" in result else None


def _built_on(stage: str) -> list[str]:
    """The stages that start, directly or not, from `stage`."""
    direct = [later for later, base in BUILT_ON.items() if base == stage]
    return direct + [s for d in direct for s in _built_on(d)]


def _check_stage_folder(stage: str, config: Config) -> None:
    """Refuse to run a stage over a folder that holds a run of other settings: the training
    loop would resume (or find finished) that run, and the table would report it."""
    if not os.path.isfile(os.path.join(config.model_dir, CONFIG_FILENAME)):
        return
    saved = Config.load(config.model_dir)
    changes = {
        name: values
        for name, values in changed_settings(saved, config).items()
        # The saved one is the policy "auto" resolved to.
        if not (name == "precision" and config.precision == "auto")
    }
    if changes:
        listed = "; ".join(
            f"--{k}: {old!r} there, {new!r} now" for k, (old, new) in changes.items()
        )
        raise StageMismatchError(
            f"Stage {stage}: {config.model_dir} holds a run with other settings ({listed}). "
            "Delete that folder to rerun the stage (and the stages after it) with the new "
            "settings, or give a new --model_dir."
        )


def labelled_linear_probe(pretrain: Config, labelled: Config) -> dict[str, float]:
    """Linear probe of the pretrained encoder (newest checkpoint of `pretrain`) trained on the
    labelled subset `labelled` names and scored on the eval split."""
    info = factory.dataset_info(pretrain)
    model = factory.build_model(pretrain, info.num_classes)
    prefix = ckpt_lib.latest_valid_checkpoint(pretrain.model_dir)
    ckpt_lib.check_checkpoint_fits(prefix, model)
    ckpt_lib.training_checkpoint(model).restore(prefix).expect_partial()
    return probe_on_labelled(model, labelled, info.num_classes)


def probe_on_labelled(model, labelled: Config, num_classes: int) -> dict[str, float]:
    """Linear probe of `model`'s frozen features trained on the labelled subset of `labelled`'s
    training split (--label_fraction / --label_ids_file) and scored on its eval split:
    {"labelled_linear_top1", "labelled_linear_top5", ..., "labelled_examples"}."""
    indices = data_lib.labelled_subset_indices(
        labelled.dataset,
        labelled.data_dir,
        labelled.train_split,
        labelled.label_fraction,
        labelled.label_ids_file,
        labelled.seed,
        labelled.strict_data,
    )
    train_data, _ = data_lib.build_eval_dataset(
        labelled.dataset,
        data_dir=labelled.data_dir,
        split=labelled.train_split,
        batch_size=labelled.eval_batch_size,
        image_size=labelled.image_size,
        strict=labelled.strict_data,
        indices=indices,
    )
    train_x, train_y = eval_lib.labelled_only(
        *eval_lib.extract_features(model, train_data),
        source=f"--train_split={labelled.train_split!r}",
    )
    test_x, test_y = eval_lib.labelled_only(
        *eval_lib.extract_features(model, factory.eval_dataset(labelled, labelled.eval_split)),
        source=f"--eval_split={labelled.eval_split!r}",
    )
    probe = eval_lib.linear_eval(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        epochs=labelled.linear_eval_epochs,
        seed=labelled.seed,
    )
    return {"labelled_" + k: v for k, v in probe.items()} | {"labelled_examples": len(train_x)}


def run_recipe(config: Config, run_stage: Callable[[Config], dict]) -> dict:
    """Run (or pick up) every stage with `run_stage` (tf_simclr.workflows.runner.run) and return
    {"stages": {stage: result}, "table": {row: top-1}, "chart": path}."""
    configs = stage_configs(config)
    current = run_data.identity_of(config)
    check_stages_fit_data(config, configs)
    for stage in STAGES:  # a stage trained on other data is neither reused nor resumed
        if run_data.has_checkpoints(configs[stage].model_dir):
            run_data.check_own_data(configs[stage], current, reader="stage")
    os.makedirs(config.model_dir, exist_ok=True)
    config.replace(data_identity=current).save()
    results = {}
    for number, stage in enumerate(STAGES, 1):
        stage_config = configs[stage]
        for note in stage_notes(config, stage, stage_config):
            log.info("Stage %s: %s.", stage, note)
        done = _finished_result(stage_config)
        if done is not None:
            log.info(
                "Stage %d/%d, %s: done before (%s).",
                number,
                len(STAGES),
                stage,
                stage_config.model_dir,
            )
            results[stage] = done
        else:
            _check_stage_folder(stage, stage_config)
            for later in _built_on(stage):
                if _finished_result(configs[later]) is not None:
                    raise StageMismatchError(
                        f"Stage {stage} is to run, but {configs[later].model_dir} holds a "
                        f"finished {later} stage built on the earlier {stage} stage. Delete "
                        "it too, or give a new --model_dir."
                    )
            log.info("Stage %d/%d, %s, in %s.", number, len(STAGES), stage, stage_config.model_dir)
            results[stage] = run_stage(stage_config)
    table = {
        key: results[stage]["metrics"][metric]
        for key, _, stage, metric in ROWS
        if metric in results[stage].get("metrics", {})
    }
    teacher = results["distill"]["metrics"].get("teacher_top1")
    result = {
        "stages": {s: _summary(r) for s, r in results.items()},
        "table": table,
        "teacher_top1_in_distill_run": teacher,
        "labelled_examples": results["finetune"]["metrics"].get("labelled_examples"),
        "label_fraction": config.label_fraction,
    }
    result["chart"] = write_chart(
        os.path.join(config.model_dir, TABLE_FILENAME), table, title=_title(config)
    )
    return result


def _summary(result: dict) -> dict:
    keep = ("step", "total_steps", "train_seconds", "images_per_second", "precision", "metrics")
    return {k: result[k] for k in keep if k in result}


def _title(config: Config) -> str:
    labels = (
        f"{100 * config.label_fraction:g}% of the labels"
        if config.label_fraction is not None
        else f"labels of {os.path.basename(config.label_ids_file)}"
    )
    return f"{config.dataset}, {labels}: test top-1"


def table_lines(result: dict) -> list[str]:
    """The recipe's table as text lines (for the end-of-run report)."""
    table = result.get("table", {})
    rows = [(label, table[key]) for key, label, _, _ in ROWS if key in table]
    if not rows:
        return []
    width = max(len(label) for label, _ in rows)
    lines = [f"  {'network'.ljust(width)}   top-1"]
    lines += [f"  {label.ljust(width)}   {100 * value:5.1f}%" for label, value in rows]
    return lines


def write_chart(path: str, table: dict[str, float], *, title: str) -> str | None:
    """A PNG bar chart of the table's top-1 accuracies (written atomically)."""
    rows = [(label, table[key]) for key, label, _, _ in ROWS if key in table]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [label for label, _ in rows]
    values = [100 * value for _, value in rows]
    bars = ax.barh(
        labels[::-1],
        values[::-1],
        color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"][: len(rows)][::-1],
    )
    for bar, value in zip(bars, values[::-1], strict=True):
        ax.text(
            bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{value:.1f}%", va="center"
        )
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    history_lib.save_figure(fig, path)
    return path
