"""Folders built once for a whole test session, also across pytest-xdist's worker processes
(tests/conftest.py's shared runs)."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def session_folder(basetemp: Path) -> Path:
    """The folder all processes of this test session share: under xdist each worker's base
    temporary directory is a subfolder of the session's; with -n 0 the parent would be shared
    with earlier sessions, so the base temporary directory itself is the session's folder."""
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


def built_once(shared: Path, name: str, build: Callable[[Path], object]) -> Path:
    """shared/name, built by `build(folder)` the first time any process of the session asks
    for it; the others wait on a file lock, then read it.

    The folder is built in place (runs record their own paths, so a rename would leave them
    wrong) and counts as built only once shared/name.done exists: a process that died
    half-way leaves no mark, and the next one deletes the remains and builds again."""
    shared.mkdir(parents=True, exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder
