"""Distribution strategies and per-replica helpers.

Distributed custom training step (what `nt_xent_loss`'s "replica share" is designed for):

    strategy = make_strategy("mirrored")
    per_replica_batch = check_batch_divisible(global_batch, strategy)
    with strategy.scope():
        model = ...; optimizer = build_optimizer(...)

    @tf.function
    def train_step(batch):                     # batch from strategy.distribute_datasets_from_function
        def step_fn(batch):
            with tf.GradientTape() as tape:
                out = nt_xent_loss(z1, z2, temperature=t)       # this replica's share
                loss = out.loss + replica_share(other_replica_invariant_terms)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)  # sums grads over replicas
            return {"loss": out.loss}, contrastive_metrics(out.logits, out.labels)
        sums, means = strategy.run(step_fn, (batch,))
        return reduce_per_replica(strategy, sums, "sum"), reduce_per_replica(strategy, means, "mean")

Per-example terms (e.g. a supervised cross-entropy) become shares with
`global_mean(per_example_loss, global_batch_size)`.

Multi-worker runs (`WorkerRole`, `Watchdog`): only the chief writes into model_dir; a worker
that loses a peer raises WorkerLostError, one whose peers never start or hang is killed by a
watchdog process after `collective_timeout` seconds, with a message naming the unreachable
workers. Recovery: rerun every worker; all restore the chief's last checkpoint in model_dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import tensorflow as tf

from tf_simclr.choices import STRATEGIES

log = logging.getLogger(__name__)

_REDUCE_OPS = {"sum": tf.distribute.ReduceOp.SUM, "mean": tf.distribute.ReduceOp.MEAN}

# Exit status of a multi-worker process that gave up on its peers: EX_TEMPFAIL ("try again"),
# because rerunning every worker resumes from the chief's last checkpoint.
WORKER_LOST_EXIT_CODE = 75
# Seconds a multi-worker process waits for its peers (at startup, and for each training loop)
# before it exits with an error; 0 waits forever.
DEFAULT_COLLECTIVE_TIMEOUT = 600


def _configure_logical_cpus(num: int) -> None:
    """Splits the (first) physical CPU into `num` logical devices, or checks that it already is."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num)]
        )
        return
    except RuntimeError:
        pass  # TF's devices are already initialised; accept them if there are enough.
    have = len(tf.config.list_logical_devices("CPU"))
    if have < num:
        raise RuntimeError(
            f"make_strategy('mirrored', num_cpu_devices={num}) must run before TensorFlow "
            f"initialises its devices, but they are already initialised with {have} logical "
            "CPU device(s). Call make_strategy first thing in the program (before building "
            "models, datasets or running any TF op)."
        )


def parse_tf_config(tf_config: str | None = None) -> dict:
    """Reads and validates TF_CONFIG (the env var when `tf_config` is None) for multi-worker."""
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        raise ValueError(
            "strategy 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}.'
        )
    try:
        config = json.loads(tf_config)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {tf_config!r}") from e
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {tf_config!r}.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            'TF_CONFIG needs a non-empty "cluster" object mapping job names to lists of '
            f'"host:port", got {cluster!r}.'
        )
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError(
                f'TF_CONFIG cluster job {job!r} must be a list of "host:port" strings, '
                f"got {addresses!r}."
            )
    if "worker" not in cluster and "chief" not in cluster:
        raise ValueError('TF_CONFIG "cluster" needs a "worker" (or "chief") job.')
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f'TF_CONFIG needs a "task" object with "type" and "index", got {task!r}.')
    if task["type"] not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {task['type']!r} is not a job of the cluster ({sorted(cluster)})."
        )
    index = task["index"]
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"TF_CONFIG task index must be an integer, got {index!r}.")
    if not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(
            f"TF_CONFIG task index {index} is out of range for job {task['type']!r} "
            f"with {len(cluster[task['type']])} task(s)."
        )
    return config


