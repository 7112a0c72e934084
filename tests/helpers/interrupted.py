"""A run that dies in-process right after saving a given checkpoint, as a killed process would
leave it (the process-level kills are in tests/training/test_reliability.py and -m slow)."""

import pytest

from tf_simclr.workflows import runner, train


class DiedAfterSaving(Exception):
    """Raised by the patched checkpoint save, after the checkpoint is complete on disk."""


def run_until_saved(monkeypatch, config, step: int) -> None:
    """Run `config` and stop it with DiedAfterSaving just after checkpoint `step` is saved."""
    save = train.storage.save_checkpoint

    def save_then_die(manager, saved_step, directory):
        save(manager, saved_step, directory)
        if saved_step == step:
            raise DiedAfterSaving

    with monkeypatch.context() as patch:
        patch.setattr(train.storage, "save_checkpoint", save_then_die)
        with pytest.raises(DiedAfterSaving):
            runner.run(config)
