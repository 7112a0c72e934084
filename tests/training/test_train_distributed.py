"""Distributed training through the real command line (`python run.py --mode=train ...`).

- MirroredStrategy over 2 logical CPUs reproduces the single-device loss curve and weights.
- Two MultiWorkerMirroredStrategy workers on 127.0.0.1 finish with bit-identical weights, equal
  to those of one device fed the same global batches, also after a rerun resumes them (each
  worker's data stream continues after its own batches; slow); only the chief writes into the
  shared model_dir.
- A worker that never starts, or dies during training, ends the others with a clear error in
  bounded time instead of a hang; rerunning all workers resumes from the checkpoint (slow).

Every distributed run is a subprocess (logical devices and TF_CONFIG must be set before TF
starts) in its own process group, killed with SIGKILL on timeout, so no test can hang. The
default-run subprocesses are all started together by one fixture: they are mostly TF start-up
and tracing, so overlapping them roughly halves the wall time. Their one-device references run
in the test's own process meanwhile, from the same flags (the Config `run.py FLAGS` builds):
TensorFlow is started there already, and they need nothing set before it starts.
"""

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import dist_run
from helpers import mixed_tfds as mixed
from helpers.cli import config_from_argv
from helpers.configs import TINY_SETTINGS, as_flags, tiny_config

from tf_simclr import factory
from tf_simclr.config import Config, ConfigError
from tf_simclr.training import distribute
from tf_simclr.workflows import runner
from tf_simclr.workflows import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "run.py")
DIST_RUN = os.path.join(
    ROOT, "tests", "helpers", "dist_run.py"
)  # run.py + a dump of the final weights

# The tiny settings (tests/helpers/configs.py) as flags: pretraining, global_bn on by default.
# The tolerances below were set at learning rate 1.0; a larger one scales LARS's reduction-order
# noise. (The tiny settings fix --precision=float32: these tolerances are float32's.) They were
# also set on the stream of the default --shuffle_buffer (the whole embedded set shuffled), which
# these runs keep: on the stream of the tiny settings' 256-image buffer the last block's
# batch-norm momentum slots, sums that nearly cancel, differ by 5e-3 (mirrored) and 1e-2 (two
# workers) of their scale, reduction order alone (the losses still agree to 1e-5).
TINY = as_flags({"mode": "train", **TINY_SETTINGS, "learning_rate": 1.0, "shuffle_buffer": 10_000})
# Mirrored (2 replicas) or two workers vs one device: the runs see the same global batches, so
# only the float32 summation order differs (cross-replica all-reduce of the gradients and of the
# synchronised batch-norm moments). Broken synchronisation is far outside: --global_bn=false
# moves the loss by 3e-3 (step 2) and 8e-3 (step 4) relative.
LOSS_RTOL = 1e-5  # observed 2.4e-7 relative after 4 LARS steps (mirrored)
# Weights (mirrored: the checkpoints, optimizer slots included), as _max_relative_diff measures
# them (pytest -s prints it), on AMD EPYC (AVX2): mirrored after 4 steps 1.6e-4; two workers
# after 2 steps 6.6e-5, resumed to step 4 2.6e-4. A resumed worker whose stream restarts at its
# first batch: 0.61.
WEIGHT_RTOL = 1e-3
SCALE_FLOOR = 1e-2
JOB_TIMEOUT = 900  # hard limit per subprocess; the machine is shared and may be very busy
STARTUP_TIMEOUT = 10  # --collective_timeout of the missing-worker test


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tf_config(ports, index):
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


