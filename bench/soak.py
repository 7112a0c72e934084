"""Soak test of interruption and resume: the tiny model trained by many short runs of the same
`run.py --mode=train` command, each killed with SIGKILL at a random moment and resumed by the
next, then run to the end. Checks that every rerun resumes from the newest complete checkpoint
and that the step count and the loss curve in metrics.jsonl continue without gaps or repeats.

    python bench/soak.py --cycles 20 --json soak.json        # about 15 min on 2 busy cores
    pytest -m slow tests/training/test_reliability.py -k soak          # the same from the test suite

With --reference an uninterrupted run of the same command is trained alongside and the per-step
losses and final weights are compared (exactly equal once the data pipeline resumes mid-stream;
reported, not enforced, before that). Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from helpers.rel_proc import (  # noqa: E402
    TINY_BASE_LR,
    TINY_WARMUP_STEPS,
    checkpoint_numbers,
    kill_group,
    metrics_records,
    read_text,
    resumed_steps,
    start,
    tiny_flags,
    wait_for,
)


def _schedule(step: int, total: int) -> float:
    if step < TINY_WARMUP_STEPS:
        return TINY_BASE_LR * step / TINY_WARMUP_STEPS
    decay = total - TINY_WARMUP_STEPS
    return (
        0.5 * TINY_BASE_LR * (1 + math.cos(math.pi * min(step - TINY_WARMUP_STEPS, decay) / decay))
    )


def _newest_intact(model_dir: str) -> int:
    from tf_simclr.training import checkpoints as ckpt_lib

    for prefix in reversed(ckpt_lib.list_checkpoints(model_dir)):
        try:
            ckpt_lib.validate_checkpoint(prefix)
            return int(prefix.rsplit("-", 1)[-1])
        except ckpt_lib.CheckpointError:
            continue
    return 0


def _data_resumes_mid_stream() -> bool:
    import inspect

    from tf_simclr import data
    from tf_simclr.workflows import train

    return "start_batch" in inspect.signature(
        data.build_pretrain_dataset
    ).parameters and "start_batch" in inspect.getsource(train)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.model_dir = os.path.join(args.workdir, "run")
        self.command = tiny_flags(self.model_dir, args.steps, "--deterministic")
        self.failures: list[str] = []
        self.cycles: list[dict] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)
            print("FAIL:", message, file=sys.stderr, flush=True)

    def one_cycle(self, index: int, expected_resume: int) -> int:
        """Start the command, kill it with SIGKILL at a random moment; returns the newest
        intact checkpoint afterwards."""
        log = os.path.join(self.args.workdir, f"cycle{index:02d}.log")
        blind = index % 4 == 3  # every 4th kill ignores progress entirely: any moment at all
        delay = self.rng.uniform(1.0, 30.0) if blind else self.rng.uniform(0.0, 1.5)
        started = time.monotonic()
        proc = start(self.command, log)
        finished = False
        try:
            if blind:
                deadline = started + delay
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.02)
            else:
                wait_for(
                    lambda: any(n > expected_resume for n in checkpoint_numbers(self.model_dir)),
                    proc,
                    log,
                    self.args.timeout,
                    f"a checkpoint after step {expected_resume}",
                )
                time.sleep(delay)
            finished = proc.poll() is not None
        finally:
            code = kill_group(proc, signal.SIGKILL)
        text = read_text(log)
        resumed = resumed_steps(text)
        if resumed or "Training pretrain for" in text:  # else killed before the restore
            self.check(
                resumed == ([expected_resume] if expected_resume else []),
                f"cycle {index}: resumed from {resumed}, expected step {expected_resume}",
            )
        self.check("Traceback" not in text, f"cycle {index}: traceback in {log}")
        newest = _newest_intact(self.model_dir)
        self.check(newest >= expected_resume, f"cycle {index}: newest checkpoint went back")
        records = metrics_records(self.model_dir)
        steps = [r["step"] for r in records]
        self.check(
            steps == list(range(1, len(steps) + 1)),
            f"cycle {index}: metrics.jsonl steps not contiguous: {steps[-10:]}",
        )
        self.cycles.append(
            dict(
                cycle=index,
                mode="any moment" if blind else "after a new checkpoint",
                killed_after_s=round(time.monotonic() - started, 2),
                exit_code=code,
                finished_before_kill=finished,
                restored=resumed[0] if resumed else None,  # None: killed before restoring
                newest_checkpoint_before=expected_resume,
                newest_checkpoint_after=newest,
                last_logged_step=steps[-1] if steps else 0,
            )
        )
        print(json.dumps(self.cycles[-1]), flush=True)
        return newest

    def run(self) -> dict:
        t0 = time.monotonic()
        reference = None
        ref_dir = os.path.join(self.args.workdir, "reference")
        if self.args.reference:
            reference = start(
                tiny_flags(ref_dir, self.args.steps, "--deterministic"),
                os.path.join(self.args.workdir, "reference.log"),
            )
        try:
            expected = 0
            for index in range(self.args.cycles):
                try:
                    expected = self.one_cycle(index, expected)
                except AssertionError as err:  # a run failed or hung: report, do not go on
                    self.check(False, f"cycle {index}: {err}")
                    return self.summary(time.monotonic() - t0)
                if expected >= self.args.steps:
                    self.check(False, f"the run finished after {index + 1} cycles: use --steps")
                    break
            final_log = os.path.join(self.args.workdir, "final.log")
            proc = start(self.command, final_log)
            try:
                code = proc.wait(timeout=self.args.timeout * 4)
            finally:
                kill_group(proc)
            self.check(code == 0, f"final run exited {code}: {read_text(final_log)[-2000:]}")
            self.check(
                resumed_steps(read_text(final_log)) == ([expected] if expected else []),
                "final run did not resume from the newest checkpoint",
            )
            if reference is not None:
                ref_code = reference.wait(timeout=self.args.timeout * 4)
                self.check(ref_code == 0, f"reference run exited {ref_code}")
        finally:
            if reference is not None:
                kill_group(reference)
        return self.final_checks(ref_dir if reference is not None else None, time.monotonic() - t0)

    def final_checks(self, ref_dir: str | None, seconds: float) -> dict:
        total = self.args.steps
        records = metrics_records(self.model_dir)
        steps = [r["step"] for r in records]
        self.check(steps == list(range(1, total + 1)), f"final steps not 1..{total}: gaps/repeats")
        self.check(all(math.isfinite(r["loss"]) for r in records), "non-finite loss in the log")
        lr_errors = [abs(r["learning_rate"] - _schedule(r["step"], total)) for r in records] or [
            math.inf
        ]
        self.check(max(lr_errors) < 1e-6, f"learning rate off the schedule by {max(lr_errors)}")
        import tensorflow as tf

        final = os.path.join(self.model_dir, f"ckpt-{total}")
        reader = tf.train.load_checkpoint(final)
        keys = reader.get_variable_to_shape_map()
        iterations = int(
            reader.get_tensor("optimizer_variables/LARS.Siteration/.ATTRIBUTES/VARIABLE_VALUE")
        )
        self.check(iterations == total, f"optimizer iterations {iterations} != {total}")
        summary = dict(
            steps=total,
            kills_without_progress=sum(
                1
                for c in self.cycles
                if c["newest_checkpoint_after"] == c["newest_checkpoint_before"]
            ),
        )
        if ref_dir is not None:
            ref_losses = [r["loss"] for r in metrics_records(ref_dir)]
            losses = [r["loss"] for r in records]
            ref_reader = tf.train.load_checkpoint(os.path.join(ref_dir, f"ckpt-{total}"))
            import numpy as np

            weight_diff = max(
                float(np.max(np.abs(reader.get_tensor(k) - ref_reader.get_tensor(k))))
                for k in keys
                if k.startswith("model_weights/") and reader.get_tensor(k).dtype.kind == "f"
            )
            loss_diff = max(
                (abs(a - b) for a, b in zip(losses, ref_losses, strict=False)), default=math.inf
            )
            exact = _data_resumes_mid_stream()
            summary.update(
                reference_max_loss_diff=loss_diff,
                reference_max_weight_diff=weight_diff,
                data_resumes_mid_stream=exact,
            )
            if exact:
                self.check(loss_diff == 0.0 and weight_diff == 0.0, "resumed run != reference")
        return self.summary(seconds, **summary)

    def summary(self, seconds: float, **extra) -> dict:
        out = dict(cycles=len(self.cycles), kills=self.cycles, seconds=round(seconds, 1))
        out.update(extra)
        out["failures"] = self.failures
        out["ok"] = not self.failures
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20, help="kill/resume cycles")
    parser.add_argument("--steps", type=int, default=0, help="total steps (0: 12 per cycle)")
    parser.add_argument("--workdir", default=None, help="where model_dir and logs go")
    parser.add_argument("--json", default=None, help="write the summary here too")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per wait")
    parser.add_argument(
        "--reference", action="store_true", help="compare with an uninterrupted run"
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or 12 * args.cycles
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="tf_simclr_soak_")
    os.makedirs(args.workdir, exist_ok=True)
    summary = Soak(args).run()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
