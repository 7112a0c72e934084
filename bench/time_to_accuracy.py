"""Time to accuracy: kNN top-1 against minutes of training for a recipe and a time budget.

    python bench/time_to_accuracy.py --minutes=30 --eval_split=heldout \
        --dataset=/tmp/cifar_heldout --out=/tmp/tta_cifar30
    python bench/time_to_accuracy.py --minutes=0.5 --eval_split=test --out=/tmp/tta_smoke \
        -- --width_multiplier=0.125 --image_size=16 --train_batch_size=64   # a smoke test

1. Trains `tf-simclr --recipe=RECIPE --mode=train --train_minutes=MINUTES` (the flags after
   `--` are passed on and override the recipe) into OUT/run, with --checkpoint_minutes at
   MINUTES / --points so that checkpoints are kept at about 1/4, 1/2, 3/4 of the budget and
   at its end. A run already in OUT/run resumes (or, finished, is only read).
2. Evaluates the frozen features of each kept checkpoint with the kNN protocol
   (`--mode=eval --checkpoint=OUT/run/ckpt-N`, --knn_k and --knn_temperature as the defaults)
   on --eval_split, which must be given: choose recipes on a held-out split of the training
   images (bench/finetune_defaults.py prepare makes one), report the test split once.
3. Writes OUT/time_to_accuracy.csv (one row per checkpoint: training minutes from the run's
   metrics.jsonl, step, kNN top-1, with the budget, the CPU and the 5-minute load average at
   the end of training) and OUT/time_to_accuracy.png (kNN top-1 against minutes), and prints
   the rows.

Minutes are the run's own training time (tf_simclr.training.budget: from the start of the
training loop, with tracing and checkpoint saves; not the evaluation). On a shared machine
(load average above the core count) they are longer than on an idle one: compare recipes on
runs made under the same load.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

from default_run import cpu_model  # noqa: E402

from tf_simclr.training.history import save_figure  # noqa: E402

CSV_NAME = "time_to_accuracy.csv"
PNG_NAME = "time_to_accuracy.png"
COLUMNS = [
    "minutes",
    "step",
    "knn_top1",
    "budget_minutes",
    "recipe",
    "dataset",
    "eval_split",
    "cpu",
    "load_average_5min",
    "date",
]


def _tf_simclr(args: list[str]) -> None:
    """Run the tf-simclr command of this checkout; SystemExit naming it if it fails."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "tf_simclr", *args]
    proc = subprocess.run(command, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit code {proc.returncode}); see above.")


def _data_flags(args) -> list[str]:
    flags = [f"--dataset={args.dataset}", f"--train_split={args.train_split}"]
    flags.append(f"--eval_split={args.eval_split}")
    return flags + ([f"--data_dir={args.data_dir}"] if args.data_dir else [])


def train(args, run_dir: str, extra: list[str]) -> None:
    """The budget run, with a checkpoint kept at each 1/points of the budget."""
    _tf_simclr(
        [
            f"--recipe={args.recipe}",
            "--mode=train",
            f"--train_minutes={args.minutes:g}",
            f"--checkpoint_minutes={args.minutes / args.points:g}",
            f"--keep_checkpoint_max={args.points + 2}",
            "--noexport",
            f"--model_dir={run_dir}",
            *_data_flags(args),
            *extra,
        ]
    )


def checkpoint_minutes(run_dir: str) -> dict[int, float]:
    """{step: training minutes} of the checkpoints kept in `run_dir` (their metrics.jsonl
    records hold the training time at each loop's end, where checkpoints are saved)."""
    seconds = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                seconds[record["step"]] = record.get("train_seconds")
    steps = sorted(
        int(name[len("ckpt-") : -len(".index")])
        for name in os.listdir(run_dir)
        if name.startswith("ckpt-") and name.endswith(".index")
    )
    missing = [step for step in steps if seconds.get(step) is None]
    if missing:
        raise SystemExit(
            f"{run_dir}/metrics.jsonl has no training time for checkpoint(s) {missing}: the "
            "run was made by a tf_simclr without training times; use a new --out."
        )
    return {step: seconds[step] / 60 for step in steps}


