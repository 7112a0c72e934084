"""Tests for tf_simclr.training.distribute, and the multi-replica equality of tf_simclr.objectives.loss / LARS.

The MirroredStrategy checks run in one subprocess (tests/helpers/distributed_check.py), because logical
CPU devices must be configured before TensorFlow initialises."""

import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from tf_simclr.training import distribute
from tf_simclr.training.distribute import (
    check_batch_divisible,
    global_mean,
    make_strategy,
    parse_tf_config,
    reduce_per_replica,
    replica_share,
    run_and_reduce,
)

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
TOL = 1e-5


@pytest.fixture(scope="module")
def dist_results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.join(TESTS, "helpers", "distributed_check.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, (
        f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    )
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_loss_and_gradients_equal_single_device(dist_results, replicas):
    r = dist_results[f"mirrored_{replicas}"]
    assert r["num_replicas"] == replicas
    assert r["loss_diff"] < TOL
    assert r["grad_diff"] < TOL
    assert r["metric_diff"] < TOL
    assert r["uneven_loss_diff"] < TOL
    assert r["share_diff"] < 1e-6 and r["global_mean_diff"] < 1e-6


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_distillation_terms_equal_single_device(dist_results, replicas):
    """SimCLRv2's distillation and supervised terms, summed over replicas (labelled images on
    some replicas only), equal the one-device value of the global batch."""
    r = dist_results[f"mirrored_{replicas}"]
    assert r["distill_distill_loss"] > 0.1 and r["distill_sup_loss"] > 0.1
    assert r["distill_distill_loss_diff"] < TOL
    assert r["distill_sup_loss_diff"] < TOL
    # The online head's accuracy and labelled count are over the global batch, on every
    # replica (some hold no labelled row), so averaging them over replicas keeps them.
    assert r["labelled_count"] == 4  # the first half of the global batch of 8
    assert r["labelled_sup_acc_diff"] < TOL and r["labelled_labelled_diff"] == 0


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_lars_steps_equal_single_device(dist_results, replicas):
    r = dist_results[f"mirrored_{replicas}"]
    assert r["lars_iterations"] == 2
    assert r["lars_weight_diff"] < TOL


def test_mirrored_lars_model_fit_equals_single_device(dist_results):
    assert dist_results["mirrored_2"]["fit_weight_diff"] < TOL


def test_make_strategy_in_subprocess(dist_results):
    assert dist_results["default_replicas"] == 1
    msg = dist_results["divisible_error"]
    assert "train_batch_size=6" in msg and "(4)" in msg
    assert "before TensorFlow initialises" in dist_results["too_late_error"]


def test_make_strategy_default_in_process():
    strategy = make_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert check_batch_divisible(12, strategy) == 12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="horovod"), "Unknown strategy"),
        (dict(name="mirrored", tpu_name="t"), "only apply to strategy 'tpu'"),
        (dict(name="default", gcp_project="p"), "only apply to strategy 'tpu'"),
        (dict(name="default", num_cpu_devices=2), "only applies to strategy 'mirrored'"),
        (dict(name="tpu", num_cpu_devices=2), "only applies to strategy 'mirrored'"),
        (dict(name="mirrored", num_cpu_devices=0), "integer >= 1"),
    ],
)
def test_make_strategy_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_strategy(**kwargs)


def test_multi_worker_requires_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        make_strategy("multi_worker")


@pytest.mark.parametrize(
    "tf_config, match",
    [
        ("{not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "cluster"),
        ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}', "list"),
        ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "worker"),
        ('{"cluster": {"worker": ["h:1"]}}', "task"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}', "not a job"),
        (
            '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
            "out of range",
        ),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}', "integer"),
    ],
)
def test_parse_tf_config_errors(tf_config, match):
    with pytest.raises(ValueError, match=match):
        parse_tf_config(tf_config)


def test_parse_tf_config_valid(monkeypatch):
    cfg = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    monkeypatch.setenv("TF_CONFIG", cfg)
    assert parse_tf_config()["task"]["index"] == 1


def test_check_batch_divisible_errors():
    class FakeStrategy:
        num_replicas_in_sync = 8

    assert check_batch_divisible(64, FakeStrategy()) == 8
    with pytest.raises(ValueError, match=r"train_batch_size=12 .*replicas \(8\)"):
        check_batch_divisible(12, FakeStrategy())
    with pytest.raises(ValueError, match=r"eval_batch_size=4 "):
        check_batch_divisible(4, FakeStrategy(), flag="eval_batch_size")
    with pytest.raises(ValueError, match="positive integer"):
        check_batch_divisible(0, FakeStrategy())


def test_tpu_without_tpu_gives_clear_error(monkeypatch):
    # No TPU here: only the error path can be tested. Make the resolver fail immediately
    # instead of probing the GCE metadata server.
    def no_tpu(**kwargs):
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", no_tpu)
    with pytest.raises(RuntimeError, match="Could not connect to TPU.*tpu_name='my-tpu'"):
        make_strategy("tpu", tpu_name="my-tpu", tpu_zone="us-central1-b")


def test_single_replica_helpers():
    strategy = tf.distribute.get_strategy()
    out = run_and_reduce(strategy, lambda x: {"a": x * 2.0}, args=(tf.constant(3.0),))
    assert float(out["a"]) == 6.0
    assert float(reduce_per_replica(strategy, tf.constant(1.5), "mean")) == 1.5
    assert float(replica_share(tf.constant(4.0))) == 4.0
    assert float(global_mean(tf.constant([1.0, 2.0, 3.0]), 6)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="op must be one of"):
        reduce_per_replica(strategy, tf.constant(1.0), "max")
    assert distribute.STRATEGIES == ("default", "mirrored", "multi_worker", "tpu")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_two_local_workers():
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="")
        procs.append(
            subprocess.Popen(
                [sys.executable, os.path.join(TESTS, "helpers", "multi_worker_check.py")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:  # a worker whose peer died hangs and ignores SIGTERM
            if proc.poll() is None:
                proc.kill()
    for code, out, err in outputs:
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULTS ")]
        assert code == 0 and lines, f"worker failed:\n{out}\n{err[-3000:]}"
        r = json.loads(lines[-1][len("RESULTS ") :])
        assert r["replicas"] == 2
        assert abs(r["loss"] - r["single"]) < 1e-5
