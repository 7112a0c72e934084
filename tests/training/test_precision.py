"""Mixed precision: the choice of policy, the bfloat16 fast paths (fused batch norm, matmul
filter gradients) against float64/float32 references, and a bfloat16 training step against a
float32 one from the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers.configs import tiny_config
from tests.helpers.stub_steps import stub_train_loop
from tf_simclr import factory
from tf_simclr.config import PRECISIONS as CONFIG_PRECISIONS
from tf_simclr.config import Config
from tf_simclr.network import conv_grad
from tf_simclr.network.layers import FixedPaddingConv2D, FusedBatchNormalization
from tf_simclr.network.model import build_model
from tf_simclr.training import optim, precision
from tf_simclr.workflows import train

# bfloat16 keeps 8 significant bits: one rounding is up to 2^-8 relative.
BF16_EPS = 2.0**-8


def test_explicit_precisions_are_kept_and_unknown_ones_refused():
    assert precision.PRECISIONS == CONFIG_PRECISIONS
    for name in precision.POLICIES:
        assert precision.choose_precision(name, cpu_flags=()).policy == name
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.choose_precision("bfloat16")


@pytest.mark.parametrize(
    "cpu_flags, gpus, policy, says",
    [
        (("avx512_bf16",), [], "mixed_bfloat16", "avx512_bf16"),
        (("amx_bf16",), [], "mixed_bfloat16", "amx_bf16"),
        ((), [], "float32", "no bfloat16 units"),
        ((), [(8, 0), (9, 0)], "mixed_bfloat16", "8.0"),
        (("amx_bf16",), [(7, 5)], "float32", "7.5"),  # the GPUs compute, not the CPU
    ],
)
def test_auto_follows_the_hardware(cpu_flags, gpus, policy, says):
    choice = precision.choose_precision("auto", cpu_flags=cpu_flags, gpu_capabilities=gpus)
    assert choice.policy == policy
    assert says in choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    assert precision.cpu_bfloat16_flags(str(info)) == ("amx_bf16",)
    info.write_text("flags\t\t: fpu sse2 avx2\n")
    assert precision.cpu_bfloat16_flags(str(info)) == ()
    assert precision.cpu_bfloat16_flags(str(tmp_path / "missing")) == ()


def test_policy_scope_restores_the_global_policy():
    before = keras.mixed_precision.global_policy().name
    with precision.policy_scope("mixed_bfloat16"):
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == before
    with pytest.raises(ValueError, match="policy must be one of"):
        with precision.policy_scope("auto"):
            pass


def _gradients(conv, x, w):
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = conv(x, w)
        loss = tf.reduce_sum(tf.cast(y, tf.float64) * tf.sin(tf.cast(y, tf.float64)))
    return (y, *tape.gradient(loss, [x, w]))


@pytest.mark.parametrize(
    "size, kernel, strides, padding",
    [
        (4, 3, 1, "SAME"),
        (9, 3, 2, "VALID"),
        (8, 3, 2, "VALID"),
        (5, 1, 1, "SAME"),
        (8, 1, 2, "VALID"),
    ],
)
def test_matmul_filter_gradient_equals_tensorflows(size, kernel, strides, padding):
    rng = np.random.default_rng(size + kernel + strides)
    x = tf.constant(rng.normal(size=(3, size, size, 5)))
    w = tf.constant(rng.normal(size=(kernel, kernel, 5, 7)))
    expected = _gradients(lambda a, b: tf.nn.conv2d(a, b, strides, padding), x, w)
    got = _gradients(
        lambda a, b: conv_grad.conv2d_with_matmul_filter_gradient(a, b, strides, padding), x, w
    )
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_matmul_filter_gradient_refuses_even_same_kernels():
    with pytest.raises(ValueError, match="odd kernel"):
        conv_grad.conv2d_with_matmul_filter_gradient(
            tf.zeros([1, 4, 4, 2]), tf.zeros([2, 2, 2, 2]), 1, "SAME"
        )


def _op_types(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:
        types.update(node.op for node in function.node_def)
    return types


@pytest.mark.parametrize("size, strides, matmul", [(8, 1, True), (16, 2, True), (16, 1, False)])
def test_bfloat16_convolutions_on_small_maps_take_the_matmul_gradient(size, strides, matmul):
    """A bfloat16 FixedPaddingConv2D with at most 64 output positions takes the matmul filter
    gradient (larger maps keep TF's kernel); either way the gradient matches float64."""
    rng = np.random.default_rng(size)
    x64 = rng.normal(size=(4, size, size, 16))
    with precision.policy_scope("mixed_bfloat16"):
        layer = FixedPaddingConv2D(32, 3, strides)
        layer.build((None, size, size, 16))
    with precision.policy_scope("float32"):
        exact = FixedPaddingConv2D(32, 3, strides)
        exact.build((None, size, size, 16))
    exact.set_weights(layer.get_weights())

    def kernel_gradient(conv, x):
        with tf.GradientTape() as tape:
            y = tf.cast(conv(x), tf.float32)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, conv.trainable_weights[0])

    x_bf16 = tf.constant(x64.astype(np.float32)).numpy()
    types = _op_types(lambda x: kernel_gradient(layer, x), tf.constant(x_bf16))
    assert ("Conv2DBackpropFilter" not in types) == matmul
    assert ("BatchMatMulV2" in types or "MatMul" in types) == matmul
    # The float32 layer on the bfloat16-rounded input is the reference for the bfloat16 one.
    rounded = tf.cast(tf.cast(x_bf16, tf.bfloat16), tf.float32)
    got = kernel_gradient(layer, tf.constant(x_bf16)).numpy()
    want = kernel_gradient(exact, rounded).numpy()
    assert got.dtype == np.float32
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=8 * BF16_EPS * scale)


