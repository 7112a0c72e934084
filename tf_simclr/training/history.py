"""The training curves: metrics.jsonl (one record per logging interval, kept consistent with
the checkpoint a run resumes from) and the training_curves.png plot."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"


def append_metrics(model_dir: str, record: dict) -> None:
    """Append one record (a JSON line) to model_dir/metrics.jsonl."""
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


def truncate_history(model_dir: str, step: int) -> None:
    """Drop logged records newer than the checkpoint we resume from, so curves have no repeats."""
    kept = [r for r in read_history(model_dir) if r["step"] <= step]
    path = os.path.join(model_dir, METRICS_FILENAME)
    if os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, path)


def save_figure(fig, path: str) -> None:
    """Writes the matplotlib `fig` as a PNG at `path` through a temporary file renamed into
    place (a reader never sees half a picture), then closes it."""
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def plot_history(history: list[dict], path: str) -> str | None:
    """A PNG of the training curves; returns its path (None when there is nothing to plot)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    panels = [
        ("loss", ["loss", "contrastive_loss", "sup_loss", "distill_loss"]),
        ("accuracy", ["contrastive_acc", "sup_acc", "teacher_agreement"]),
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
    save_figure(fig, path)
    return path
