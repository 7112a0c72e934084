"""The command line (tf_simclr.cli; run.py and `python -m tf_simclr` run it): flags become a
validated Config, bad flags give usage errors naming the flag."""

import os
import subprocess
import sys

import pytest

from tf_simclr import cli

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


def test_flagfile_is_read(tmp_path):
    flagfile = tmp_path / "recipe.flags"
    flagfile.write_text("--temperature=-3\n")
    proc = _run(f"--flagfile={flagfile}")
    assert proc.returncode != 0 and "--temperature must be a positive number" in proc.stderr