def make_strategy(
    name="default",
    *,
    tpu_name=None,
    tpu_zone=None,
    gcp_project=None,
    num_cpu_devices=None,
    collective_timeout=DEFAULT_COLLECTIVE_TIMEOUT,
) -> tf.distribute.Strategy:
    """Returns the tf.distribute strategy `name`.

    - "default": the no-op default strategy (one device).
    - "mirrored": MirroredStrategy over all local GPUs (or the CPU). `num_cpu_devices=N` on a
      CPU-only machine splits the CPU into N logical devices and mirrors over them (for tests
      and debugging); this must happen before TF initialises its devices (RuntimeError if not).
    - "multi_worker": MultiWorkerMirroredStrategy from TF_CONFIG (validated first). The
      constructor blocks until every worker of the cluster has started; if that takes more than
      `collective_timeout` seconds (default 600; 0: wait forever) a watchdog prints an error naming the workers it cannot reach
      and kills the process (the blocked constructor holds the GIL and ignores signals).
      `collective_timeout` is ignored by the other strategies.
    - "tpu": TPUStrategy via TPUClusterResolver(tpu_name, tpu_zone, gcp_project). Only argument
      validation is tested here (no TPU available).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; use one of {STRATEGIES}.")
    if name != "tpu" and any(a is not None for a in (tpu_name, tpu_zone, gcp_project)):
        raise ValueError(
            f"tpu_name, tpu_zone and gcp_project only apply to strategy 'tpu', not {name!r}."
        )
    if num_cpu_devices is not None:
        if name != "mirrored":
            raise ValueError(f"num_cpu_devices only applies to strategy 'mirrored', not {name!r}.")
        if (
            isinstance(num_cpu_devices, bool)
            or not isinstance(num_cpu_devices, int)
            or num_cpu_devices < 1
        ):
            raise ValueError(f"num_cpu_devices must be an integer >= 1, got {num_cpu_devices!r}.")

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if num_cpu_devices is None:
            return tf.distribute.MirroredStrategy()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            raise ValueError(
                f"num_cpu_devices is for CPU-only machines, but {len(gpus)} GPU(s) are "
                "visible; omit num_cpu_devices to mirror over the GPUs."
            )
        _configure_logical_cpus(num_cpu_devices)
        return tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(num_cpu_devices)])
    if name == "multi_worker":
        tf_config = parse_tf_config()
        _check_timeout(collective_timeout)
        watchdog = Watchdog(collective_timeout, tf_config=tf_config)
        try:
            with watchdog.phase(
                "Multi-worker startup (waiting for every worker of TF_CONFIG to start)",
                hint="Start every worker listed in TF_CONFIG (each waits for all the others), "
                "or raise --collective_timeout (0 waits forever).",
            ):
                return tf.distribute.MultiWorkerMirroredStrategy()
        finally:
            watchdog.close()
    # TPU.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_name, zone=tpu_zone, project=gcp_project
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"Could not connect to TPU (tpu_name={tpu_name!r}, tpu_zone={tpu_zone!r}, "
            f"gcp_project={gcp_project!r}): {e}. Check the TPU name/zone/project, or use "
            "strategy 'default'/'mirrored' on a machine without TPUs."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def check_batch_divisible(global_batch, strategy, *, flag="train_batch_size") -> int:
    """Returns the per-replica batch size; ValueError naming `flag` if it does not divide."""
    replicas = strategy.num_replicas_in_sync
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"{flag} must be a positive integer, got {global_batch!r}.")
    if global_batch % replicas:
        raise ValueError(
            f"{flag}={global_batch} must be divisible by the {replicas} replicas: each of the "
            f"replicas ({replicas}) gets an equal share of the batch; use a multiple of "
            f"{replicas}."
        )
    return global_batch // replicas


def replica_share(value):
    """`value` / number of replicas inside a replica context (else `value`): for loss terms that
    every replica computes identically (e.g. an L2 penalty), so that summing over replicas
    counts them once."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return value / tf.cast(ctx.num_replicas_in_sync, value.dtype)