def test_fused_batch_norm_runs_the_fused_kernel_in_bfloat16():
    """bfloat16 activations take TF's fused kernel (statistics in float32) and agree with
    Keras' float32 batch norm to bfloat16 rounding."""
    x = tf.random.stateless_normal((8, 5, 5, 6), seed=[0, 1]) * 3 + 1
    with precision.policy_scope("mixed_bfloat16"):
        fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
        fused.build(x.shape)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    plain.build(x.shape)
    gamma = tf.random.stateless_normal([6], seed=[1, 2])
    fused.gamma.assign(gamma)
    plain.gamma.assign(gamma)
    x_bf16 = tf.cast(x, tf.bfloat16)
    types = _op_types(lambda t: fused(t, training=True), x_bf16)
    assert "FusedBatchNormV3" in types
    y = fused(x_bf16, training=True)
    assert y.dtype == tf.bfloat16 and fused.moving_mean.dtype == tf.float32
    want = plain(tf.cast(x_bf16, tf.float32), training=True)
    np.testing.assert_allclose(tf.cast(y, tf.float32), want, atol=4 * BF16_EPS * 4)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-4)


def _tiny_model(policy):
    keras.utils.set_random_seed(0)
    with precision.policy_scope(policy):
        return build_model(
            resnet_depth=18,
            width_multiplier=0.25,
            image_size=16,
            num_classes=4,
            temperature=0.5,
            head_weight_decay=1e-3,
        )


# One pretraining step in a mixed policy against float32 from the same weights (the test below),
# measured on AMD EPYC (AVX2): relative loss difference at most 3.0e-4 (bfloat16) and 1.1e-5
# (float16); cosine between the per-layer updates median 0.989 / 0.9993, worst 0.957 / 0.997.
MIXED_STEP = {
    "mixed_bfloat16": dict(loss_rtol=2e-3, median_cosine=0.97, min_cosine=0.9),
    "mixed_float16": dict(loss_rtol=1e-4, median_cosine=0.995, min_cosine=0.99),
}


def _batch():
    rng = np.random.default_rng(0)
    return {
        "view1": tf.constant(rng.random((16, 16, 16, 3), dtype=np.float32)),
        "view2": tf.constant(rng.random((16, 16, 16, 3), dtype=np.float32)),
        "label": tf.constant(rng.integers(0, 4, 16).astype(np.int32)),
    }


def _one_step(model, mixed_precision):
    """One compiled pretraining step of `model` on _batch(): (its metrics, its optimizer)."""
    opt = optim.build_optimizer(
        "lars", learning_rate=0.5, weight_decay=1e-4, mixed_precision=mixed_precision
    )
    head = optim.build_optimizer("momentum", learning_rate=0.1, mixed_precision=mixed_precision)
    step = tf.function(train.make_step_fn(model, opt, head))
    return {k: float(v) for k, v in step(_batch()).items()}, opt


@pytest.fixture(scope="module")
def float32_step():
    """The float32 side of the test below, the same for every policy (traced once): the tiny
    model's weights before one step, and its metrics and trainable weights after it."""
    f32 = _tiny_model("float32")
    assert f32.compute_dtype == "float32"
    weights = f32.get_weights()
    metrics, _ = _one_step(f32, None)
    return weights, metrics, [w.numpy() for w in f32.trainable_weights]


