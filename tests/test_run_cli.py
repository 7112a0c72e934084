"""The command line (tf_simclr.cli; run.py and `python -m tf_simclr` run it): flags become a
validated Config, bad flags give usage errors naming the flag, the first screen is free of
TensorFlow's start-up noise and the results are printed once, as a table, to stdout."""

import logging
import os
import re
import signal
import subprocess
import sys

import pytest

from tf_simclr import cli
from tf_simclr.config import Config
from tf_simclr.workflows import report, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**changes):
    """The test's environment without the TF_CPP_MIN_LOG_LEVEL conftest sets (a user's
    setting turns the start-up filter off), plus `changes`."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(changes)
    return env


def _run(*args, timeout=120, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--temperature=0", "--temperature must be a positive number"),
        ("--optimizer=rmsprop", "--optimizer='rmsprop' is not valid; choose one of: lars"),
        ("--resnet_depth=20", "--resnet_depth=20 is not valid"),
        ("--projector_embeddings=20000", "--projector_embeddings=20000 is too many"),
    ],
)
def test_invalid_flags_give_usage_errors(flag, expected):
    proc = _run(flag)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_the_flags():
    proc = _run("--helpshort")  # absl exits 1 after printing it
    assert "--temperature: NT-Xent temperature tau." in proc.stdout
    assert "--neighbour_images:" in proc.stdout


def test_python_m_tf_simclr_is_the_same_command(tmp_path):
    """From another directory, with the package importable (as after pip install)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tf_simclr", "--temperature=0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(PYTHONPATH=ROOT),
    )
    assert proc.returncode != 0
    assert "--temperature must be a positive number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_flags_map_onto_config_fields(tmp_path):
    cli.FLAGS(
        [
            "tf-simclr",
            "--temperature=0.2",
            "--resnet_depth=50",
            f"--model_dir={tmp_path}",
            "--use_blur",
            "--data_dir=",
            "--neighbour_images=3",
        ]
    )
    try:
        config = cli.config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()
    assert config.temperature == 0.2
    assert config.resnet_depth == 50
    assert config.use_blur is True
    assert config.data_dir is None
    assert config.model_dir == str(tmp_path)
    assert config.neighbour_images == 3


def test_flagfile_is_read(tmp_path):
    flagfile = tmp_path / "recipe.flags"
    flagfile.write_text("--temperature=-3\n")
    proc = _run(f"--flagfile={flagfile}")
    assert proc.returncode != 0 and "--temperature must be a positive number" in proc.stderr


# ------------------------------------------------------------------------------------------
# The first screen and the results
# ------------------------------------------------------------------------------------------
# Lines TensorFlow 2.21 printed here on a CPU-only machine before the CLI filtered them.
_STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796124160.532666   17964 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors.\n",
    "I0000 00:00:1796124160.533013   17964 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n",
    "E0000 00:00:1796124161.761521   17964 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
]


def test_startup_filter_drops_only_the_noise():
    other = "W0000 00:00:1.0 1 some_op.cc:1] a warning about your input\n"
    assert list(cli.filter_startup_noise([*_STARTUP, other, "Traceback (...)\n"])) == [
        other,
        "Traceback (...)\n",
    ]
    # cuInit failing where a CUDA driver was found (no "Could not find cuda drivers" line)
    # is a broken GPU setup: kept.
    assert list(cli.filter_startup_noise([_STARTUP[0], _STARTUP[3]])) == [_STARTUP[3]]


def _noise(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "cuInit" in line or "absl::InitializeLog" in line or "oneDNN custom operations" in line
    ]