def global_mean(per_example, global_batch_size):
    """This replica's share of a global mean: sum(per_example) / global_batch_size (float32)."""
    per_example = tf.cast(per_example, tf.float32)
    return tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)


def reduce_per_replica(strategy, values, op="sum"):
    """Reduces a nest of per-replica values (from `strategy.run`) to tensors: "sum" for loss
    shares, "mean" for per-replica averages such as contrastive metrics."""
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {tuple(_REDUCE_OPS)}, got {op!r}.")
    return tf.nest.map_structure(lambda v: strategy.reduce(_REDUCE_OPS[op], v, axis=None), values)


def run_and_reduce(strategy, fn, args=(), kwargs=None, op="sum"):
    """Runs `fn` on every replica (`strategy.run`) and reduces its outputs with `op`.

    With `fn` returning `nt_xent_loss(...).loss`, `op="sum"` gives the global loss.
    Call it inside a tf.function for speed."""
    per_replica = strategy.run(fn, args=args, kwargs=kwargs)
    return reduce_per_replica(strategy, per_replica, op)


# -- multi-worker robustness -------------------------------------------------------------------
# TF 2.21 facts this relies on (measured with two workers on 127.0.0.1):
# - A worker whose peer crashes gets tf.errors.UnavailableError from its next collective, from
#   the coordination service's heartbeats (~10 s) or at once (connection refused to the chief).
# - A worker whose peer never starts blocks inside the strategy's constructor forever, holding
#   the GIL (other Python threads stop, signal handlers never run): only another process can
#   end it, hence the watchdog process below. A peer that hangs without crashing keeps sending
#   heartbeats, so the others block in their next collective: the watchdog covers that too.
# - CommunicationOptions(timeout_seconds=...) also bounds collectives, but starts one sleeping
#   thread per collective op (thousands per minute with synchronised batch norm), so it is not
#   used here.


class WorkerLostError(RuntimeError):
    """A multi-worker peer was lost during training (crashed, killed, or its machine died)."""


def _check_timeout(seconds) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValueError(f"collective_timeout must be a number of seconds >= 0, got {seconds!r}.")


def is_chief_task(tf_config: dict | None = None) -> bool:
    """Whether this process is the multi-worker chief (task "chief", else worker 0), from
    TF_CONFIG (read from the environment when `tf_config` is None)."""
    config = parse_tf_config() if tf_config is None else tf_config
    task, cluster = config["task"], config["cluster"]
    if "chief" in cluster:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def unreachable_tasks(tf_config: dict | None = None, *, timeout: float = 2.0) -> list[str]:
    """The other tasks of TF_CONFIG whose address refuses TCP connections (not started, or
    dead), e.g. ["worker 1 (10.0.0.2:2222)"]. A task that hangs but is alive is reachable."""
    config = parse_tf_config() if tf_config is None else tf_config
    me = (config["task"]["type"], config["task"]["index"])
    down = []
    for job, addresses in config["cluster"].items():
        for index, address in enumerate(addresses):
            if (job, index) == me:
                continue
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                    pass
            except (OSError, ValueError):
                down.append(f"{job} {index} ({address})")
    return down


def _describe_peers(tf_config: dict | None) -> str:
    try:
        down = unreachable_tasks(tf_config)
    except ValueError:  # no usable TF_CONFIG: nothing to probe
        return "Could not probe the other workers (no TF_CONFIG)."
    if down:
        return f"Not reachable (not started, or dead): {', '.join(down)}."
    return "Every other worker accepts connections, so one of them is alive but stuck."