class Job:
    """A subprocess in its own process group, output in a log file (no pipe can fill up)."""

    def __init__(self, name, args, log_dir, tf_config=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        env.pop("TF_CONFIG", None)
        if tf_config:
            env["TF_CONFIG"] = tf_config
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.elapsed = None

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def tail(self, lines=25):
        keep = [ln for ln in self.log().splitlines() if not ln.startswith(("I0000", "W0000"))]
        return "\n".join(keep[-lines:])

    def wait(self, timeout=JOB_TIMEOUT):
        """Exit status; kills the job and fails the test when it outlives `timeout`."""
        try:
            code = self.proc.wait(timeout=max(0.0, self.started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not finish within {timeout} s:\n{self.tail()}")
        if self.elapsed is None:
            self.elapsed = time.monotonic() - self.started
        return code

    def wait_for_line(self, text, timeout=JOB_TIMEOUT):
        while text not in self.log():
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited before logging {text!r}:\n{self.tail()}")
            if time.monotonic() - self.started > timeout:
                pytest.fail(f"{self.name} did not log {text!r} within {timeout} s")
            time.sleep(0.5)

    def kill(self):
        """SIGKILL the whole group (a worker blocked on its peers ignores SIGTERM)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


class InProcessRun:
    """`run.py FLAGS --strategy=default` run in this process (runner.run on the Config the
    flags give), done when constructed; the same interface as Job and the same outputs as
    tests/helpers/dist_run.py: the model_dir, a log file (tf_simclr's log records) and
    tmp/NAME.npz. as_workers=N: fed the global batches of N workers' pipelines (dist_run.py
    --as_workers=N)."""

    def __init__(self, name, flags, tmp, as_workers=None):
        self.name = name
        self.log_path = os.path.join(tmp, f"{name}.log")
        config = config_from_argv(*TINY, "--strategy=default", *flags)
        states = []
        logger = logging.getLogger("tf_simclr")
        level = logger.level
        with open(self.log_path, "w", encoding="utf-8") as log:
            handler = logging.StreamHandler(log)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            try:
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(train_lib, "train", dist_run.recording(train_lib.train, states))
                    if as_workers:
                        twin = dist_run.workers_training_dataset_fn(
                            factory.training_dataset_fn, as_workers
                        )
                        patch.setattr(factory, "training_dataset_fn", twin)
                    runner.run(config)
            finally:
                logger.removeHandler(handler)
                logger.setLevel(level)
        np.savez(os.path.join(tmp, f"{name}.npz"), **dist_run.weights_of(states[-1]))

    def log(self):
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()

    def tail(self, lines=25):
        return "\n".join(self.log().splitlines()[-lines:])

    def wait(self, timeout=None):
        return 0  # an error in the run fails the fixture that made it

    def kill(self):
        pass


def _workers(name, tmp, model_dir, flags, ports=None, indices=(0, 1)):
    """Workers `indices` of a two-worker cluster on 127.0.0.1 (model_dir: one, or one each)."""
    ports = ports or _free_ports(2)
    dirs = model_dir if isinstance(model_dir, list) else [model_dir] * 2
    return [
        Job(
            f"{name}{i}",
            [
                DIST_RUN,
                str(tmp / f"{name}{i}.npz"),
                "--strategy=multi_worker",
                f"--model_dir={dirs[i]}",
                *TINY,
                *flags,
            ],
            tmp,
            tf_config=_tf_config(ports, i),
        )
        for i in indices
    ], ports


def _history(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.endswith("VARIABLE_VALUE")
    }


def _digest(array):
    array = np.ascontiguousarray(array)
    return (array.shape, array.dtype.str, hashlib.sha256(array.tobytes()).hexdigest())


def _load_weights(path):
    """(step, trainable variable paths, {path: value}) from a tests/helpers/dist_run.py dump."""
    with np.load(path) as data:
        weights = {k: data[k] for k in data.files if not k.startswith("_")}
        return int(data["_step"]), set(data["_trainable"].tolist()), weights


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory):
    """Starts the subprocesses of the selected default tests at once, runs their one-device
    references in this process meanwhile; kills leftovers."""
    wanted = {item.originalname for item in request.session.items if item.module is request.module}
    tmp = tmp_path_factory.mktemp("distributed")
    mirrored = "test_mirrored_matches_single_device" in wanted
    workers = wanted & {
        "test_two_workers_match_one_device",
        "test_two_workers_resume_their_streams",
    }
    started = {}
    if mirrored:
        flags = ["--train_steps=4", "--strategy=mirrored", "--num_cpu_devices=2"]
        args = [RUN, f"--model_dir={tmp / 'mirrored'}", *TINY, *flags]
        started["mirrored"] = Job("mirrored", args, tmp)
    if workers:
        started["mw"], _ = _workers("mw", tmp, tmp / "mw", ["--train_steps=2"])
    if "test_missing_worker_fails_fast_at_startup" in wanted:
        started["alone"] = _start_alone(tmp, index=0)  # the chief, without worker 1
    if "test_mirrored_online_head_on_partly_labelled_batches" in wanted:
        data_dir = request.getfixturevalue("mixed_tfds")
        mixed_flags = [
            f"--dataset={mixed.NAME}",
            f"--data_dir={data_dir}",
            f"--train_split={mixed.MIXED_SPLIT}",
            "--train_steps=2",
            "--steps_per_loop=1",
        ]
        for name, flags in [
            ("mixed_single", ["--strategy=default"]),
            ("mixed_mirrored", ["--strategy=mirrored", "--num_cpu_devices=2"]),
        ]:
            args = [RUN, f"--model_dir={tmp / name}", *TINY, *mixed_flags, *flags]
            started[name] = Job(name, args, tmp)
    try:
        if mirrored:
            flags = [f"--model_dir={tmp / 'single'}", "--train_steps=4"]
            started["single"] = InProcessRun("single", flags, tmp)
        if workers:  # the two workers' one-device twin
            flags = [f"--model_dir={tmp / 'one'}", "--train_steps=2"]
            started["one"] = InProcessRun("one", flags, tmp, as_workers=2)
        yield started, tmp
    finally:
        for value in started.values():
            for job in value if isinstance(value, list) else [value]:
                job.kill()


# Slow: two more TF processes; tests/training/test_distribute.py checks the same global
# labelled-row reduction in-process on 2 and 4 replicas.
@pytest.mark.slow
def test_mirrored_online_head_on_partly_labelled_batches(jobs):
    """Pretraining on train+unlabelled (tests/helpers/mixed_tfds.py: each step's batch of 32 is
    the whole split, 12 labelled images falling unevenly on the 2 replicas): the online head's
    loss and accuracy are over the global batch's labelled images, as on one device, and the
    step reports all 12 of them."""
    started, tmp = jobs
    for job in (started["mixed_single"], started["mixed_mirrored"]):
        assert job.wait() == 0, f"{job.name} failed:\n{job.tail()}"
    ref, got = _history(tmp / "mixed_single"), _history(tmp / "mixed_mirrored")
    assert [r["step"] for r in ref] == [r["step"] for r in got] == [1, 2]
    for r, g in zip(ref, got, strict=True):
        assert r["sup_labelled_examples"] == g["sup_labelled_examples"] == mixed.NUM_TRAIN
        for key in ("loss", "contrastive_loss", "sup_loss", "sup_acc"):
            assert g[key] == pytest.approx(r[key], rel=LOSS_RTOL), (r["step"], key)


def test_mirrored_matches_single_device(jobs):
    started, tmp = jobs
    single, mirrored = started["single"], started["mirrored"]
    for job in (single, mirrored):
        assert job.wait() == 0, f"{job.name} failed:\n{job.tail()}"
    assert "Strategy mirrored with 2 replica(s)" in mirrored.log()
    ref, got = _history(tmp / "single"), _history(tmp / "mirrored")
    assert [r["step"] for r in ref] == [r["step"] for r in got] == [2, 4]
    for r, g in zip(ref, got, strict=True):
        for key in ("loss", "contrastive_loss", "sup_loss"):
            assert g[key] == pytest.approx(r[key], rel=LOSS_RTOL), (r["step"], key)
        assert g["learning_rate"] == pytest.approx(r["learning_rate"], rel=1e-6, abs=1e-9)
    # The final checkpoints (model, optimizer slots, step) agree variable by variable.
    ref_ckpt = _checkpoint_tensors(tmp / "single" / "ckpt-4")
    got_ckpt = _checkpoint_tensors(tmp / "mirrored" / "ckpt-4")
    assert _max_relative_diff(ref_ckpt, got_ckpt) <= WEIGHT_RTOL


def test_two_workers_match_one_device(jobs):
    """Two workers end with bit-identical weights, which equal (to float32 reduction-order
    noise) those of one device trained on the same global batches: each worker's batch from
    its own pipeline, concatenated in worker order."""
    started, tmp = jobs
    workers, one = started["mw"], started["one"]
    for job in [*workers, one]:
        assert job.wait() == 0, f"{job.name} failed:\n{job.tail()}"
    for job in workers:
        assert "Strategy multi_worker with 2 replica(s)" in job.log()
    assert "Strategy default with 1 replica(s)" in one.log()
    (step0, trainable, chief), (step1, _, other) = (
        _load_weights(tmp / f"mw{i}.npz") for i in (0, 1)
    )
    assert step0 == step1 == 2
    assert sorted(chief) == sorted(other) and len(chief) > 100
    for key in chief:  # trainable weights and batch-norm moving statistics alike
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    step, _, single = _load_weights(tmp / "one.npz")
    assert step == 2
    assert _max_relative_diff(single, chief) <= WEIGHT_RTOL
    # The chief's checkpoint holds every one of these weights, batch-norm statistics included
    # (matched by content, so the test does not depend on the checkpoint's key layout).
    saved = {}
    for value in _checkpoint_tensors(tmp / "mw" / "ckpt-2").values():
        saved[_digest(value)] = saved.get(_digest(value), 0) + 1
    assert len(trainable) > 50
    for key in sorted(chief):
        assert saved.get(_digest(chief[key]), 0) > 0, f"{key} is not in the chief's checkpoint"
        saved[_digest(chief[key])] -= 1
    # Only the chief wrote into the shared model_dir; worker 1's temporary copy is gone.
    names = sorted(os.listdir(tmp / "mw"))
    assert not [n for n in names if n.startswith("worker_tmp")], names
    assert [r["step"] for r in _history(tmp / "mw")] == [2]  # one record, not one per worker
    assert "config.json" in names and "ckpt-2.index" in names


# Slow: three more TF processes. The default run covers its parts: two workers match one device
# (above), a resumed worker's pipeline continues its own stream (in-process, below), and a
# rerun resumes bit-identically (tests/training/test_reliability.py).
@pytest.mark.slow
def test_two_workers_resume_their_streams(jobs):
    """Rerun with --train_steps=4 over the 2-step runs: both workers resume from ckpt-2 and
    their pipelines continue after the batches they already gave (the per-worker offset of
    factory._start_batch), so they end where one device ends on the same 4 global batches,
    taken without interruption from fresh streams (the first two skipped by iterating)."""
    started, tmp = jobs
    for job in [*started["mw"], started["one"]]:
        assert job.wait() == 0, f"{job.name} failed:\n{job.tail()}"
    resumed, _ = _workers("mwres", tmp, tmp / "mw", ["--train_steps=4"])
    one = InProcessRun(
        "oneres", [f"--model_dir={tmp / 'one'}", "--train_steps=4"], tmp, as_workers=2
    )
    started["resumed"] = [*resumed, one]  # killed by the fixture if the test fails
    for job in [*resumed, one]:
        assert job.wait() == 0, f"{job.name} failed:\n{job.tail()}"
    for job, model_dir in ((resumed[0], tmp / "mw"), (resumed[1], tmp / "mw"), (one, tmp / "one")):
        assert f"Resuming from {model_dir}/ckpt-2 at step 2." in job.log(), job.tail()
    (step0, _, chief), (step1, _, other) = (_load_weights(tmp / f"mwres{i}.npz") for i in (0, 1))
    assert step0 == step1 == 4
    for key in chief:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    step, _, single = _load_weights(tmp / "oneres.npz")
    assert step == 4
    assert _max_relative_diff(single, chief) <= WEIGHT_RTOL
    assert [r["step"] for r in _history(tmp / "mw")] == [2, 4]


def _max_relative_diff(ref: dict, got: dict) -> float:
    """Largest |got - ref| over the variables, each relative to its own largest |ref| or to
    SCALE_FLOOR if smaller (a batch-norm offset of size 2e-4 still near its zero start differs
    by ~2e-6 from reduction order alone: relative to itself that would read 1e-2)."""
    assert sorted(ref) == sorted(got) and len(ref) > 100
    worst = 0.0
    for key, value in ref.items():
        if value.size:
            diff = float(np.max(np.abs(got[key] - value)))
            worst = max(worst, diff / max(float(np.max(np.abs(value))), SCALE_FLOOR))
    print(f"max relative difference {worst:.2e}")  # (pytest -s: how the tolerances were set)
    return worst


def _start_alone(tmp, index):
    """Worker `index` of a two-worker cluster whose other worker is never started."""
    flags = ["--train_steps=2", f"--collective_timeout={STARTUP_TIMEOUT}"]
    (job,), _ = _workers(f"alone{index}_", tmp, tmp / f"alone{index}", flags, indices=(index,))
    return job


def _check_startup_failure(job, missing):
    code = job.wait(timeout=STARTUP_TIMEOUT + 300)  # TF start-up alone can take a minute here
    log = job.log()
    assert code == -signal.SIGKILL, log  # killed by its watchdog: it was blocked in C++
    assert f"did not finish within {STARTUP_TIMEOUT} s (--collective_timeout)" in log, log
    assert f"Not reachable (not started, or dead): worker {missing} (127.0.0.1:" in log, log
    assert "Start every worker listed in TF_CONFIG" in log
    assert "Training pretrain" not in log


def test_missing_worker_fails_fast_at_startup(jobs):
    started, _ = jobs
    _check_startup_failure(started["alone"], missing=1)


@pytest.mark.slow
def test_missing_chief_fails_fast_at_startup(tmp_path):
    job = _start_alone(tmp_path, index=1)
    try:
        _check_startup_failure(job, missing=0)
    finally:
        job.kill()


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker_lost", "chief_lost"])
def test_lost_worker_ends_the_others_and_rerun_resumes(tmp_path, victim):
    model_dir = tmp_path / "run"
    flags = ["--train_steps=1000", "--steps_per_loop=1", "--log_every_steps=1"]
    workers, ports = _workers("w", tmp_path, model_dir, flags)
    try:
        survivor = workers[1 - victim]
        survivor.wait_for_line("step 3/1000")  # training is under way on both workers
        workers[victim].kill()
        killed_at = time.monotonic()
        code = survivor.wait(timeout=killed_at - survivor.started + 180)
        waited = time.monotonic() - killed_at
    finally:
        for job in workers:
            job.kill()
    log = survivor.log()
    assert code == distribute.WORKER_LOST_EXIT_CODE, log
    assert waited < 120, f"took {waited:.0f} s"
    assert "lost contact with the multi-worker cluster" in log
    assert f"Not reachable (not started, or dead): worker {victim} (127.0.0.1:" in log
    assert "Rerun every worker with the same command" in log
    assert "Traceback" not in log
    last = max(int(n[5:-6]) for n in os.listdir(model_dir) if n.endswith(".index"))
    flags = ["--steps_per_loop=1", f"--train_steps={last + 2}"]
    if victim == 0:
        # A rerun where worker 1 cannot see the chief's checkpoints (its own, empty model_dir)
        # is refused by both workers instead of training from mismatched states.
        dirs = [model_dir, tmp_path / "elsewhere"]
        workers, _ = _workers("mismatch", tmp_path, dirs, flags)
        try:
            for job in workers:
                assert job.wait() == 1, job.tail()
                assert "The workers resumed from different steps" in job.log(), job.tail()
                assert "filesystem shared by all workers" in job.log()
        finally:
            for job in workers:
                job.kill()
        return
    # Recovery: rerun every worker over the same model_dir; both resume from the last checkpoint.
    workers, _ = _workers("again", tmp_path, model_dir, flags)
    try:
        for job in workers:
            assert job.wait() == 0, job.tail()
            assert f"Resuming from {model_dir}/ckpt-{last} at step {last}." in job.log()
    finally:
        for job in workers:
            job.kill()
    (step0, _, chief), (step1, _, other) = (
        _load_weights(tmp_path / f"again{i}.npz") for i in (0, 1)
    )
    assert step0 == step1 == last + 2
    for key in chief:
        np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
    steps = [r["step"] for r in _history(model_dir)]
    assert steps == list(range(1, last + 3))


# -- fast checks of the multi-worker helpers (no cluster) -------------------------------------


def test_a_resumed_worker_pipeline_continues_its_own_stream(tmp_path, mixed_tfds):
    """Per-worker pipelines (multi-worker, TPU hosts) make per-replica batches and each step
    takes one batch per local replica: resumed at step k, a worker's pipeline must continue
    after k * replicas / pipelines of its own batches (compared with a fresh stream read on).
    Here 2 local replicas per pipeline (a TPU host's case); one replica per worker is
    test_two_workers_resume_their_streams. On the session's tiny TFDS dataset (12 images, 6
    per pipeline: the 6 batches skipped run through several epochs), not the embedded
    dataset, whose 5000 images each pipeline would read to fill its shuffle buffer."""
    replicas, pipelines = 4, 2
    data = dict(dataset=mixed.NAME, data_dir=str(mixed_tfds))
    config = tiny_config(tmp_path, train_batch_size=16, **data)
    start_step = 3
    taken = start_step * replicas // pipelines
    for pid in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pid, replicas)
        fresh = factory.training_dataset_fn(config, 16)(context)
        resumed = factory.training_dataset_fn(config, 16, start_step=start_step)(context)
        for want, got in zip(fresh.skip(taken).take(1), resumed.take(1), strict=True):
            assert got["view1"].shape[0] == 16 // replicas
            for key in ("view1", "view2", "label"):
                np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)


def test_unreachable_tasks_names_workers_that_refuse_connections():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    (closed,) = _free_ports(1)
    try:
        config = {
            "cluster": {
                "worker": [
                    "127.0.0.1:1",  # this task: never probed
                    f"127.0.0.1:{listener.getsockname()[1]}",
                    f"127.0.0.1:{closed}",
                ]
            },
            "task": {"type": "worker", "index": 0},
        }
        assert distribute.unreachable_tasks(config) == [f"worker 2 (127.0.0.1:{closed})"]
    finally:
        listener.close()


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
    ],
)
def test_is_chief_task(cluster, task, chief):
    config = {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}
    assert distribute.is_chief_task(config) is chief


def test_watchdog_kills_a_stuck_process_and_names_the_missing_peer():
    """The watchdog process itself (stdlib only): armed, it SIGKILLs the watched process when
    the deadline passes, after printing which peer refuses connections."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (closed,) = _free_ports(1)
    peers = json.dumps([["worker 1", "127.0.0.1", closed]])
    dog = subprocess.Popen(
        [sys.executable, "-c", distribute._WATCHDOG_SCRIPT, str(victim.pid), "0.5", peers],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        dog.stdin.write(json.dumps({"deadline_in": 0.5, "what": "Step 7", "hint": "Rerun."}) + "\n")
        dog.stdin.flush()
        assert victim.wait(timeout=30) == -signal.SIGKILL
        err = dog.communicate(timeout=30)[1]
    finally:
        victim.kill()
        dog.kill()
    assert "Step 7 did not finish within 0.5 s (--collective_timeout)." in err
    assert f"Not reachable (not started, or dead): worker 1 (127.0.0.1:{closed}). Rerun." in err


def test_watchdog_disarmed_in_time_leaves_the_process_alone():
    dog = distribute.Watchdog(30)
    with dog.phase("quick"):
        pass
    proc = dog._proc
    assert proc is not None and proc.poll() is None  # started, waiting
    dog.close()
    assert proc.returncode == 0
    off = distribute.Watchdog(0)
    with off.phase("unwatched"):
        pass
    assert off._proc is None


def test_worker_role_on_one_machine_is_a_plain_chief(tmp_path):
    role = distribute.WorkerRole(tf.distribute.get_strategy(), str(tmp_path), collective_timeout=5)
    assert role.chief and not role.multi_worker and role.write_dir == str(tmp_path)
    role.check_same_step(tf.distribute.get_strategy(), 3, None)  # no-op off multi-worker
    with pytest.raises(tf.errors.UnavailableError):  # errors pass through unchanged
        with role.collective_phase("step 1"):
            raise tf.errors.UnavailableError(None, None, "peer gone")
    assert role.checkpoint_path(str(tmp_path / "ckpt-2")) == str(tmp_path / "ckpt-2")
    role.close()
    assert tmp_path.exists()


def test_tf_error_summary_keeps_the_lines_that_name_the_peer():
    err = tf.errors.UnavailableError(
        None,
        None,
        "Graph execution error:\n\nDetected at node CollectiveReduceV2\nCollective ops is "
        "aborted by: The following tasks are unhealthy (stopped sending heartbeats):\n"
        "/job:worker/replica:0/task:1\nThe tasks have crashed.",
    )
    summary = distribute._tf_error_summary(err)
    assert "aborted by" in summary and "/job:worker/replica:0/task:1" in summary
    assert "Graph execution error" not in summary


def test_collective_timeout_validation(monkeypatch):
    assert Config().collective_timeout == distribute.DEFAULT_COLLECTIVE_TIMEOUT
    with pytest.raises(ConfigError, match="--collective_timeout must be >= 0"):
        Config(collective_timeout=-1)
    assert Config(collective_timeout=5).hash() == Config().hash()  # not a model setting
    monkeypatch.setenv("TF_CONFIG", _tf_config([1, 2], 0))
    with pytest.raises(ValueError, match="collective_timeout must be a number"):
        distribute.make_strategy("multi_worker", collective_timeout=-1)
    with pytest.raises(ValueError, match="collective_timeout must be a number"):
        distribute.make_strategy("multi_worker", collective_timeout="soon")
