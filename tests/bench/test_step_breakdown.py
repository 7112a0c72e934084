"""bench/step_breakdown.py's op split: own times of nested trace events, charged to the op
around them, read from a profiler trace built here with known durations."""

import importlib.util
import os

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "bench",
    "step_breakdown.py",
)


@pytest.fixture(scope="module")
def breakdown():
    spec = importlib.util.spec_from_file_location("step_breakdown", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (begin, end, name) in picoseconds on one compute thread: a forward convolution with a
# parallel-for inside it, the executor's own work, a filter gradient with a ReLU op inside it.
EVENTS = [
    (0, 100, "model/conv/Conv2D:_MklNativeConv2D"),
    (10, 40, "ParallelFor"),
    (100, 150, "ExecutorState::Process"),
    (150, 300, "gradient_tape/model/conv/Conv2DBackpropFilter:Conv2DBackpropFilter"),
    (200, 220, "model/relu:Relu"),
]


def test_own_times_charge_nested_runtime_events_to_their_op(breakdown):
    charged = {}
    for op, own in breakdown.own_times(EVENTS):
        charged[op] = charged.get(op, 0) + own
    assert charged == {
        "model/conv/Conv2D:_MklNativeConv2D": 100,  # 70 of its own + the parallel-for's 30
        None: 50,
        "gradient_tape/model/conv/Conv2DBackpropFilter:Conv2DBackpropFilter": 130,
        "model/relu:Relu": 20,
    }
    assert sum(charged.values()) == 300  # the thread's busy time, counted once


def _trace(path, lines):
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    ids = {}
    for line_name, events in lines.items():
        line = plane.lines.add(name=line_name)
        for begin, end, name in events:
            if name not in ids:
                ids[name] = len(ids) + 1
                plane.event_metadata[ids[name]].name = name
            line.events.add(metadata_id=ids[name], offset_ps=begin, duration_ps=end - begin)
    with open(path, "wb") as f:
        f.write(space.SerializeToString())


def test_op_shares_read_the_compute_threads_of_a_trace(breakdown, tmp_path):
    path = str(tmp_path / "host.xplane.pb")
    _trace(
        path,
        {
            "tf_Compute/1": EVENTS,
            "tf_numa_-1_Eigen/2": [(0, 100, "model/bn/FusedBatchNormGradV3:FusedBatchNormGradV3")],
            # Not compute threads: the Python thread waits for the step, tf.data makes batches.
            "python": [(0, 1000, "train_loop")],
            "tf_data_private_threadpool/3": [(0, 1000, "decode:DecodeImage")],
        },
    )
    shares = breakdown.op_shares(path)
    assert list(shares) == breakdown.OP_CATEGORIES
    assert sum(shares.values()) == pytest.approx(1.0)
    expected = {
        "convolution forward": 100 / 400,
        "convolution backward: filter gradients": 130 / 400,
        "batch norm backward": 100 / 400,
        "other ops, forward and loss": 20 / 400,
        "TF executor between ops": 50 / 400,
    }
    for name, share in shares.items():
        assert share == pytest.approx(expected.get(name, 0.0)), name