# The watchdog process: stdlib only, so it starts in milliseconds. It reads JSON lines from stdin
# ({"deadline_in": s, "what": ..., "hint": ...} arms, null disarms); when an armed deadline passes
# it probes the peers, prints the message to the shared stderr and SIGKILLs the watched process.
# EOF on stdin (the watched process closed it or died) ends it.
_WATCHDOG_SCRIPT = r"""
import json, os, select, signal, socket, sys, time
parent, timeout, peers = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
deadline, what, hint, buf = None, "", "", b""
while True:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if select.select([0], [], [], wait)[0]:
        chunk = os.read(0, 65536)
        if not chunk:
            sys.exit(0)
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
            deadline = None if cmd is None else time.monotonic() + cmd["deadline_in"]
            if cmd is not None:
                what, hint = cmd["what"], cmd["hint"]
        continue
    down = []
    for name, host, port in peers:
        try:
            socket.create_connection((host, port), timeout=2.0).close()
        except OSError:
            down.append(f"{name} ({host}:{port})")
    if down:
        peers_msg = "Not reachable (not started, or dead): " + ", ".join(down) + "."
    elif peers:
        peers_msg = "Every other worker accepts connections, so one of them is alive but stuck."
    else:
        peers_msg = ""
    msg = f"{what} did not finish within {timeout:g} s (--collective_timeout). {peers_msg} {hint}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} ERROR tf_simclr.training.distribute: {msg.strip()} Killing process {parent}.\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
    sys.exit(0)
"""


def _peer_addresses(tf_config: dict | None) -> list[tuple[str, str, int]]:
    """(name, host, port) of the other tasks of TF_CONFIG, for the watchdog's probe."""
    if not tf_config:
        return []
    me = (tf_config["task"]["type"], tf_config["task"]["index"])
    peers = []
    for job, addresses in tf_config["cluster"].items():
        for index, address in enumerate(addresses):
            host, _, port = address.rpartition(":")
            if (job, index) != me and port.isdigit():
                peers.append((f"{job} {index}", host.strip("[]"), int(port)))
    return peers


class Watchdog:
    """Kills this process (SIGKILL, after printing a message to stderr) when a phase that waits
    on other workers outlives `timeout` seconds; `timeout=0` disables it.

    A MultiWorkerMirroredStrategy waiting for its peers blocks in C++ while holding the GIL
    (measured with TF 2.21: Python threads stop running, signals are never handled), so the
    watchdog is a small separate process, started at the first `phase`. Its message names the
    phase and the workers of TF_CONFIG that refuse connections.
    """

    def __init__(self, timeout: float, *, tf_config: dict | None = None) -> None:
        _check_timeout(timeout)
        self.timeout = timeout
        self._peers = _peer_addresses(tf_config)
        self._proc = None

    def _send(self, command) -> None:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WATCHDOG_SCRIPT,
                    str(os.getpid()),
                    str(self.timeout),
                    json.dumps(self._peers),
                ],
                stdin=subprocess.PIPE,
            )
        try:
            self._proc.stdin.write((json.dumps(command) + "\n").encode())
            self._proc.stdin.flush()
        except OSError as err:  # the watchdog process died: go on unwatched, but say so
            log.warning("The multi-worker watchdog process is gone (%s); continuing without.", err)
            self._proc = None

    @contextlib.contextmanager
    def phase(self, what: str, *, hint: str = ""):
        """Arms the watchdog for the duration of the `with` block."""
        if self.timeout <= 0:
            yield
            return
        self._send({"deadline_in": self.timeout, "what": what, "hint": hint})
        try:
            yield
        finally:
            self._send(None)

    def close(self) -> None:
        """Stops the watchdog process (closing its stdin ends it)."""
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


# Errors a collective raises when a peer is gone (or the collectives were aborted because of it).
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
)


