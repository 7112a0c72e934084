"""Step time of two checkouts of tf_simclr, interleaved: bench_train_step.py from checkout A,
then from B, for a few rounds, each in its own process; prints each run and the median ratio
(B's step time / A's). Interleaving keeps a shared machine's load changes out of the ratio.

    git worktree add ../old <commit>
    python bench/compare_checkouts.py ../old . --rounds 3 -- --width 0.25 --batch-size 256 --steps 6
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


def _one_run(checkout: str, bench_args: list[str]) -> dict:
    script = os.path.join(checkout, "bench", "bench_train_step.py")
    proc = subprocess.run(
        [sys.executable, script, "--no-flops", *bench_args],
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
    argv = sys.argv[1:]
    bench_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.bench_args = bench_args  # bench_train_step.py's own arguments, after --
    print(f"CPU: {cpu_model()}, load {os.getloadavg()[0]:.2f}", flush=True)
    times = {"a": [], "b": []}
    for round_index in range(args.rounds):
        for side in ("a", "b"):
            result = _one_run(getattr(args, side), args.bench_args)
            times[side].append(result["step_time_s_median"])
            print(
                f"round {round_index + 1} {side}: {result['step_time_s_median']:.3f} s/step "
                f"({result['images_per_s']:.0f} img/s)",
                flush=True,
            )
    ratios = [b / a for a, b in zip(times["a"], times["b"], strict=True)]
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "load_after": round(os.getloadavg()[0], 2),
                "a_step_s": times["a"],
                "b_step_s": times["b"],
                "b_over_a_median": float(np.median(ratios)),
                "b_over_a_per_round": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
