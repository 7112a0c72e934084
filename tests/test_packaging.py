"""The installable package: the wheel holds the embedded dataset (the checkout's top-level
data/ folder, installed as tf_simclr/embedded_data/), which the installed tf_simclr finds from
any directory; pyproject.toml lists every package of the checkout; its dependencies are requirements.txt's pins; the
`tf-simclr` console command resolves to the CLI. (.ci/run installs the wheel with its
dependencies into a clean virtualenv and runs `tf-simclr --mode=preview` elsewhere.)"""

import configparser
import importlib.metadata
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from tf_simclr import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SOURCES = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "MANIFEST.in",
    "requirements.txt",
    "requirements-hub.txt",
    "requirements-test.txt",
)
SHIPPED_DATA = "data/shapes10/1.0.0"  # in the checkout
EMBEDDED = "tf_simclr/embedded_data/shapes10/1.0.0"  # in the wheel


def _pins(name: str) -> set[str]:
    with open(os.path.join(ROOT, name)) as f:
        return {ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")}


def _build_wheel(out_dir) -> str:
    """Build the wheel from a copy of the sources (the checkout stays free of build output)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: the wheel cannot be built offline here")
    src = out_dir / "src"
    shutil.copytree(
        os.path.join(ROOT, "tf_simclr"),
        src / "tf_simclr",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(
        os.path.join(ROOT, "data"), src / "data", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in _SOURCES:
        shutil.copy(os.path.join(ROOT, name), src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(src), "-w", str(out_dir / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (wheel,) = (out_dir / "dist").iterdir()
    return str(wheel)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_the_embedded_dataset_and_the_console_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    shipped = sorted(os.listdir(os.path.join(ROOT, SHIPPED_DATA)))
    assert len(shipped) == 5
    for name in shipped:
        assert f"{EMBEDDED}/{name}" in names
    for module in (
        "tf_simclr/cli.py",
        "tf_simclr/__main__.py",
        "tf_simclr/embedded_data/generate_embedded.py",
        "tf_simclr/embedded_data/README.md",
        "tf_simclr/recipes/cifar10_paper.flags",  # --recipe's files
        "tf_simclr/recipes/cifar10_10min.flags",
    ):
        assert module in names
    assert not any(n.startswith(("tests/", "bench/", "examples/")) for n in names)

    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == {"tf-simclr": "tf_simclr.cli:console_main"}
    entry = importlib.metadata.EntryPoint(
        "tf-simclr", parser["console_scripts"]["tf-simclr"], "console_scripts"
    )
    assert entry.load() is cli.console_main

    requires = [
        ln.split(":", 1)[1].strip()
        for ln in metadata.splitlines()
        if ln.startswith("Requires-Dist:")
    ]
    plain = {r for r in requires if ";" not in r}
    extra = {
        name: {r.split(";")[0].strip() for r in requires if f'extra == "{name}"' in r}
        for name in ("hub", "test")
    }
    normalise = lambda pins: {p.lower().replace("_", "-") for p in pins}  # noqa: E731
    assert normalise(plain) == normalise(_pins("requirements.txt"))
    assert (
        extra["hub"]
        == _pins("requirements-hub.txt")
        == {"tensorflow-hub==0.16.1", "tf-keras==2.21.0"}
    )
    assert extra["test"] == _pins("requirements-test.txt") | _pins("requirements-hub.txt")


def test_installed_package_finds_the_embedded_dataset_from_another_directory(wheel, tmp_path):
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)  # what pip puts into site-packages
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import tf_simclr, tf_simclr.data as d\n"
        "_, info = d.load_source('embedded', split='test')\n"
        "print(tf_simclr.__file__)\nprint(d.EMBEDDED_DIR)\nprint(info.num_examples['train'], info.num_examples['test'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    package_file, embedded_dir, sizes = proc.stdout.splitlines()[-3:]
    assert package_file == str(installed / "tf_simclr" / "__init__.py")  # not the checkout
    assert embedded_dir == str(installed / "tf_simclr" / "embedded_data")
    assert sizes == "5000 1000"


@pytest.mark.slow
def test_pip_installed_command_runs_from_another_directory(wheel, tmp_path):
    """pip installs the wheel into a new virtualenv (dependencies: this environment's, via a
    .pth file, so nothing is downloaded) and `tf-simclr --mode=preview` runs from /tmp."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "test_dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, wheel], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    model_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(venv / "bin" / "tf-simclr"), "--mode=preview", f"--model_dir={model_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"augmentation preview   {model_dir / 'preview.png'}" in proc.stdout
    assert os.path.getsize(model_dir / "preview.png") > 1000
    assert "cuInit" not in proc.stderr and "absl::InitializeLog" not in proc.stderr


def test_pyproject_lists_every_package_of_the_checkout():
    """The wheel's packages are listed by hand (data/ is mapped onto tf_simclr.embedded_data):
    a new subpackage missing from the list would be left out of the wheel."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools_table = tomllib.load(f)["tool"]["setuptools"]
    found = {
        os.path.relpath(directory, ROOT).replace(os.sep, ".")
        for directory, _, files in os.walk(os.path.join(ROOT, "tf_simclr"))
        if "__init__.py" in files
    }
    assert set(setuptools_table["packages"]) == found | {"tf_simclr.embedded_data"}
    assert setuptools_table["package-dir"] == {"tf_simclr.embedded_data": "data"}
