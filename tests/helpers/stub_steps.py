"""A training loop whose compiled step is replaced by a stub that only advances the step
counter (and reports loss 1.0): everything around the step (planning, checkpoints, history,
signals, precision, export) runs for real, without tracing a network. Tests that check that
bookkeeping use it; the real step is checked by the tests that train."""

from __future__ import annotations

import os

import tensorflow as tf

from tf_simclr.workflows import train


def stub_train_loop(monkeypatch, events: dict) -> None:
    """Patch train's loop for the test: at step n, events[n] == "nan" makes the loss NaN and a
    signal number sends that signal to this process."""

    def make_train_loop(strategy, step_fn, global_step, metric_names):
        def loop(iterator, num_steps):
            loss = 1.0
            for _ in range(int(num_steps)):
                global_step.assign_add(1)
                event = events.get(int(global_step.numpy()))
                if event == "nan":
                    loss = float("nan")
                elif event is not None:
                    os.kill(os.getpid(), event)
            metrics = {k: tf.constant(loss if k == "loss" else 0.5) for k in metric_names}
            return metrics, tf.constant(loss)

        return loop

    monkeypatch.setattr(train, "_make_train_loop", make_train_loop)
    monkeypatch.setattr(train, "_distribute", lambda strategy, dataset_fn: [])
