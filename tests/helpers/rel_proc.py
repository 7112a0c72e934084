"""Helpers for the reliability tests and bench/soak.py: drive `run.py` in subprocesses, wait for
checkpoints or log lines, kill them, and read what they left in model_dir."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from helpers.configs import tiny_flags as _tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_PY = os.path.join(ROOT, "run.py")

# The tiny settings of tests/helpers/configs.py with one log record per step, a checkpoint every
# 2 steps, a 2-step warmup (0.0128 epochs of the 5000 embedded examples at B=32).
RUN_SETTINGS = dict(steps_per_loop=1, warmup_epochs=0.0128, learning_rate=1.0, log_every_steps=1)
TINY_BASE_LR = 1.0 * 32 / 256  # --learning_rate=1.0, linear scaling
TINY_WARMUP_STEPS = 2


def tiny_flags(model_dir: str, train_steps: int, *extra: str) -> list[str]:
    """`run.py` flags of a tiny pretraining run logged and checkpointed step by step."""
    return _tiny_flags(model_dir, train_steps, *extra, **RUN_SETTINGS)


def start(args: list[str], log_path: str) -> subprocess.Popen:
    """`python run.py ARGS` in its own session (so the whole group can be killed), with stdout
    and stderr going to log_path (a file, so a chatty run never blocks on a full pipe)."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the child's exit; Popen dups it
    try:
        return subprocess.Popen(
            [sys.executable, RUN_PY, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    finally:
        log.close()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
    """Send `sig` to the process group of `proc` and wait for it; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_for(condition, proc: subprocess.Popen, log_path: str, timeout: float, what: str):
    """Poll `condition()` until it returns something truthy (returned). Fails with the log tail
    if the process exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            value = condition()
            if value:
                return value
            raise AssertionError(
                f"run.py exited ({proc.returncode}) before {what}:\n{read_text(log_path)[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}:\n"
                f"{read_text(log_path)[-3000:]}"
            )
        time.sleep(0.05)


def checkpoint_numbers(model_dir: str) -> list[int]:
    """Steps of the checkpoints whose .index file exists, ascending."""
    try:
        names = os.listdir(model_dir)
    except FileNotFoundError:
        return []
    return sorted(
        int(m.group(1)) for m in (re.fullmatch(r"ckpt-(\d+)\.index", n) for n in names) if m
    )


def metrics_records(model_dir: str) -> list[dict]:
    """Every complete line of metrics.jsonl, in file order (no deduplication)."""
    records = []
    for line in read_text(os.path.join(model_dir, "metrics.jsonl")).splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def last_logged_step(model_dir: str) -> int:
    records = metrics_records(model_dir)
    return records[-1]["step"] if records else 0


def resumed_steps(log_text: str) -> list[int]:
    """Steps named by 'Resuming from .../ckpt-N at step N.' lines, in order."""
    return [int(s) for s in re.findall(r"Resuming from \S*ckpt-\d+ at step (\d+)\.", log_text)]