def knn_top1(args, run_dir: str, step: int, eval_root: str) -> float:
    """kNN top-1 of checkpoint `step`'s frozen features on --eval_split (read from an earlier
    evaluation's result.json when there is one)."""
    out = os.path.join(eval_root, f"ckpt-{step}")
    result = os.path.join(out, "result.json")
    if not os.path.isfile(result):
        _tf_simclr(
            [
                "--mode=eval",
                f"--checkpoint={os.path.join(run_dir, f'ckpt-{step}')}",
                f"--model_dir={out}",
                *_data_flags(args),
                "--nolinear_eval",
                "--norandom_init_baseline",
                "--neighbour_images=0",
                "--projector_embeddings=0",
                "--nosummaries",
                *args.eval_flag,
            ]
        )
    with open(result, encoding="utf-8") as f:
        return json.load(f)["metrics"]["knn_top1"]


def write_csv(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_png(path: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = rows[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["minutes"] for r in rows], [100 * r["knn_top1"] for r in rows], "o-")
    ax.set_xlim(0, max(first["budget_minutes"], max(r["minutes"] for r in rows)) * 1.05)
    ax.set_xlabel("training minutes")
    ax.set_ylabel(f"kNN top-1 on {first['eval_split']!r} (%)")
    ax.set_title(
        f"{first['recipe']}, {first['budget_minutes']:g} min budget, {first['dataset']}\n"
        f"{first['cpu']}, load average {first['load_average_5min']:.1f}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str]) -> int:
    own, extra = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :])
        if "--" in argv
        else (
            argv,
            [],
        )
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="The time budget.")
    parser.add_argument(
        "--eval_split",
        required=True,
        help="The split kNN is scored on (a held-out split to choose recipes; test once).",
    )
    parser.add_argument("--recipe", default="cifar10_paper", help="A tf-simclr --recipe.")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument(
        "--points", type=int, default=4, help="Checkpoints at each 1/points of the budget."
    )
    parser.add_argument(
        "--eval_flag",
        action="append",
        default=[],
        help="A flag for the evaluations (repeatable), e.g. --eval_flag=--eval_batch_size=500.",
    )
    parser.add_argument("--out", required=True, help="Directory for the run and the results.")
    args = parser.parse_args(own)
    if not args.minutes > 0 or args.points < 1:
        parser.error("--minutes must be > 0 and --points >= 1.")
    run_dir = os.path.join(args.out, "run")
    os.makedirs(args.out, exist_ok=True)
    train(args, run_dir, extra)
    load = round(os.getloadavg()[1], 2)  # over the end of training
    cpu = cpu_model()
    rows = []
    for step, minutes in checkpoint_minutes(run_dir).items():
        rows.append(
            {
                "minutes": round(minutes, 3),
                "step": step,
                "knn_top1": knn_top1(args, run_dir, step, os.path.join(args.out, "eval")),
                "budget_minutes": args.minutes,
                "recipe": args.recipe,
                "dataset": args.dataset,
                "eval_split": args.eval_split,
                "cpu": cpu,
                "load_average_5min": load,
                "date": datetime.date.today().isoformat(),
            }
        )
    write_csv(os.path.join(args.out, CSV_NAME), rows)
    write_png(os.path.join(args.out, PNG_NAME), rows)
    print(f"{args.recipe}, {args.minutes:g} min budget, {cpu}, load average {load:.1f}:")
    print("minutes   step   kNN top-1")
    for row in rows:
        print(f"{row['minutes']:7.2f} {row['step']:6d}   {100 * row['knn_top1']:.1f}%")
    print(f"Wrote {os.path.join(args.out, CSV_NAME)} and {os.path.join(args.out, PNG_NAME)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
