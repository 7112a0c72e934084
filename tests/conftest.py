"""Shared test setup: quiet TF logs, repo root on sys.path, the reference fixtures, and the
tiny runs the whole test session shares (one pretraining run, one run fine-tuned from it):
training them once instead of once per test file is most of what a file's setup used to cost."""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The library's default (tf_simclr/__init__.py); set here because tests import TF first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

# Models written by the reference SimCLR TF2 code (see ../shared/fixtures/README.md); they are
# not part of the repository, so tests that need them skip where the folder is absent.
REFERENCE_FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared",
    "fixtures",
)


@pytest.fixture(scope="session")
def reference_fixtures() -> str:
    """Path of the reference-model fixtures folder (skips the test where it is absent)."""
    if not os.path.isdir(REFERENCE_FIXTURES):
        pytest.skip(
            f"reference fixtures not found at {REFERENCE_FIXTURES} (../shared/fixtures from the "
            "repository root): the parity tests need models written by the reference code"
        )
    return REFERENCE_FIXTURES


def _built_once(tmp_path_factory, name: str, build):
    """`build(folder)` run once for the whole test session, also across xdist's worker
    processes (each would otherwise train its own copy); returns the built folder."""
    from helpers.shared import built_once, session_folder

    shared = session_folder(tmp_path_factory.getbasetemp()) / "shared_runs"
    return built_once(shared, name, build)


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """A tiny pretraining run on the embedded dataset (tests/helpers/configs.py's tiny settings,
    --mode=train, 2 steps: ckpt-2, config.json, result.json), shared by the whole session
    (built once for all xdist workers). Read it, never write into it: a test that writes
    takes `pretrained_copy`."""
    from helpers.configs import tiny_config

    from tf_simclr.workflows import runner

    def build(model_dir):
        runner.run(tiny_config(model_dir, mode="train", train_steps=2))

    model_dir = _built_once(tmp_path_factory, "pretrain", build)
    assert (model_dir / "ckpt-2.index").exists()
    return model_dir


@pytest.fixture
def pretrained_copy(pretrained_run, tmp_path):
    """A copy of `pretrained_run` in the test's tmp_path, for tests that write into the run."""
    copy = tmp_path / "pretrain"
    shutil.copytree(pretrained_run, copy)
    return copy


@pytest.fixture(scope="session")
def finetuned_run(tmp_path_factory, pretrained_run):
    """A run fine-tuned from `pretrained_run` on 10% of the labels (--mode=train, 4 steps, with
    its SavedModel export), shared by the whole session like `pretrained_run` (e.g. the
    distillation teacher). Read it, never write into it."""
    from helpers.configs import tiny_config

    from tf_simclr.workflows import runner

    def build(model_dir):
        runner.run(
            tiny_config(
                model_dir,
                mode="train",
                train_mode="finetune",
                checkpoint=str(pretrained_run),
                label_fraction=0.1,
                export=True,
            )
        )

    model_dir = _built_once(tmp_path_factory, "finetune", build)
    assert (model_dir / "ckpt-4.index").exists()
    return model_dir


@pytest.fixture(scope="session")
def mixed_tfds(tmp_path_factory):
    """The data_dir of a tiny TFDS dataset with a labelled, an unlabelled (label -1) and a
    test split, like STL-10 (tests/helpers/mixed_tfds.py), written once per session: read it
    with dataset=mixed_tfds.NAME, data_dir=<this>. Never write into it."""
    from helpers.mixed_tfds import write_mixed_dataset

    data_dir = tmp_path_factory.mktemp("mixed_tfds")
    write_mixed_dataset(data_dir)
    return data_dir
