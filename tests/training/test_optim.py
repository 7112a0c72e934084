"""Tests for tf_simclr.training.optim against NumPy references written from the update rules.

(LARS under MirroredStrategy is tested in test_distribute.py, in a subprocess.)"""

import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.numpy_refs import warmup_cosine

from tf_simclr.training.optim import (
    DEFAULT_EXCLUDE,
    LARS,
    NORM_AND_BIAS_PATTERNS,
    SGDL2,
    AdamL2,
    AdamWExclude,
    WarmupCosineDecay,
    build_optimizer,
    matches_any,
    scale_learning_rate,
)

RTOL, ATOL = 1e-5, 1e-6


def make_model(seed=0):
    """Paths: dense/{kernel,bias}, batch_normalization/{gamma,beta}, zero/{kernel,bias},
    head_supervised/{kernel,bias}; zero/kernel starts at 0 (trust ratio falls back to 1)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="dense"),
            keras.layers.BatchNormalization(
                name="batch_normalization", gamma_initializer="random_uniform"
            ),
            keras.layers.Dense(3, name="zero", kernel_initializer="zeros"),
            keras.layers.Dense(2, name="head_supervised", bias_initializer="random_normal"),
        ],
        name="net",
    )


def random_grads(variables, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=v.shape).astype(np.float32) for v in variables]


def np_lars(ws, grads_per_step, lrs, *, momentum, wd, eta, decay, adapt, nesterov, classic):
    """NumPy LARS (SimCLR reference semantics), float64."""
    ws = [np.asarray(w, np.float64) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        for i, g in enumerate(grads):
            w, g = ws[i], np.asarray(g, np.float64)
            if decay[i]:
                g = g + wd * w

            def trust(u, w=w, i=i):
                wn, un = np.linalg.norm(w), np.linalg.norm(u)
                return eta * wn / un if (adapt[i] and wn > 0 and un > 0) else 1.0

            if classic:
                slr = lr * trust(g)
                vs[i] = momentum * vs[i] + slr * g
                update = momentum * vs[i] + slr * g if nesterov else vs[i]
                ws[i] = w - update
            else:
                vs[i] = momentum * vs[i] + g
                update = momentum * vs[i] + g if nesterov else vs[i]
                ws[i] = w - lr * trust(update) * update
    return ws


# LARS() and build_optimizer("lars"): the reference's exclusions (batch norm, biases, head).
EXPECTED_DECAY = [True, False, False, False, True, False, False, False]
EXPECTED_ADAPT_BUILD = EXPECTED_DECAY


def test_lars_exclusions_decided_in_build():
    model = make_model()
    opt = LARS(learning_rate=0.1)
    opt.build(model.trainable_variables)
    paths = [v.path for v in model.trainable_variables]
    assert paths[0] == "net/dense/kernel" and paths[6] == "net/head_supervised/kernel"
    decay = [opt.uses_weight_decay(v) for v in model.trainable_variables]
    adapt = [opt.uses_layer_adaptation(v) for v in model.trainable_variables]
    assert decay == [True, False, False, False, True, False, False, False]
    assert adapt == decay
    # build_optimizer("lars") has LARS()'s defaults (the reference's exclusion list; the
    # head's L2 term is the model's head_weight_decay).
    opt2 = build_optimizer("lars", 0.1, weight_decay=1e-4)
    opt2.build(model.trainable_variables)
    assert [opt2.uses_weight_decay(v) for v in model.trainable_variables] == decay
    assert [opt2.uses_layer_adaptation(v) for v in model.trainable_variables] == adapt


@pytest.mark.parametrize(
    "path, excluded",
    [
        ("resnet/conv1/kernel", False),
        ("resnet/conv1_bn/gamma", True),
        ("resnet/bn2/moving_mean", True),
        ("resnet/bn/beta", True),
        ("resnet/subnet/kernel", False),
        ("model/batch_normalization_3/gamma", True),
        ("proj/dense/bias", True),
        ("model/head_supervised/kernel", True),
        ("model/abnormal/kernel", False),
    ],
)
def test_default_exclusion_patterns(path, excluded):
    assert matches_any(SimpleNamespace(path=path, name="x"), DEFAULT_EXCLUDE) is excluded


def test_matches_any_falls_back_to_name_for_tf_variables():
    v = tf.Variable([1.0], name="layer_bias")
    assert matches_any(v, NORM_AND_BIAS_PATTERNS)


@pytest.mark.parametrize("zero_grad", [False, True])
def test_lars_one_step_matches_numpy(zero_grad):
    model = make_model()
    variables = model.trainable_variables
    w0 = [v.numpy() for v in variables]
    grads = random_grads(variables, 1)
    if zero_grad:  # wd=0 and g=0 on a kernel: ||g|| = 0, trust falls back to 1 (no NaN)
        grads[0] = np.zeros_like(grads[0])
    wd = 0.0 if zero_grad else 1e-2
    opt = build_optimizer("lars", 0.5, momentum=0.9, weight_decay=wd, eta=0.01)
    opt.apply([tf.constant(g) for g in grads], variables)
    expected = np_lars(
        w0,
        [grads],
        [0.5],
        momentum=0.9,
        wd=wd,
        eta=0.01,
        decay=EXPECTED_DECAY,
        adapt=EXPECTED_ADAPT_BUILD,
        nesterov=False,
        classic=True,
    )
    for v, e in zip(variables, expected, strict=True):
        np.testing.assert_allclose(v.numpy(), e, rtol=RTOL, atol=ATOL, err_msg=v.path)
    assert np.all(np.isfinite(variables[0].numpy()))


@pytest.mark.parametrize("nesterov, classic", [(False, True), (True, True), (False, False)])
def test_lars_several_steps_with_schedule_match_numpy(nesterov, classic):
    model = make_model(1)
    variables = model.trainable_variables
    w0 = [v.numpy() for v in variables]
    schedule = WarmupCosineDecay(0.8, warmup_steps=2, total_steps=6)
    opt = LARS(
        learning_rate=schedule,
        momentum=0.9,
        weight_decay=1e-3,
        eta=0.02,
        nesterov=nesterov,
        classic_momentum=classic,
    )
    steps = [random_grads(variables, 10 + s) for s in range(5)]
    apply = tf.function(lambda gs: opt.apply(gs, variables))
    for grads in steps:
        apply([tf.constant(g) for g in grads])
    assert int(opt.iterations.numpy()) == 5
    lrs = [warmup_cosine(s, 0.8, 2, 6) for s in range(5)]
    expected = np_lars(
        w0,
        steps,
        lrs,
        momentum=0.9,
        wd=1e-3,
        eta=0.02,
        decay=[True, False, False, False, True, False, False, False],
        adapt=[True, False, False, False, True, False, False, False],
        nesterov=nesterov,
        classic=classic,
    )
    for v, e in zip(variables, expected, strict=True):
        np.testing.assert_allclose(v.numpy(), e, rtol=RTOL, atol=ATOL, err_msg=v.path)


@pytest.mark.parametrize("build_first", [True, False])
def test_lars_checkpoint_roundtrip(tmp_path, build_first):
    model = make_model(2)
    opt = LARS(learning_rate=0.3, weight_decay=1e-3, eta=0.01)
    steps = [random_grads(model.trainable_variables, 20 + s) for s in range(3)]
    for grads in steps[:2]:
        opt.apply([tf.constant(g) for g in grads], model.trainable_variables)
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt"))
    saved_state = [v.numpy() for v in opt.variables]
    opt.apply([tf.constant(g) for g in steps[2]], model.trainable_variables)
    after = [v.numpy() for v in model.trainable_variables]
    after_state = [v.numpy() for v in opt.variables]

    model2 = make_model(3)  # different initial weights, overwritten by the restore
    opt2 = LARS(learning_rate=0.3, weight_decay=1e-3, eta=0.01)
    if build_first:
        opt2.build(model2.trainable_variables)
    status = tf.train.Checkpoint(model=model2, optimizer=opt2).restore(path)
    if build_first:  # everything restored at once: state identical to the saved one
        status.assert_consumed()
        assert int(opt2.iterations.numpy()) == 2
        for a, b in zip(opt2.variables, saved_state, strict=True):
            np.testing.assert_array_equal(a.numpy(), b)
    # Otherwise the momentum slots are restored when apply() builds them (deferred restore).
    opt2.apply([tf.constant(g) for g in steps[2]], model2.trainable_variables)
    for v, e in zip(model2.trainable_variables, after, strict=True):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-6, atol=1e-7)
    for a, b in zip(opt2.variables, after_state, strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-6, atol=1e-7)


# Keras 3.15 itself warns (numpy 2 copy keyword) while writing the .keras file.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_lars_model_fit_matches_custom_loop_and_keras_saving(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.normal(size=(16, 2)).astype(np.float32)

    fit_model = make_model(4)
    init = fit_model.get_weights()
    fit_model.compile(optimizer=LARS(learning_rate=0.5, weight_decay=1e-3, eta=0.05), loss="mse")
    fit_model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    loop_model = make_model(4)
    loop_model.set_weights(init)
    opt = LARS(learning_rate=0.5, weight_decay=1e-3, eta=0.05)
    for i in range(2):
        with tf.GradientTape() as tape:
            pred = loop_model(x[8 * i : 8 * i + 8], training=True)
            loss = tf.reduce_mean(tf.square(pred - y[8 * i : 8 * i + 8]))
        grads = tape.gradient(loss, loop_model.trainable_variables)
        opt.apply(grads, loop_model.trainable_variables)
    for a, b in zip(fit_model.get_weights(), loop_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # The .keras format restores LARS (registered) with its config and state.
    fit_model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, LARS)
    assert loaded.optimizer.get_config() == fit_model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, fit_model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_lars_config_roundtrip():
    opt = LARS(
        learning_rate=WarmupCosineDecay(1.2, 3, 30),
        momentum=0.8,
        weight_decay=1e-6,
        eta=0.002,
        exclude_from_weight_decay=("bias",),
        exclude_from_layer_adaptation=("bias", "head"),
        nesterov=True,
    )
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, LARS)
    cfg = clone.get_config()
    assert cfg == opt.get_config()
    assert cfg["weight_decay"] == 1e-6 and cfg["exclude_from_layer_adaptation"] == ["bias", "head"]
    assert isinstance(clone._learning_rate, WarmupCosineDecay)
    assert float(clone.learning_rate) == float(opt.learning_rate) == 0.0  # lr(step 0)


def np_adam(ws, grads_per_step, lr, *, decay, l2=0.0, decoupled=0.0, b1=0.9, b2=0.999, eps=1e-7):
    ws = [np.asarray(w, np.float64) for w in ws]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            if decay[i] and decoupled:
                ws[i] = ws[i] - lr * decoupled * ws[i]
            g = np.asarray(g, np.float64) + (l2 * ws[i] if decay[i] else 0.0)
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            ws[i] = ws[i] - alpha * ms[i] / (np.sqrt(vs[i]) + eps)
    return ws


def np_sgd(ws, grads_per_step, lr, *, momentum, nesterov, decay, l2):
    ws = [np.asarray(w, np.float64) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64) + (l2 * ws[i] if decay[i] else 0.0)
            vs[i] = momentum * vs[i] - lr * g
            ws[i] = ws[i] + (momentum * vs[i] - lr * g if nesterov else vs[i])
    return ws


BN_BIAS_DECAY = [True, False, False, False, True, False, True, False]


@pytest.mark.parametrize(
    "name, nesterov", [("momentum", False), ("momentum", True), ("adam", False), ("adamw", False)]
)
def test_alternative_optimizers_match_numpy(name, nesterov):
    model = make_model(5)
    variables = model.trainable_variables
    w0 = [v.numpy() for v in variables]
    steps = [random_grads(variables, 30 + s) for s in range(3)]
    wd, lr = 0.05, 0.1
    opt = build_optimizer(name, lr, momentum=0.9, weight_decay=wd, nesterov=nesterov)
    expected_cls = {"momentum": SGDL2, "adam": AdamL2, "adamw": AdamWExclude}[name]
    assert isinstance(opt, expected_cls)
    for grads in steps:
        opt.apply([tf.constant(g) for g in grads], variables)
    assert [opt.uses_weight_decay(v) for v in variables] == BN_BIAS_DECAY
    if name == "momentum":
        expected = np_sgd(
            w0, steps, lr, momentum=0.9, nesterov=nesterov, decay=BN_BIAS_DECAY, l2=wd
        )
    elif name == "adam":
        expected = np_adam(w0, steps, lr, decay=BN_BIAS_DECAY, l2=wd)
    else:
        expected = np_adam(w0, steps, lr, decay=BN_BIAS_DECAY, decoupled=wd)
    for v, e in zip(variables, expected, strict=True):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6, err_msg=v.path)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(clone) is expected_cls and clone.get_config() == opt.get_config()


def test_build_optimizer_errors_and_mixed_float16_wrapping():
    with pytest.raises(ValueError, match="Unknown optimizer 'sgd'"):
        build_optimizer("sgd", 0.1)
    with pytest.raises(ValueError, match="only applies to optimizer='lars'"):
        build_optimizer("adam", 0.1, exclude_from_layer_adaptation=("bias",))
    with pytest.raises(ValueError, match="mixed_precision"):
        build_optimizer("lars", 0.1, mixed_precision="fp8")
    with pytest.raises(ValueError, match="momentum"):
        build_optimizer("lars", 0.1, momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        LARS(0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="regular expressions"):
        LARS(0.1, exclude_from_weight_decay=("(",))
    wrapped = build_optimizer("lars", 1, mixed_precision="mixed_float16")
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
    assert isinstance(wrapped.inner_optimizer, LARS)
    assert isinstance(build_optimizer("lars", 0.1, mixed_precision="mixed_bfloat16"), LARS)
    assert float(LARS(1).learning_rate) == 1.0  # int learning rates accepted


def test_loss_scale_optimizer_lars_custom_loop_equals_plain():
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    results = []
    for mp in (None, "mixed_float16"):
        model = make_model(6)
        opt = build_optimizer("lars", 0.2, weight_decay=1e-3, mixed_precision=mp)
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True)))
                scaled = opt.scale_loss(loss) if mp else loss
            opt.apply(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)
        results.append(model.get_weights())
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_fit_with_nt_xent(policy):
    from tf_simclr.objectives.loss import nt_xent_loss

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        inp = keras.Input((6,))
        model = keras.Model(
            inp, keras.layers.Dense(4)(keras.layers.Dense(8, activation="relu")(inp))
        )
        opt = build_optimizer("lars", 0.5, weight_decay=1e-4, mixed_precision=policy)
        x1 = tf.random.stateless_normal((8, 6), seed=(1, 2))
        x2 = x1 + 0.1 * tf.random.stateless_normal((8, 6), seed=(3, 4))
        before = [v.numpy() for v in model.trainable_variables]
        # float16's dynamic loss scale starts at 2**15 and skips steps whose scaled gradients
        # overflow, halving the scale; a few steps are enough for real updates.
        for _ in range(6):
            with tf.GradientTape() as tape:
                z1, z2 = model(x1), model(x2)
                loss = nt_xent_loss(z1, z2, temperature=0.05).loss
                scaled = opt.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous)
    assert z1.dtype == (tf.bfloat16 if policy == "mixed_bfloat16" else tf.float16)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    for v, b in zip(model.trainable_variables, before, strict=True):
        assert v.dtype == "float32" and np.all(np.isfinite(v.numpy()))
        assert not np.allclose(v.numpy(), b)


@pytest.mark.parametrize("base, warmup, total", [(1.0, 10, 110), (0.3, 0, 50), (2.0, 5, 5)])
def test_warmup_cosine_values(base, warmup, total):
    s = WarmupCosineDecay(base, warmup, total)
    assert float(s(0)) == pytest.approx(0.0 if warmup else base)
    assert float(s(warmup)) == pytest.approx(base if total > warmup else 0.0)
    assert float(s(total)) == pytest.approx(0.0, abs=1e-7)
    assert float(s(total + 100)) == pytest.approx(0.0, abs=1e-7)
    for step in sorted(
        {0, 1, warmup // 2, max(warmup - 1, 0), warmup, (warmup + total) // 2, total - 1, total}
    ):
        assert float(s(tf.constant(step, tf.int64))) == pytest.approx(
            warmup_cosine(step, base, warmup, total), rel=1e-6, abs=1e-7
        )
    if total > warmup + 1:  # half way through the decay: base / 2
        mid = warmup + (total - warmup) / 2
        assert float(s(mid)) == pytest.approx(base / 2, rel=1e-6)


def test_warmup_cosine_is_keras_cosine_decay_over_a_whole_schedule():
    """The schedule is Keras' CosineDecay from 0 with warmup_target = base: equal to it at every
    step, and within float32 round-off (2 ulps of the base rate) of the float64 formula."""
    base, warmup, total = 4.8, 31, 313
    ours = WarmupCosineDecay(base, warmup, total)
    theirs = keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=base, warmup_steps=warmup
    )
    assert isinstance(ours, keras.optimizers.schedules.CosineDecay)
    steps = [tf.constant(step, tf.int64) for step in range(total + 3)]
    values = [float(ours(step)) for step in steps]
    assert values == [float(theirs(step)) for step in steps]
    expected = [warmup_cosine(step, base, warmup, total) for step in range(total + 3)]
    np.testing.assert_allclose(values, expected, rtol=0, atol=2 * np.spacing(np.float32(base)))


def test_warmup_cosine_serialisation():
    s = WarmupCosineDecay(0.6, 7, 70)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(clone, WarmupCosineDecay) and clone.get_config() == s.get_config()
    clone2 = WarmupCosineDecay.from_config(s.get_config())
    for step in (0, 3, 7, 40, 70):
        assert float(clone(step)) == float(s(step)) == float(clone2(step))


@pytest.mark.parametrize(
    "args, match",
    [
        ((1.0, 10, 5), "total_steps"),
        ((1.0, -1, 5), "warmup_steps"),
        ((1.0, 1.5, 5), "warmup_steps"),
        ((-1.0, 1, 5), "base_learning_rate"),
    ],
)
def test_warmup_cosine_errors(args, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosineDecay(*args)


def test_scale_learning_rate():
    assert scale_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scale_learning_rate(1.0, 512, "linear") == pytest.approx(2.0)
    assert scale_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    with pytest.raises(ValueError, match="Unknown learning_rate_scaling 'log'"):
        scale_learning_rate(0.1, 256, "log")
    with pytest.raises(ValueError, match="batch_size"):
        scale_learning_rate(0.1, 0, "linear")
