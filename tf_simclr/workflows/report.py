"""The summary a run ends with: its metrics as one table (with the gains over random weights)
and where its outputs are. `tf-simclr` prints it to stdout; library users can print
`format_report(runner.run(config), config)` the same way."""

from __future__ import annotations

import os

from tf_simclr.config import MODE_DEFAULTS, RESULT_FILENAME, Config, mode_defaults_key
from tf_simclr.training.budget import describe_result as describe_budget

# Row order and names of the metrics tf_simclr.workflows.runner reports; any other metric follows
# under its own name.
_METRIC_LABELS = {
    "linear_top1": "linear probe top-1",
    "linear_top5": "linear probe top-5",
    "knn_top1": "kNN top-1",
    "knn_top5": "kNN top-5",
    "sup_head_top1": "supervised head top-1",
    "sup_head_top5": "supervised head top-5",
    "finetune_top1": "fine-tuned top-1",
    "finetune_top5": "fine-tuned top-5",
    "student_top1": "distilled student top-1",
    "student_top5": "distilled student top-5",
    "teacher_top1": "teacher top-1",
    "teacher_top5": "teacher top-5",
    "labelled_linear_top1": "pretrained encoder, linear probe on the labelled images top-1",
    "labelled_linear_top5": "pretrained encoder, linear probe on the labelled images top-5",
    "labelled_examples": "labelled images",
    "linear_train_loss": "linear probe final loss",
    "linear_weight_decay": "linear probe weight decay (chosen)",
}
_BASELINE = "random_init_"
_GAIN = "_gain"


def _is_accuracy(name: str) -> bool:
    return name.endswith(("_top1", "_top5"))


def _value(name: str, value: float) -> str:
    if name == "labelled_examples":
        return f"{int(value):,}"
    if name.endswith("weight_decay"):
        return f"{value:g}"
    return f"{100 * value:.1f}%" if _is_accuracy(name) else f"{value:.4f}"


def metrics_table(metrics: dict[str, float], *, knn_k: int | None = None) -> list[str]:
    """Lines of a table: one row per metric; with a random-init baseline in `metrics`
    ("random_init_<name>"), its value and the gain ("<name>_gain", in points) alongside."""
    names = [n for n in metrics if not n.startswith(_BASELINE) and not n.endswith(_GAIN)]
    order = list(_METRIC_LABELS)
    names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
    with_baseline = any(_BASELINE + n in metrics for n in names)
    header = ["metric", "trained"] + (["random init", "gain"] if with_baseline else [])
    rows = []
    for name in names:
        label = _METRIC_LABELS.get(name, name)
        if knn_k is not None and name.startswith("knn_"):
            label += f" (k={knn_k})"
        row = [label, _value(name, metrics[name])]
        if with_baseline:
            baseline = metrics.get(_BASELINE + name)
            gain = metrics.get(name + _GAIN)
            row.append("" if baseline is None else _value(name, baseline))
            row.append("" if gain is None else f"{100 * gain:+.1f} points")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  " + "   ".join([first, *rest]).rstrip()

    return [line(header), *(line(row) for row in rows)]


# A network this close to chance (x 1/classes) learned next to nothing: 15% for 10 classes.
NEAR_CHANCE_FACTOR = 1.5
_TRAINED = {
    "finetune": ("finetune_top1", "fine-tuned network"),
    "distill": ("student_top1", "distilled student"),
}


def weak_result_warnings(
    metrics: dict[str, float], config: Config, *, num_classes: int, total_steps: int | None = None
) -> list[str]:
    """Warnings for a fine-tuned or distilled network whose top-1 ends near chance or below
    the pretrained encoder's linear probe on the same labelled images ("labelled_linear_top1";
    for distillation, the teacher's run's), naming the likely cause and the flags to change."""
    if config.train_mode not in _TRAINED:
        return []
    key, what = _TRAINED[config.train_mode]
    top1 = metrics.get(key)
    if top1 is None or num_classes < 2:
        return []
    chance = 1.0 / num_classes
    probe = metrics.get("labelled_linear_top1")
    if top1 < NEAR_CHANCE_FACTOR * chance:
        problem = f"is near chance ({100 * chance:.1f}% for {num_classes} classes)"
    elif probe is not None and top1 < probe:
        labelled = metrics.get("labelled_examples")
        on = f"the same {int(labelled):,} labelled images" if labelled else "the labelled images"
        problem = f"is below the pretrained encoder's linear probe on {on} ({100 * probe:.1f}%)"
    else:
        return []
    teacher = metrics.get("teacher_top1")
    teacher_problem = None
    if teacher is not None and teacher < NEAR_CHANCE_FACTOR * chance:
        teacher_problem = "near chance"
    elif teacher is not None and probe is not None and teacher < probe:
        teacher_problem = "below that probe"
    if config.train_mode == "distill" and teacher_problem:
        return [
            f"The {what}'s top-1 ({100 * top1:.1f}%) {problem}; its teacher's is "
            f"{100 * teacher:.1f}%, itself {teacher_problem}: the student learns what the "
            "teacher knows. Fine-tune the "
            "teacher again (--train_mode=finetune with the fine-tuning defaults, and check that "
            "it ends above its encoder's linear probe), then distil it."
        ]
    defaults = MODE_DEFAULTS[mode_defaults_key(config.train_mode, config.random_init)]
    longer = f"a longer --train_epochs (default: {defaults['train_epochs']:g})"
    if config.train_minutes is not None:
        schedule, longer = f"--train_minutes={config.train_minutes:g}", "a larger --train_minutes"
    elif config.train_steps > 0:
        schedule = f"--train_steps={config.train_steps}"
    else:
        schedule = f"{config.train_epochs:g} epochs"
    if total_steps:
        schedule += f" = {total_steps} steps"
    if config.train_mode == "finetune":
        rate = "too high a rate wipes out what the pretrained encoder knew"
        over, change = "labelled images", "a lower"
    else:
        rate = "the student learns from random weights"
        over, change = "training images", "another"
    return [
        f"The {what}'s top-1 ({100 * top1:.1f}%) {problem}. Likely causes: the learning rate "
        f"(base {config.learning_rate:g}; {rate}) or a schedule too short for the {over} "
        f"({schedule}). Try {change} --learning_rate (this mode's default: "
        f"{defaults['learning_rate']:g}) and {longer}."
    ]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _has_event_files(model_dir: str) -> bool:
    try:
        return any(n.startswith("events.out.tfevents") for n in os.listdir(model_dir))
    except OSError:  # not a local directory (gs://...): TensorBoard may still read it
        return True


