"""Time a benchmark script from two checkouts of tf_simclr, interleaved: the script from
checkout A, then from B, for a few rounds, each in its own process; prints each run and the
median ratio (B's time / A's). Interleaving keeps a shared machine's load changes out of the
ratio. ``--script`` picks the benchmark: bench_train_step.py (step time, the default) or
bench_export.py (export time).

    git worktree add ../old <commit>
    python bench/compare_checkouts.py ../old . --rounds 3 -- --width 0.25 --batch-size 256 --steps 6
    python bench/compare_checkouts.py ../old . --script bench_export.py -- --width 0.125
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from default_run import cpu_model  # noqa: E402

# Per script: the arguments it always gets here, the JSON key of the time it reports, and
# other keys worth printing per run.
SCRIPTS = {
    "bench_train_step.py": (["--no-flops"], "step_time_s_median", ("images_per_s",)),
    "bench_export.py": ([], "export_s", ("traced_graphs", "placeholders")),
}


def _one_run(checkout: str, script: str, bench_args: list[str]) -> dict:
    fixed_args = SCRIPTS[script][0]
    proc = subprocess.run(
        [sys.executable, os.path.join(checkout, "bench", script), *fixed_args, *bench_args],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    out = proc.stdout
    start = 0 if out.startswith("{") else out.rfind("\n{") + 1  # the last top-level object
    return json.loads(out[start:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="checkout A (e.g. the old commit's worktree)")
    parser.add_argument("b", help="checkout B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="bench_train_step.py")
    argv = sys.argv[1:]
    bench_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    _, metric, extras = SCRIPTS[args.script]
    print(f"CPU: {cpu_model()}, load {os.getloadavg()[0]:.2f}", flush=True)
    times = {"a": [], "b": []}
    for round_index in range(args.rounds):
        for side in ("a", "b"):
            result = _one_run(getattr(args, side), args.script, bench_args)
            times[side].append(result[metric])
            shown = ", ".join(f"{k} {result[k]:.0f}" for k in extras)
            print(
                f"round {round_index + 1} {side}: {metric} {result[metric]:.3f} ({shown})",
                flush=True,
            )
    ratios = [b / a for a, b in zip(times["a"], times["b"], strict=True)]
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "script": args.script,
                "metric": metric,
                "load_after": round(os.getloadavg()[0], 2),
                f"a_{metric}": times["a"],
                f"b_{metric}": times["b"],
                "b_over_a_median": float(np.median(ratios)),
                "b_over_a_per_round": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