def test_first_screen_is_quiet_and_results_go_to_stdout(tmp_path):
    proc = _run("--mode=preview", f"--model_dir={tmp_path / 'run'}", cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert _noise(proc.stderr) == [], proc.stderr
    assert "Traceback" not in proc.stderr
    preview = str(tmp_path / "run" / "preview.png")
    assert os.path.getsize(preview) > 1000
    assert proc.stdout.splitlines() == [
        f"Outputs in {tmp_path / 'run'}:",
        f"  augmentation preview   {preview}",
    ]


def test_a_log_level_the_user_set_shows_everything(tmp_path):
    proc = _run(
        "--mode=preview",
        f"--model_dir={tmp_path}",
        cwd=tmp_path,
        env=_env(TF_CPP_MIN_LOG_LEVEL="0"),
    )
    assert proc.returncode == 0, proc.stderr
    assert any("absl::InitializeLog" in line for line in _noise(proc.stderr)), proc.stderr


_METRICS = {
    "knn_top1": 0.197,
    "knn_top5": 0.61,
    "linear_top1": 0.336,
    "linear_train_loss": 1.5,
    "random_init_knn_top1": 0.084,
    "random_init_knn_top5": 0.5,
    "random_init_linear_top1": 0.134,
    "knn_top1_gain": 0.113,
    "knn_top5_gain": 0.11,
    "linear_top1_gain": 0.202,
    "sup_head_top1": 0.3,
}


def test_results_are_printed_once_as_a_table_to_stdout(tmp_path, monkeypatch, capsys, caplog):
    export = tmp_path / "saved_model" / "235"
    export.mkdir(parents=True)
    (tmp_path / "training_curves.png").write_bytes(b"png")
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    (tmp_path / "neighbours.png").write_bytes(b"png")
    result = {
        "step": 235,
        "total_steps": 235,
        "train_seconds": 119.4,
        "images_per_second": 560.0,
        "precision": "mixed_bfloat16",
        "metrics": dict(_METRICS),
        "export_path": str(export),
        "curves": str(tmp_path / "training_curves.png"),
        "neighbours": str(tmp_path / "neighbours.png"),
        "projector": str(tmp_path / "projector_config.pbtxt"),  # not written: not listed
    }
    monkeypatch.setattr(runner, "run", lambda config: result)
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # keep pytest's capture
    previous = signal.getsignal(signal.SIGTERM)
    cli.FLAGS(["tf-simclr", f"--model_dir={tmp_path}", "--knn_k=200"])
    try:
        with caplog.at_level(logging.INFO):
            assert cli.main(["tf-simclr"]) == 0
    finally:
        cli.FLAGS.unparse_flags()
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    assert "knn" not in caplog.text.lower() and "33.6" not in caplog.text
    lines = out.splitlines()
    assert (
        lines[0]
        == "Step 235 of 235; training and evaluation took 1:59 (training 560 images/s in mixed_bfloat16)."
    )
    assert lines[1] == "Results on split 'test' of embedded:"
    assert re.split(r"\s{2,}", lines[2].strip()) == ["metric", "trained", "random init", "gain"]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[3:8]]
    rows = {row[0]: row[1:] for row in cells}
    assert rows == {
        "linear probe top-1": ["33.6%", "13.4%", "+20.2 points"],
        "kNN top-1 (k=200)": ["19.7%", "8.4%", "+11.3 points"],
        "kNN top-5 (k=200)": ["61.0%", "50.0%", "+11.0 points"],
        "supervised head top-1": ["30.0%"],
        "linear probe final loss": ["1.5000"],
    }, out
    assert lines[8] == f"Outputs in {tmp_path}:"
    assert out.count("33.6%") == 1  # once
    assert lines[9:12] == [
        f"  exported module      {export}",
        f"  training curves      {tmp_path / 'training_curves.png'}",
        f"  nearest neighbours   {tmp_path / 'neighbours.png'}",
    ]
    assert lines[-1] == f"TensorBoard: tensorboard --logdir {tmp_path}"


def test_report_leaves_out_what_a_run_did_not_write(tmp_path):
    config = Config(model_dir=str(tmp_path), summaries=False, mode="export")
    text = report.format_report({"export_path": str(tmp_path / "missing")}, config)
    assert text == ""  # the path does not exist, and there are no metrics or summaries
    (tmp_path / "1").mkdir()
    text = report.format_report({"export_path": str(tmp_path / "1")}, config)
    assert text.splitlines() == [f"Outputs in {tmp_path}:", f"  exported module   {tmp_path / '1'}"]


def test_usage_error_is_the_message_and_where_to_get_help():
    """A bad flag value prints its one message and how to list the flags (not absl's ~270-line
    listing of every flag), with the usage exit code."""
    proc = _run("--temperature=0", "--train_epochs=3")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == cli.USAGE_EXIT_CODE == 2
    assert lines[-2].startswith("tf-simclr: error: --temperature must be a positive number")
    assert lines[-1] == "Run 'tf-simclr --helpfull' to list every flag."
    assert "--train_epochs:" not in proc.stderr and "--temperature:" not in proc.stderr
    unexpected = _run("train_then_eval")
    assert unexpected.returncode == 2
    assert "Unexpected arguments: train_then_eval (flags use --name=value)" in unexpected.stderr
