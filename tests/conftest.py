"""Shared test setup: quiet TF logs, small thread pools, repo root on sys.path."""

import os
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
