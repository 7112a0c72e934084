"""What an evaluation subset costs to read from a TFDS split: its labels and ids, and the chosen
examples' pipeline, read from the split's record files directly against read through TFDS.

An evaluation with --eval_steps (and fine-tuning with --label_fraction) reads the whole split's
labels to choose a class-stratified subset, then a pipeline of the chosen examples. tf_simclr
parses both from the split's serialized records when TFDS reads the split file after file
(tf_simclr.data.sources.RecordFiles); otherwise it reads through TFDS, example by example.
This times both routes, interleaved round by round, in one process (CPU seconds of the process
and wall seconds), and prints the median of each and their ratio with the CPU model:

    python bench/bench_subset_reads.py                            # the embedded train split
    python bench/bench_subset_reads.py --dataset=/data/cifar10_tfds --split=train --rounds=5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from default_run import cpu_model  # noqa: E402

from tf_simclr import data as data_lib  # noqa: E402
from tf_simclr.data import labels, sources  # noqa: E402


def _read(dataset, data_dir, split, subset_size, records: bool) -> tuple[float, float]:
    """(CPU s, wall s) of reading the split's labels and iterating a subset's pipeline."""
    real = sources._records_in_read_order
    if not records:
        sources._records_in_read_order = lambda *args: None
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        raw = sources._open_raw(dataset, data_dir, split, False, None, warn=False)
        if records and raw.records is None:
            raise SystemExit(f"{dataset} {split!r} is not read file after file: no record route.")
        found, _ = labels._read_labels_and_ids(raw)
        chosen = np.random.default_rng(0).choice(len(found), subset_size, replace=False)
        subset, _ = data_lib.load_source(dataset, data_dir=data_dir, split=split, indices=chosen)
        for _ in subset.batch(256):
            pass
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        sources._records_in_read_order = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--subset", type=int, default=500, help="examples the subset keeps")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    routes = {"records": [], "tfds": []}
    _read(args.dataset, args.data_dir, args.split, args.subset, True)  # warm-up (imports)
    for _ in range(args.rounds):
        for name in routes:
            routes[name].append(
                _read(args.dataset, args.data_dir, args.split, args.subset, name == "records")
            )
    result = {"dataset": args.dataset, "split": args.split, "subset": args.subset}
    for name, times in routes.items():
        result[f"{name}_cpu_s"] = round(statistics.median(t[0] for t in times), 3)
        result[f"{name}_wall_s"] = round(statistics.median(t[1] for t in times), 3)
    result["cpu_ratio"] = round(result["tfds_cpu_s"] / result["records_cpu_s"], 1)
    result.update(rounds=args.rounds, cpu=cpu_model(), load_average_1min=os.getloadavg()[0])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
