"""Choosing fine-tuning defaults on held-out TRAINING images (never the test split).

    # 1. a held-out view: image folder with train/ (80% of each class of the training split;
    #    CIFAR-10: 90%) and heldout/ (the rest), the test split left out
    python bench/finetune_defaults.py prepare --dataset=embedded --out=/tmp/embedded_heldout
    python bench/finetune_defaults.py prepare --dataset=../shared/data/cifar10-jpeg \
        --out=/tmp/cifar_heldout --heldout_fraction=0.1
    # 2. fine-tune a pretrained run on a labelled fraction of train/, scored on heldout/, for
    #    each learning rate x epochs (a run that finished before is read, not rerun)
    python bench/finetune_defaults.py sweep --pretrained=runs/pretrain \
        --data=/tmp/embedded_heldout --label_fraction=0.125 --grid=4.0x12,0.5x200,1.0x100 \
        --out=/tmp/ft_sweep
    # 3. once, for the final choice: the chosen run and the encoder's probe on the test split
    #    (an image folder's test/ is linked into the held-out view by step 1)
    python bench/finetune_defaults.py final --run=/tmp/ft_sweep/ft_0.1_lr0.5_ep200 \
        --pretrained=runs/pretrain --split=test

`sweep` prints the CPU, the pretrained encoder's linear probe trained on the same labelled
images (scored on heldout/) and one row per run: base learning rate, epochs, steps, fine-tuned
top-1 on heldout/, and the run's wall time (meaningless on a shared machine, kept as a rough
guide). The embedded set's training split has 5,000 images: 80% leaves 4,000, of which
--label_fraction=0.125 keeps 500, the count of the README's 10% commands.

A held-out folder is another dataset for tf_simclr, so fine-tuning starts with a fresh
supervised head there (on the pretraining dataset itself it would start from the pretraining
run's linear-eval head, which saw every training label, held-out ones included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

HELDOUT_SPLIT = "heldout"


def prepare(dataset: str, out: str, heldout_fraction: float) -> None:
    """Write (embedded, TFDS) or link (image folder) the training split into out/train and
    out/heldout, class by class: the last `heldout_fraction` of each class is held out."""
    import numpy as np

    from tf_simclr.data import folders, sources

    if os.path.exists(out):
        raise SystemExit(f"{out} exists: remove it or give another --out.")
    root = sources.image_folder_root(dataset)
    if root is not None:
        paths, labels, classes, _ = folders._checked_listing(
            root, "train", strict=True, extensions=folders.IMAGE_EXTENSIONS, warn=True
        )
        items = [(os.path.abspath(p), int(y)) for p, y in zip(paths, labels, strict=True)]
        class_names = list(classes)
        write = _link
    else:
        raw = sources._open_raw(dataset, None, "train", True, None)
        class_names = list(raw.info.class_names) or [str(i) for i in range(raw.info.num_classes)]
        items = [(bytes(ex["encoded"].numpy()), int(ex["label"].numpy())) for ex in raw.dataset]
        write = _write_bytes
    labels = np.array([y for _, y in items])
    counts = {"train": 0, HELDOUT_SPLIT: 0}
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        keep = len(members) - int(round(heldout_fraction * len(members)))
        for rank, index in enumerate(members):
            split = "train" if rank < keep else HELDOUT_SPLIT
            folder = os.path.join(out, split, name)
            os.makedirs(folder, exist_ok=True)
            write(items[index][0], os.path.join(folder, f"{index:06d}"))
            counts[split] += 1
    if root is not None and os.path.isdir(os.path.join(root, "test")):
        # For the one final score of the chosen setting (`final`), never for choosing.
        os.symlink(os.path.join(os.path.abspath(root), "test"), os.path.join(out, "test"))
    print(json.dumps({"out": out, "examples": counts, "classes": len(class_names)}))


def _link(source: str, target: str) -> None:
    os.symlink(source, target + os.path.splitext(source)[1])


def _write_bytes(encoded: bytes, target: str) -> None:
    extension = ".png" if encoded[:4] == b"\x89PNG" else ".jpg"
    with open(target + extension, "wb") as f:
        f.write(encoded)


def labelled_probe(
    pretrained: str, data: str, label_fraction: float, seed: int, split: str = HELDOUT_SPLIT
) -> dict:
    """The pretrained encoder's linear probe trained on the labelled subset of data/train and
    scored on data/<split> (tf_simclr.workflows.semi_supervised.labelled_linear_probe)."""
    from tf_simclr.config import Config
    from tf_simclr.workflows import semi_supervised

    encoder = Config.load(pretrained).replace(
        model_dir=pretrained, dataset=data, eval_split=split, seed=seed
    )
    labelled = encoder.replace(
        train_mode="finetune", checkpoint=pretrained, label_fraction=label_fraction
    )
    return semi_supervised.labelled_linear_probe(encoder, labelled)


def sweep(args) -> None:
    from default_run import cpu_model

    print(f"CPU: {cpu_model()}", flush=True)
    probe_path = os.path.join(args.out, f"probe_{args.label_fraction:g}.json")
    os.makedirs(args.out, exist_ok=True)
    if os.path.isfile(probe_path):
        with open(probe_path) as f:
            probe = json.load(f)
    else:
        probe = labelled_probe(args.pretrained, args.data, args.label_fraction, args.seed)
        with open(probe_path, "w") as f:
            json.dump(probe, f)
    print(
        f"encoder linear probe on the {probe['labelled_examples']} labelled images: "
        f"{100 * probe['labelled_linear_top1']:.1f}% on {HELDOUT_SPLIT}/",
        flush=True,
    )
    print("| base lr | epochs | steps | fine-tuned top-1 (held out) | wall |", flush=True)
    print("|---|---|---|---|---|", flush=True)
    for cell in args.grid.split(","):
        lr, epochs = cell.split("x")
        model_dir = os.path.join(args.out, f"ft_{args.label_fraction:g}_lr{lr}_ep{epochs}")
        result_path = os.path.join(model_dir, "result.json")
        start = time.perf_counter()
        if not os.path.isfile(result_path):
            flags = [
                "--train_mode=finetune",
                f"--checkpoint={args.pretrained}",
                f"--dataset={args.data}",
                f"--eval_split={HELDOUT_SPLIT}",
                f"--label_fraction={args.label_fraction}",
                f"--learning_rate={lr}",
                f"--train_epochs={epochs}",
                f"--seed={args.seed}",
                f"--model_dir={model_dir}",
                "--export=false",
                *args.flags,
            ]
            with open(model_dir + ".log", "w") as log:
                subprocess.run(
                    [sys.executable, os.path.join(ROOT, "run.py"), *flags],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
        wall = time.perf_counter() - start
        with open(result_path) as f:
            result = json.load(f)
        top1 = result["metrics"]["finetune_top1"]
        print(
            f"| {lr} | {epochs} | {result['total_steps']} | {100 * top1:.1f}% | "
            f"{int(wall) // 60}:{int(wall) % 60:02d} |",
            flush=True,
        )


def final(args) -> None:
    """Score the chosen fine-tuned run (a sweep's model_dir) and the encoder's probe on the
    labelled images once on another split (the test split): the run is copied, then evaluated,
    so the sweep's held-out result stays as it was."""
    import shutil

    from default_run import cpu_model

    print(f"CPU: {cpu_model()}", flush=True)
    copy = args.run.rstrip("/") + f"_{args.split}"
    if not os.path.isfile(os.path.join(copy, "result.json")):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("result.json"))
        with open(copy + ".log", "w") as log:
            subprocess.run(
                [
                    sys.executable,
                    os.path.join(ROOT, "run.py"),
                    "--mode=eval",
                    f"--model_dir={copy}",
                    f"--eval_split={args.split}",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
    with open(os.path.join(copy, "result.json")) as f:
        result = json.load(f)
    with open(os.path.join(args.run, "config.json")) as f:
        run_config = json.load(f)
    probe_path = copy + "_probe.json"
    if not os.path.isfile(probe_path):
        probe = labelled_probe(
            args.pretrained,
            run_config["dataset"],
            run_config["label_fraction"],
            run_config["seed"],
            split=args.split,
        )
        with open(probe_path, "w") as f:
            json.dump(probe, f)
    with open(probe_path) as f:
        probe = json.load(f)
    metrics = result["metrics"]
    print(
        f"{args.split}: encoder linear probe on the {probe['labelled_examples']} labelled images "
        f"{100 * probe['labelled_linear_top1']:.1f}%, fine-tuned ({run_config['learning_rate']} x "
        f"{run_config['train_epochs']} epochs) {100 * metrics['finetune_top1']:.1f}% "
        f"(top-5 {100 * metrics.get('finetune_top5', float('nan')):.1f}%)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--heldout_fraction", type=float, default=0.2)
    s = commands.add_parser("sweep")
    s.add_argument("--pretrained", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--label_fraction", type=float, required=True)
    s.add_argument("--grid", required=True, help="lr x epochs, comma-separated: 0.5x200,4.0x12")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("flags", nargs="*", help="more tf_simclr flags, after --")
    f = commands.add_parser("final")
    f.add_argument("--run", required=True, help="the chosen sweep run's model_dir")
    f.add_argument("--pretrained", required=True)
    f.add_argument("--split", default="test")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.dataset, args.out, args.heldout_fraction)
    elif args.command == "sweep":
        sweep(args)
    else:
        final(args)


if __name__ == "__main__":
    main()
