"""tf_simclr.onednn: imported after TensorFlow with its oneDNN kernels off, tf_simclr says so
(TensorFlow reads the switch once, when it starts, so tf_simclr can no longer turn them on)."""

import os
import subprocess
import sys

import pytest

from tf_simclr import onednn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TF = {"tensorflow": object()}  # sys.modules once TensorFlow has started


@pytest.mark.parametrize(
    "modules, environ, enabled, warns, switch",
    [
        (TF, {}, False, True, None),  # the trap: TF first, kernels off, nothing chosen
        (TF, {}, True, False, None),  # TF first, but its default has them on (AVX-512 CPUs)
        (TF, {"TF_ENABLE_ONEDNN_OPTS": "0"}, False, False, "0"),  # the user's choice
        ({}, {}, False, False, "1"),  # tf_simclr first: it turns them on itself
        ({}, {"TF_ENABLE_ONEDNN_OPTS": "0"}, False, False, "0"),  # unless the user said no
    ],
)
def test_the_kernels_are_switched_on_first_and_a_late_import_is_explained(
    modules, environ, enabled, warns, switch
):
    notice = onednn.switch_on_or_explain(modules, environ, lambda: enabled)
    assert (notice is not None) == warns
    assert environ.get("TF_ENABLE_ONEDNN_OPTS") == switch
    if warns:
        assert "Import tf_simclr before tensorflow and keras" in notice
        assert "TF_ENABLE_ONEDNN_OPTS=1" in notice


def _import_order(first: str) -> tuple[str, bool]:
    """(stderr, oneDNN on) of a fresh Python that imports `first` and then tf_simclr, with
    TF_ENABLE_ONEDNN_OPTS unset."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = (
        f"import {first}\nimport tf_simclr\nfrom tf_simclr import onednn\n"
        "print(onednn.onednn_enabled())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr, proc.stdout.strip() == "True"


def test_importing_tensorflow_first_warns_exactly_when_its_kernels_are_off():
    """Keras first (it starts TensorFlow), the switch unset: the running TensorFlow's own
    answer decides. On CPUs without AVX-512 (the AVX2 EPYC here) the kernels are off and the
    warning appears; where TF turns them on itself, nothing is said."""
    stderr, enabled = _import_order("keras")
    assert ("oneDNN CPU kernels off" in stderr) == (not enabled), stderr[-2000:]
