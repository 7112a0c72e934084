"""`python run.py` plus a dump of the trained weights, for tests/training/test_train_distributed.py.

Usage: python tests/helpers/dist_run.py WEIGHTS.npz [--as_workers=N] --mode=train ... (run.py flags)

Runs the command line's own main (tf_simclr.cli: flags -> Config -> runner.run -> train), records the TrainState that
train() returns and, once main returns 0, saves every model variable (by path, exact values),
the final step (`_step`) and the trainable variables' paths (`_trainable`) to WEIGHTS.npz.
Exits with main's status, so a worker that gives up on its peers exits with run.py's code.

--as_workers=N (one device, --strategy=default): the single-device twin of an N-worker
MultiWorkerMirroredStrategy run. Each step's global batch is the concatenation, in worker
order, of the batches the N workers' own pipelines give (the training pipeline built with
worker i's tf.distribute.InputContext); a resumed run skips the batches of the steps already
taken by iterating the fresh streams, independently of the offset the pipelines compute
themselves when a multi-worker run resumes.

The test imports `workers_training_dataset_fn`, `recording` and `weights_of` to run that
twin in its own process (no TensorFlow start-up to pay again); importing this module changes
nothing.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def workers_training_dataset_fn(fresh_dataset_fn, num_workers: int):
    """A replacement for factory.training_dataset_fn (given as `fresh_dataset_fn`) that feeds
    a one-device run the global batches of `num_workers` workers' pipelines."""

    def training_dataset_fn(config, global_batch_size, start_step=0):
        fresh = fresh_dataset_fn(config, global_batch_size, start_step=0)

        def dataset_fn(input_context=None):
            assert input_context is None, "--as_workers runs on one device"
            parts = tuple(
                fresh(tf.distribute.InputContext(num_workers, i, num_workers))
                for i in range(num_workers)
            )
            joined = tf.data.Dataset.zip(parts).map(
                lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
            )
            return joined.skip(start_step)

        return dataset_fn

    return training_dataset_fn


def recording(train, states: list):
    """`train` (tf_simclr.workflows.train.train) that also appends each TrainState it returns
    to `states`."""

    def recording_train(config, strategy):
        state = train(config, strategy)
        states.append(state)
        return state

    return recording_train


def weights_of(state) -> dict:
    """What WEIGHTS.npz holds for the TrainState `state` train() returned."""
    model = state.model
    weights = {v.path: np.asarray(v.numpy()) for v in model.weights}
    trainable = np.array([v.path for v in model.trainable_weights])
    return {"_step": state.step, "_trainable": trainable, **weights}


def _main(out: str, argv: list[str]) -> None:
    from absl import app

    from tf_simclr import cli, factory  # cli defines the flags
    from tf_simclr.workflows import train as train_lib

    if argv[1].startswith("--as_workers="):
        num_workers = int(argv.pop(1).split("=", 1)[1])
        # train.py calls it through the module
        factory.training_dataset_fn = workers_training_dataset_fn(
            factory.training_dataset_fn, num_workers
        )
    states = []
    # runner calls train_lib.train through the module
    train_lib.train = recording(train_lib.train, states)

    def main(args):
        code = cli.main(args)
        if code == 0 and states:
            np.savez(out, **weights_of(states[-1]))
        return code

    app.run(main, argv=argv)


if __name__ == "__main__":
    _main(sys.argv[1], [sys.argv[0], *sys.argv[2:]])
