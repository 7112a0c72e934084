"""run.py: flags become a validated Config; bad flags give usage errors naming the flag."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
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


def test_flags_map_onto_config_fields(tmp_path):
    sys.path.insert(0, ROOT)
    import run  # noqa: PLC0415

    run.FLAGS(
        [
            "run.py",
            "--temperature=0.2",
            "--resnet_depth=50",
            f"--model_dir={tmp_path}",
            "--use_blur",
            "--data_dir=",
        ]
    )
    try:
        config = run.config_from_flags()
    finally:
        run.FLAGS.unparse_flags()
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
