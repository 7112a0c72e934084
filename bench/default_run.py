"""The README's "Measured on the embedded default" row: run the default job and print it.

Runs `python -m tf_simclr --mode=train_then_eval` with the default settings into a fresh
temporary model_dir (kept, for its pictures; extra arguments are passed on as flags), then
prints one Markdown table row: date, CPU (lscpu's model name and its cores), linear-probe and
kNN top-1 of the pretrained and the random-weights encoder, the gains, the wall time of the
whole command with the 5-minute load average at its end (above the core count: the machine was
shared, the time is not an idle one) and its peak memory, and the same as JSON on the last line.

The figures depend on the CPU: TensorFlow's oneDNN kernels pick different instructions (AVX2,
AVX-512, AMX) and so round differently, and over 235 steps that moves the result by several
points (a rerun on the same machine gave the same numbers: README).

Example: python bench/default_run.py                # about 2-6 minutes on 2 cores
         python bench/default_run.py --seed=1       # the same row for another seed
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    """lscpu's "Model name" and the number of CPUs, e.g. "Intel(R) Xeon(R) Processor, 2 cores"."""
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                name = value.strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass  # no lscpu (macOS, some containers): what platform knows
    return f"{name}, {os.cpu_count()} cores"


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def main(flags: list[str]) -> int:
    model_dir = tempfile.mkdtemp(prefix="tf_simclr_default_run_")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tf_simclr", "--mode=train_then_eval", f"--model_dir={model_dir}"]
        + flags,
        env=env,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"The default run failed (exit code {proc.returncode}); see above.", file=sys.stderr)
        return proc.returncode
    with open(os.path.join(model_dir, "result.json"), encoding="utf-8") as f:
        metrics = json.load(f)["metrics"]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # KiB on Linux
    row = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "flags": " ".join(flags),
        "model_dir": model_dir,
        "linear_top1": metrics["linear_top1"],
        "knn_top1": metrics["knn_top1"],
        "random_init_linear_top1": metrics["random_init_linear_top1"],
        "random_init_knn_top1": metrics["random_init_knn_top1"],
        "linear_top1_gain": metrics["linear_top1_gain"],
        "knn_top1_gain": metrics["knn_top1_gain"],
        "wall_seconds": round(seconds, 1),
        "load_average_5min": round(os.getloadavg()[1], 2),
        "peak_memory_gb": round(peak_gb, 2),
    }
    pct = lambda name: f"{100 * row[name]:.1f}%"  # noqa: E731
    gain = lambda name: f"{100 * row[name]:+.1f}"  # noqa: E731
    print(
        "| date | CPU | linear top-1 (random) | kNN top-1 (random) | gain linear / kNN "
        "| time (load) | peak memory |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {row['date']} | {row['cpu']} | {pct('linear_top1')} ({pct('random_init_linear_top1')}) "
        f"| {pct('knn_top1')} ({pct('random_init_knn_top1')}) "
        f"| {gain('linear_top1_gain')} / {gain('knn_top1_gain')} points "
        f"| {_minutes(seconds)} ({row['load_average_5min']:.1f}) "
        f"| {row['peak_memory_gb']:.1f} GB |"
    )
    print(json.dumps(row))
    print(f"model_dir (pictures, result.json): {model_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
