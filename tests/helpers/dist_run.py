"""`python run.py` plus a dump of the trained weights, for tests/test_train_distributed.py.

Usage: python tests/helpers/dist_run.py WEIGHTS.npz --mode=train --strategy=multi_worker ... (run.py flags)

Runs the command line's own main (tf_simclr.cli: flags -> Config -> runner.run -> train), records the TrainState that
train() returns and, once main returns 0, saves every model variable (by path, exact values),
the final step (`_step`) and the trainable variables' paths (`_trainable`) to WEIGHTS.npz.
Exits with main's status, so a worker that gives up on its peers exits with run.py's code.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from absl import app  # noqa: E402

from tf_simclr import cli  # noqa: E402  (defines the flags)
from tf_simclr import train as train_lib  # noqa: E402

_states = []
_train = train_lib.train


def _recording_train(config, strategy):
    state = _train(config, strategy)
    _states.append(state)
    return state


train_lib.train = _recording_train  # runner calls train_lib.train through the module


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
    app.run(main)