@pytest.mark.parametrize("policy", sorted(MIXED_STEP))
def test_mixed_precision_step_matches_float32_step_and_stays_float32(
    tmp_path, policy, float32_step
):
    """One pretraining step in a mixed policy and one in float32 from the same weights: losses
    within the half type's rounding, the same update direction, and float32 weights, slots and
    checkpoint (float16 through its loss-scale optimizer)."""
    bounds = MIXED_STEP[policy]
    f32_weights, f32_metrics, f32_after = float32_step
    low = _tiny_model(policy)
    low.set_weights(f32_weights)
    half = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    assert low.compute_dtype == half
    start = [w.numpy() for w in low.trainable_weights]
    metrics = {"float32": f32_metrics}
    metrics["half"], half_optimizer = _one_step(low, policy)
    for key in ("loss", "contrastive_loss", "sup_loss"):
        assert metrics["half"][key] == pytest.approx(
            metrics["float32"][key], rel=bounds["loss_rtol"]
        ), key
    # The update: per-layer LARS steps point the same way in both precisions.
    cosines = []
    for w0, a, b in zip(start, f32_after, low.trainable_weights, strict=True):
        da, db = (a - w0).ravel(), (b.numpy() - w0).ravel()
        if np.linalg.norm(da) > 0:
            cosines.append(da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))
    assert len(cosines) > len(start) // 2
    assert np.median(cosines) > bounds["median_cosine"] and min(cosines) > bounds["min_cosine"]
    assert all(w.dtype == "float32" for w in low.weights)
    slots = [v for v in half_optimizer.variables if v.dtype != "int64"]  # not the step
    assert len(slots) >= len(low.trainable_weights) // 2
    assert {v.dtype for v in slots} == {"float32"}
    path = tf.train.Checkpoint(model=low, optimizer=half_optimizer).write(str(tmp_path / "ckpt"))
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    assert {d for k, d in dtypes.items() if d.is_floating} == {tf.float32}


def test_evaluation_and_export_get_a_float32_twin(tmp_path):
    config = tiny_config(tmp_path)
    bf16 = factory.build_model(config, 10, precision="mixed_bfloat16")
    assert factory.build_model(config, 10).compute_dtype == "float32"
    twin = factory.float32_twin(config, bf16, 10)
    assert twin.compute_dtype == "float32" and bf16.compute_dtype == "bfloat16"
    for a, b in zip(twin.weights, bf16.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    images = tf.random.stateless_uniform((4, 16, 16, 3), seed=[3, 4])
    exact = twin(images, training=False)["final_avg_pool"]
    half = bf16(images, training=False)["final_avg_pool"]
    assert exact.dtype == tf.float32 and half.dtype == tf.bfloat16
    # bfloat16 keeps 8 significant bits (relative rounding 2**-8 = 3.9e-3): measured on AMD EPYC
    # (AVX2), the features differ by 1.3e-3 at most where the largest is 0.30 (4.5e-3 of it).
    scale = float(np.max(np.abs(exact)))
    np.testing.assert_allclose(tf.cast(half, tf.float32), exact, rtol=0, atol=0.015 * scale)
    assert factory.float32_twin(config, twin, 10) is twin


def test_auto_precision_is_chosen_and_logged_by_training(tmp_path, monkeypatch, caplog):
    # The choice is made before the first step: the steps are stubs (no network traced).
    stub_train_loop(monkeypatch, {})
    monkeypatch.setattr(precision, "cpu_bfloat16_flags", lambda: ())
    monkeypatch.setattr(precision, "_gpu_compute_capabilities", lambda: [])
    config = tiny_config(tmp_path, precision="auto", train_steps=2)
    with caplog.at_level("INFO"):
        state = train.train(config, tf.distribute.get_strategy())
    assert state.model.compute_dtype == "float32"
    assert "Precision float32 (auto: this CPU has no bfloat16 units" in caplog.text
    assert Config.load(str(tmp_path)).precision == "float32"  # what ran is recorded


def test_optimizers_are_built_for_every_precision_setting(tmp_path):
    """auto (resolved later, by training) and bfloat16 need no loss scaling; float16 does."""
    for setting, scaled in (("auto", False), ("mixed_bfloat16", False), ("mixed_float16", True)):
        opt = factory.build_optimizer(tiny_config(tmp_path, precision=setting), 1000)
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer) == scaled, setting


def test_a_bfloat16_run_exports_a_float32_module(tmp_path, monkeypatch):
    """The runner trains in bfloat16 but exports (and evaluates) the float32 twin: the
    reloaded module computes exactly what a float32 model with the checkpoint's weights does.
    (The steps are stubs, so the checkpoint holds the bfloat16 run's initial weights: a
    bfloat16 training step is test_mixed_precision_step_matches_float32_step_and_stays_float32.)"""
    from tf_simclr.training import checkpoints as ckpt_lib
    from tf_simclr.workflows import runner

    stub_train_loop(monkeypatch, {})
    config = tiny_config(
        tmp_path, precision="mixed_bfloat16", mode="train", train_steps=2, export=True
    )
    result = runner.run(config)
    assert result["precision"] == "mixed_bfloat16"
    assert Config.load(str(tmp_path)).precision == "mixed_bfloat16"
    module = tf.saved_model.load(result["export_path"])
    images = tf.random.stateless_uniform((3, 16, 16, 3), seed=[5, 6])
    exported = module(images, training=False)
    model = factory.build_model(config, 10)
    latest = ckpt_lib.latest_valid_checkpoint(str(tmp_path))
    ckpt_lib.training_checkpoint(model).restore(latest).expect_partial()
    assert latest.endswith("ckpt-2")
    want = model(images, training=False)
    for name in ("final_avg_pool", "proj_head_output", "logits_sup"):
        assert exported[name].dtype == tf.float32
        np.testing.assert_allclose(exported[name], want[name], rtol=1e-5, atol=1e-6)