def _nothing_evaluated(config: Config) -> str:
    """What an unlabelled --mode=train run says instead of a results table."""
    if config.eval_dataset:
        return (
            "Nothing was evaluated (--mode=train): the training data has no labels "
            f"(--unlabelled). tf-simclr --mode=eval --model_dir={config.model_dir} scores its "
            f"features with a kNN and a linear probe on --eval_dataset={config.eval_dataset}."
        )
    return (
        "Nothing could be evaluated: the training data has no labels (--unlabelled), and the "
        "kNN and linear probe need labelled images. --eval_dataset=<labelled data> adds the "
        f"evaluation: tf-simclr --mode=eval --model_dir={config.model_dir} "
        "--eval_dataset=<labelled data> for this run, or --mode=train_then_eval "
        "--eval_dataset=<labelled data> next time."
    )


def format_report(result: dict, config: Config) -> str:
    """The end-of-run summary of `result` (what tf_simclr.workflows.runner.run returned)."""
    lines = []
    if "step" in result:
        line = f"Step {result['step']}"
        if result.get("total_steps"):
            line += f" of {result['total_steps']}"
        if result.get("train_seconds") is not None:
            line += f"; training and evaluation took {_duration(result['train_seconds'])}"
        if result.get("images_per_second"):
            line += f" (training {result['images_per_second']:.0f} images/s"
            line += f" in {result['precision']})" if result.get("precision") else ")"
        lines.append(line + ".")
    if result.get("budget"):
        lines.append(describe_budget(result["budget"]))
    if "table" in result:
        from tf_simclr.workflows.semi_supervised import table_lines

        lines.append(
            f"Semi-supervised recipe, {result.get('labelled_examples')} labelled training "
            f"images; top-1 on split {config.eval_split!r} of {config.dataset}:"
        )
        lines += table_lines(result)
    if config.evaluates_checkpoint() and result.get("checkpoint"):
        lines.append(
            f"Frozen features of {result['checkpoint']}, images at {config.image_size} px."
        )
    if result.get("embeddings"):
        shape = "x".join(str(d) for d in result["shape"])
        # An unlabelled folder is read whole when it has no folder named --eval_split.
        read = (
            f"at any depth under {result['folder']} (unlabelled)"
            if result.get("folder") and not result.get("labelled")
            else f"of split {result['split']!r} of {result['dataset']}"
        )
        lines.append(
            f"Embeddings ({result['output']}, {shape} each) of {result['count']} images "
            f"{read}; {result['bad_images']} unreadable image(s) skipped."
        )
    metrics = result.get("metrics")
    if metrics:
        evaluated_on = config.eval_dataset or config.dataset
        lines.append(f"Results on split {config.eval_split!r} of {evaluated_on}:")
        lines += metrics_table(metrics, knn_k=config.knn_k if config.knn_eval else None)
    elif "step" in result and config.unlabelled and config.mode == "train":
        lines.append(_nothing_evaluated(config))
    for warning in result.get("warnings", ()):
        lines.append(f"WARNING: {warning}")
    files = [
        ("exported module", result.get("export_path")),
        ("training curves", result.get("curves")),
        ("nearest neighbours", result.get("neighbours")),
        ("projector embeddings", result.get("projector")),
        ("augmentation preview", result.get("preview")),
        ("semi-supervised chart", result.get("chart")),
        ("embeddings", result.get("embeddings")),
        # Train and eval runs write it (a preview leaves an older one alone).
        (
            "result",
            os.path.join(config.model_dir, RESULT_FILENAME)
            if "step" in result or "table" in result
            else None,
        ),
    ]
    files = [(what, path) for what, path in files if path and os.path.exists(path)]
    if files:
        width = max(len(what) for what, _ in files)
        lines.append(f"Outputs in {config.model_dir}:")
        lines += [f"  {what.ljust(width)}   {path}" for what, path in files]
    board = config.summaries and config.mode != "embed" and _has_event_files(config.model_dir)
    if result.get("projector") or board:
        lines.append(f"TensorBoard: tensorboard --logdir {config.model_dir}")
    return "\n".join(lines)
