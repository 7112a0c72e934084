"""Benchmark the SavedModel export (workflows/export.py) of a SimCLR ResNet.

Builds a SimCLRModel (synchronised batch norm and a supervised head, as a training run
exports it), exports it once to warm TensorFlow up (a separate tiny model, so none of the
timed model's traces are reused), then times ``export_saved_model`` of the model and prints
JSON: the seconds, and what was traced (deterministic, so comparable under any load): the
number of function graphs built (``traced_graphs``, split into during ``_HubModule``
construction and during ``tf.saved_model.save``), the placeholders those graphs hold (each
variable a graph uses is captured as one) and the concrete functions the saved module
holds.

Example: python bench/bench_export.py --depth 18 --width 0.125 --image-size 16
Old vs new, interleaved: python bench/compare_checkouts.py --script bench_export.py OLD NEW \
    -- --depth 18 --width 0.125 --image-size 16
(copy this script into OLD's bench/ if OLD predates it).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from default_run import cpu_model  # noqa: E402  (bench/, the script's own folder)
from tensorflow.python.framework import func_graph as func_graph_module  # noqa: E402

from tf_simclr.network.model import build_model  # noqa: E402
from tf_simclr.workflows import export  # noqa: E402


class _TraceCounter:
    """Counts the function graphs TensorFlow builds (every tf.function trace builds one) and
    the placeholders in them, by phase. Patches func_graph_from_py_func while active."""

    def __init__(self):
        self.phase = "other"
        self.graphs = collections.Counter()
        self.placeholders = collections.Counter()
        self._real = func_graph_module.func_graph_from_py_func

    def _counting(self, *args, **kwargs):
        graph = self._real(*args, **kwargs)
        self.graphs[self.phase] += 1
        self.placeholders[self.phase] += sum(
            op.type == "Placeholder" for op in graph.get_operations()
        )
        return graph

    def __enter__(self):
        func_graph_module.func_graph_from_py_func = self._counting
        return self

    def __exit__(self, *exc):
        func_graph_module.func_graph_from_py_func = self._real


def _model(depth: int, width: float, image_size: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = build_model(resnet_depth=depth, width_multiplier=width, global_bn=True, num_classes=10)
    model(np.zeros((1, image_size, image_size, 3), "float32"), training=False)
    return model


def _saved_concrete_functions(path: str) -> int:
    from tensorflow.python.saved_model import loader_impl

    return len(
        loader_impl.parse_saved_model(path).meta_graphs[0].object_graph_def.concrete_functions
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--image-size", type=int, default=16)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench_export_")
    # Warm-up: TensorFlow's first save pays one-off imports and kernel registrations.
    export.export_saved_model(_model(18, 0.0625, 8), os.path.join(workdir, "warm"), step=0)
    model = _model(args.depth, args.width, args.image_size)

    counter = _TraceCounter()
    real_init, real_save = export._HubModule.__init__, tf.saved_model.save

    def init(self, *a, **kw):
        counter.phase = "module"
        real_init(self, *a, **kw)
        counter.phase = "other"

    def save(*a, **kw):
        counter.phase = "save"
        real_save(*a, **kw)
        counter.phase = "other"

    export._HubModule.__init__, tf.saved_model.save = init, save
    try:
        with counter:
            start = time.perf_counter()
            path = export.export_saved_model(
                model, os.path.join(workdir, "timed"), step=1, image_size=args.image_size
            )
            seconds = time.perf_counter() - start
    finally:
        export._HubModule.__init__, tf.saved_model.save = real_init, real_save
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "load_1min": round(os.getloadavg()[0], 2),
                "depth": args.depth,
                "width": args.width,
                "image_size": args.image_size,
                "variables": len(model.variables),
                "export_s": round(seconds, 3),
                "traced_graphs": sum(counter.graphs.values()),
                "traced_graphs_by_phase": dict(counter.graphs),
                "placeholders": sum(counter.placeholders.values()),
                "placeholders_by_phase": dict(counter.placeholders),
                "saved_concrete_functions": _saved_concrete_functions(path),
            }
        )
    )


if __name__ == "__main__":
    main()
