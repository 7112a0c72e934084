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
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
_REDUCE_OPS = {"sum": tf.distribute.ReduceOp.SUM, "mean": tf.distribute.ReduceOp.MEAN}


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
) -> tf.distribute.Strategy:
    """Returns the tf.distribute strategy `name`.

    - "default": the no-op default strategy (one device).
    - "mirrored": MirroredStrategy over all local GPUs (or the CPU). `num_cpu_devices=N` on a
      CPU-only machine splits the CPU into N logical devices and mirrors over them (for tests
      and debugging); this must happen before TF initialises its devices (RuntimeError if not).
    - "multi_worker": MultiWorkerMirroredStrategy from TF_CONFIG (validated first). Note that
      the constructor blocks until every worker of the cluster has started.
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
        parse_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
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
            f"{flag}={global_batch} is not divisible by the number of replicas ({replicas}); "
            f"use a multiple of {replicas}."
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
