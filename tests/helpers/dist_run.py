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
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402

from tf_simclr import cli, factory  # noqa: E402  (cli defines the flags)
from tf_simclr.workflows import train as train_lib  # noqa: E402

_states = []
_train = train_lib.train


def _recording_train(config, strategy):
    state = _train(config, strategy)
    _states.append(state)
    return state


train_lib.train = _recording_train  # runner calls train_lib.train through the module


def emulate_workers(num_workers: int) -> None:
    """Feed a one-device run the global batches of `num_workers` workers' pipelines."""
    fresh_dataset_fn = factory.training_dataset_fn

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

    factory.training_dataset_fn = training_dataset_fn  # train.py calls it through the module


def main(argv):
    code = cli.main(argv)
    if code == 0 and _states:
        model = _states[-1].model
        weights = {v.path: np.asarray(v.numpy()) for v in model.weights}
        trainable = np.array([v.path for v in model.trainable_weights])
        np.savez(OUT, _step=_states[-1].step, _trainable=trainable, **weights)
    return code


if __name__ == "__main__":
    OUT = sys.argv.pop(1)
    if sys.argv[1].startswith("--as_workers="):
        emulate_workers(int(sys.argv.pop(1).split("=", 1)[1]))
    app.run(main)
