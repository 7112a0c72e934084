"""tests/helpers/shared.py: the session's shared runs are built once, by one process, and a
half-built one is never read (tests/conftest.py trains pretrained_run and finetuned_run so)."""

import os
import subprocess
import sys

from helpers.shared import built_once, session_folder

TESTS = os.path.dirname(os.path.abspath(__file__))


def _build_into(calls):
    def build(folder):
        calls.append(folder)
        folder.mkdir()
        (folder / "result.json").write_text("{}")

    return build


def test_a_folder_is_built_once_and_then_read(tmp_path):
    calls = []
    first = built_once(tmp_path, "run", _build_into(calls))
    second = built_once(tmp_path, "run", _build_into(calls))
    assert first == second == tmp_path / "run" and calls == [tmp_path / "run"]
    assert (first / "result.json").read_text() == "{}"


def test_a_half_built_folder_is_deleted_and_built_again(tmp_path):
    # A process that died while building: its folder, without the done mark.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt-1.index").write_text("half")
    calls = []
    folder = built_once(tmp_path, "run", _build_into(calls))
    assert calls == [folder] and sorted(os.listdir(folder)) == ["result.json"]


def test_processes_of_one_session_share_one_build(tmp_path):
    """Two processes ask at the same time: one builds (each build appends a line to a log and
    takes a while), the other waits for it and reads the same folder."""
    code = "\n".join(
        [
            "import sys, time",
            "from pathlib import Path",
            "sys.path.insert(0, sys.argv[1])",
            "from helpers.shared import built_once",
            "root = Path(sys.argv[2])",
            "def build(folder):",
            "    folder.mkdir()",
            "    with open(root / 'builds.log', 'a') as log:",
            "        log.write('built\\n')",
            "    time.sleep(1)  # the other process asks meanwhile",
            "print(built_once(root / 'shared', 'run', build))",
        ]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, TESTS, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == [str(tmp_path / "shared" / "run")] * 2
    assert (tmp_path / "builds.log").read_text() == "built\n"


def test_the_session_folder_is_the_workers_common_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert session_folder(tmp_path / "popen-gw1") == tmp_path
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert session_folder(tmp_path) == tmp_path  # -n 0: not the folder of every session
