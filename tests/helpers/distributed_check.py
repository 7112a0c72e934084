"""Subprocess helper for tests/training/test_distribute.py (logical CPU devices must be configured before
TF initialises, so this runs in a fresh interpreter). Prints one JSON object of measurements.

Checks, for MirroredStrategy over 2 and 4 logical CPUs against one device on the same global
batch: NT-Xent loss (sum of replica shares), all-reduced gradients, contrastive metrics, uneven
local batches, two LARS steps in a custom loop, and two LARS steps through model.fit.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tf_simclr.training.distribute import (  # noqa: E402  (must come before TF initialises)
    check_batch_divisible,
    global_mean,
    make_strategy,
    reduce_per_replica,
    replica_share,
    run_and_reduce,
)

STRATEGY_4 = make_strategy("mirrored", num_cpu_devices=4)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_simclr.objectives.loss import (  # noqa: E402
    contrastive_metrics,
    labelled_cross_entropy,
    nt_xent_loss,
)
from tf_simclr.training.optim import LARS  # noqa: E402

GLOBAL_B, IN_DIM, TAU = 8, 5, 0.2
results = {}


def max_diff(a, b):
    return float(
        max(np.max(np.abs(np.asarray(x) - np.asarray(y))) for x, y in zip(a, b, strict=True))
    )


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((IN_DIM,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(6, name="proj"),
        ]
    )


rng = np.random.default_rng(1)
x1 = rng.normal(size=(GLOBAL_B, IN_DIM)).astype(np.float32)
x2 = (x1 + 0.3 * rng.normal(size=(GLOBAL_B, IN_DIM))).astype(np.float32)
y_reg = rng.normal(size=(GLOBAL_B, 6)).astype(np.float32)

# Single-device references.
ref_model = make_model()
init_weights = ref_model.get_weights()
with tf.GradientTape() as tape:
    out = nt_xent_loss(ref_model(x1), ref_model(x2), temperature=TAU)
ref_loss = float(out.loss)
ref_grads = [g.numpy() for g in tape.gradient(out.loss, ref_model.trainable_variables)]
ref_metrics = {k: float(v) for k, v in contrastive_metrics(out.logits, out.labels).items()}


def lars():
    return LARS(learning_rate=0.5, momentum=0.9, weight_decay=1e-3, eta=0.01)


def lars_steps(model, opt, steps=2):
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = nt_xent_loss(model(x1), model(x2), temperature=TAU).loss
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return [w.numpy() for w in model.trainable_variables]


ref_lars_weights = lars_steps(make_model(), lars())

fit_model = make_model()
fit_model.compile(optimizer=lars(), loss="mse")
fit_model.fit(x1, y_reg, batch_size=GLOBAL_B, epochs=2, shuffle=False, verbose=0)
ref_fit_weights = fit_model.get_weights()


def split_fn(arrays, sizes):
    starts = np.cumsum([0] + list(sizes))

    def fn(ctx):
        i = ctx.replica_id_in_sync_group
        return tuple(tf.constant(a[starts[i] : starts[i + 1]]) for a in arrays)

    return fn


def check_replicas(replicas):
    # Collective group keys start at the same value in every MirroredStrategy; two strategies of
    # different sizes in one process would collide, so offset them (TF's documented test hook).
    tf.distribute.MirroredStrategy._collective_key_base = 1000 * replicas
    strategy = make_strategy("mirrored", num_cpu_devices=replicas)
    r = {"num_replicas": strategy.num_replicas_in_sync}
    b = check_batch_divisible(GLOBAL_B, strategy)
    with strategy.scope():
        model = make_model()
        model.set_weights(init_weights)

    def loss_and_grads(a, c):
        with tf.GradientTape() as tape:
            o = nt_xent_loss(model(a), model(c), temperature=TAU)
        grads = tape.gradient(o.loss, model.trainable_variables)
        # The same all-reduce the Keras optimizers perform before update_step.
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return o.loss, grads, contrastive_metrics(o.logits, o.labels)

    step = tf.function(lambda a, c: strategy.run(loss_and_grads, args=(a, c)))
    inputs = strategy.experimental_distribute_values_from_function(
        split_fn((x1, x2), [b] * replicas)
    )
    loss_pr, grads_pr, metrics_pr = step(*inputs)
    r["loss"] = float(strategy.reduce("SUM", loss_pr, axis=None))
    r["loss_diff"] = abs(r["loss"] - ref_loss)
    r["grad_diff"] = max(
        max_diff([g.numpy() for g in strategy.experimental_local_results(gr)], [ref] * replicas)
        for gr, ref in zip(grads_pr, ref_grads, strict=True)
    )
    metrics = reduce_per_replica(strategy, metrics_pr, "mean")
    r["metric_diff"] = max(abs(float(metrics[k]) - ref_metrics[k]) for k in ref_metrics)

    # replica_share / global_mean: summed over replicas they give the single-device values.
    (col,) = strategy.experimental_distribute_values_from_function(
        split_fn((x1[:, 0],), [b] * replicas)
    )
    helpers = tf.function(
        lambda c: run_and_reduce(
            strategy,
            lambda c: {"share": replica_share(tf.constant(3.0)), "mean": global_mean(c, GLOBAL_B)},
            args=(c,),
        )
    )
    h = helpers(col)
    r["share_diff"] = abs(float(h["share"]) - 3.0)
    r["global_mean_diff"] = abs(float(h["mean"]) - float(x1[:, 0].mean()))

    # Uneven local batches (e.g. a final partial eval batch).
    sizes = [1 + i for i in range(replicas)]
    sizes[-1] += GLOBAL_B - sum(sizes)
    uneven = strategy.experimental_distribute_values_from_function(split_fn((x1, x2), sizes))
    loss_fn = tf.function(
        lambda a, c: run_and_reduce(
            strategy,
            lambda a, c: nt_xent_loss(model(a), model(c), temperature=TAU).loss,
            args=(a, c),
        )
    )
    r["uneven_loss_diff"] = abs(float(loss_fn(*uneven)) - ref_loss)

    # LARS in a custom loop.
    with strategy.scope():
        opt = lars()
        opt.build(model.trainable_variables)

    def train_step(a, c):
        with tf.GradientTape() as tape:
            loss = nt_xent_loss(model(a), model(c), temperature=TAU).loss
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    train = tf.function(lambda a, c: strategy.run(train_step, args=(a, c)))
    for _ in range(2):
        train(*inputs)
    r["lars_weight_diff"] = max_diff(
        [w.numpy() for w in model.trainable_variables], ref_lars_weights
    )
    r["lars_iterations"] = int(opt.iterations.numpy())

    # LARS through model.fit (2 replicas only, to keep the test short).
    results[f"mirrored_{replicas}"] = r
    if replicas != 2:
        return
    with strategy.scope():
        fmodel = make_model()
        fmodel.set_weights(init_weights)
        fmodel.compile(optimizer=lars(), loss="mse")
    fmodel.fit(x1, y_reg, batch_size=GLOBAL_B, epochs=2, shuffle=False, verbose=0)
    r["fit_weight_diff"] = max_diff(fmodel.get_weights(), ref_fit_weights)


for n in (2, 4):
    check_replicas(n)


def check_distillation(replicas):
    """SimCLRv2 distillation terms: the replica shares summed equal the one-device value on
    the global batch, with the labelled images spread unevenly over the replicas."""
    from tf_simclr.objectives.distillation import distillation_terms

    tf.distribute.MirroredStrategy._collective_key_base = 5000 * replicas
    strategy = make_strategy("mirrored", num_cpu_devices=replicas)
    rng = np.random.default_rng(5)
    student = rng.normal(size=(GLOBAL_B, 6)).astype(np.float32)
    teacher = rng.normal(size=(GLOBAL_B, 6)).astype(np.float32) * 2
    # Labelled rows only in the first half: some replicas hold none.
    labels = np.where(np.arange(GLOBAL_B) < GLOBAL_B // 2, rng.integers(0, 6, GLOBAL_B), -1)
    labels = labels.astype(np.int32)
    kw = dict(temperature=2.0, alpha=0.3)
    ref, _ = distillation_terms(student, teacher, labels, **kw)
    local = GLOBAL_B // replicas

    def fn(s, t, y):
        start = tf.distribute.get_replica_context().replica_id_in_sync_group * local
        rows = slice(start, start + local)
        shares, _ = distillation_terms(s[rows], t[rows], y[rows], **kw)
        # The online head's labelled rows: accuracy and count are global on every replica.
        sup = labelled_cross_entropy(s[rows], y[rows])
        return {**shares, "sup_acc": sup.accuracy, "labelled": sup.global_count}

    @tf.function
    def run(s, t, y):
        return strategy.run(fn, args=(s, t, y))

    got = run(tf.constant(student), tf.constant(teacher), tf.constant(labels))
    out = {}
    for name in ("distill_loss", "sup_loss"):
        total = float(reduce_per_replica(strategy, got[name], "sum"))
        out[f"distill_{name}_diff"] = abs(total - float(ref[name]))
        out[f"distill_{name}"] = float(ref[name])
    one_device = labelled_cross_entropy(student, labels)
    for name, expected in (("sup_acc", one_device.accuracy), ("labelled", one_device.count)):
        local_values = strategy.experimental_local_results(got[name])
        out[f"labelled_{name}_diff"] = max(abs(float(v) - float(expected)) for v in local_values)
    out["labelled_count"] = float(one_device.count)
    results[f"mirrored_{replicas}"].update(out)


for n in (2, 4):
    check_distillation(n)

# make_strategy / check_batch_divisible behaviour.
results["default_replicas"] = make_strategy("default").num_replicas_in_sync
try:
    check_batch_divisible(6, STRATEGY_4)
    results["divisible_error"] = None
except ValueError as e:
    results["divisible_error"] = str(e)
try:
    make_strategy("mirrored", num_cpu_devices=8)
    results["too_late_error"] = None
except RuntimeError as e:
    results["too_late_error"] = str(e)
results["ref_loss"] = ref_loss
print("RESULTS " + json.dumps(results))