def _tf_error_summary(err: tf.errors.OpError, max_lines: int = 3) -> str:
    """The informative lines of a TF error (its first line is often 'Graph execution error:')."""
    lines = [ln.strip() for ln in str(err.message).splitlines() if ln.strip()]
    keys = ("aborted by", "unhealthy", "/job:", "refused", "heartbeat", "failed to connect")
    picked = [ln for ln in lines if any(k in ln.lower() for k in keys)][:max_lines]
    return " ".join(picked or lines[-1:])


class WorkerRole:
    """What this process does in a (possibly multi-worker) training run.

    - `chief`: whether it owns model_dir (always True off multi-worker).
    - `write_dir`: where it writes checkpoints: model_dir for the chief; for the other workers
      model_dir/worker_tmp_<task id>, emptied after every save (TF's multi-worker pattern:
      every worker takes part in saving, only the chief's copy is kept).
    - `collective_phase(what)`: arms the watchdog (multi-worker, `collective_timeout` > 0) and
      turns a lost-peer TF error into WorkerLostError naming the unreachable workers.
    Restoring reads model_dir on every worker, so resuming needs model_dir on a filesystem
    that all workers share.
    """

    def __init__(self, strategy, model_dir: str, *, collective_timeout: float = 0) -> None:
        self.multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.model_dir = model_dir
        self.chief = bool(strategy.extended.should_checkpoint) if self.multi_worker else True
        self.task = "chief"
        self._tf_config = None
        if self.multi_worker:
            resolver = strategy.cluster_resolver
            self.task = f"{resolver.task_type} {resolver.task_id}"
            with contextlib.suppress(ValueError):
                self._tf_config = parse_tf_config()
        self.write_dir = (
            model_dir
            if self.chief
            else os.path.join(model_dir, f"worker_tmp_{strategy.cluster_resolver.task_id}")
        )
        self.watchdog = Watchdog(
            collective_timeout if self.multi_worker else 0, tf_config=self._tf_config
        )

    @contextlib.contextmanager
    def collective_phase(self, what: str, *, hint: str = ""):
        """Wraps a call that waits on the other workers (see the class docstring)."""
        if not self.multi_worker:
            yield
            return
        with self.watchdog.phase(f"{what} ({self.task})", hint=hint):
            try:
                yield
            except _PEER_ERRORS as err:
                raise WorkerLostError(
                    f"{what}: lost contact with the multi-worker cluster ({self.task}). "
                    f"{_describe_peers(self._tf_config)} TensorFlow: {_tf_error_summary(err)} "
                    f"{hint}".strip()
                ) from err

    def after_save(self) -> None:
        """Non-chief workers drop the checkpoint they just wrote (the chief's copy is kept)."""
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)

    def checkpoint_path(self, saved: str | None) -> str | None:
        """The path of the chief's copy of the checkpoint `saved` (this worker's save)."""
        if saved is None or self.chief:
            return saved
        return os.path.join(self.model_dir, os.path.basename(saved))

    def check_same_step(self, strategy, step: int, restored: str | None) -> None:
        """Multi-worker: fail clearly unless every worker restored the same step (a worker
        that cannot see the chief's checkpoints would start over and hang the others)."""
        if not self.multi_worker:
            return
        value = tf.constant(float(step), tf.float64)

        @tf.function
        def sums():
            per_replica = strategy.run(lambda: tf.stack([value, value * value]))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        with self.collective_phase("Checking that all workers resume from the same step"):
            total, total_sq = (float(x) for x in sums().numpy())
        n = strategy.num_replicas_in_sync
        if total * total != n * total_sq:  # equality holds only when all values are equal
            raise ValueError(
                f"The workers resumed from different steps ({self.task} restored step {step} "
                f"from {restored or 'no checkpoint'}; the mean over replicas is {total / n:g}). "
                f"Every worker restores from --model_dir={self.model_dir}: put it on a "
                "filesystem shared by all workers (or copy the chief's checkpoints to each)."
            )

    def close(self) -> None:
        """Stops the watchdog and removes a non-chief worker's temporary directory."""
        self.watchdog.close()
        self.after_save()
