"""Tests for tf_simclr.network.resnet: architecture (parameter counts vs formula and keras.applications),
stems, endpoints, BN settings, zero-init residual gamma, SK / SE numerics, fixed padding."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.network import resnet


def _conv(k, cin, cout):
    return k * k * cin * cout


def _bn(c, center=True):
    # gamma, (beta), moving mean, moving variance
    return (4 if center else 3) * c


def resnet_param_formula(depth, width=1.0, *, cifar_stem=False):
    """Independent count of SimCLR ResNet v1 parameters (incl. BN moving stats) from the paper's
    architecture table; the first block of every group has a 1x1 projection shortcut (as the
    reference code, and keras.applications for bottleneck nets)."""
    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    c = int(64 * width)
    total = _conv(3 if cifar_stem else 7, 3, c) + _bn(c)
    cin = c
    for g, n in enumerate(blocks):
        f = int(64 * width) * 2**g
        out = 4 * f if bottleneck else f
        for b in range(n):
            if bottleneck:
                total += _conv(1, cin, f) + _conv(3, f, f) + _conv(1, f, out)
                total += _bn(f) + _bn(f) + _bn(out)
            else:
                total += _conv(3, cin, f) + _conv(3, f, f) + _bn(f) + _bn(f)
            if b == 0:
                total += _conv(1, cin, out) + _bn(out)
            cin = out
    return total


def _num(v):
    return int(np.prod(v.shape))


def test_resnet50_param_count_matches_formula_and_keras_applications():
    model = resnet.build_resnet(50, input_shape=(224, 224, 3))
    ours = model.count_params()
    assert ours == resnet_param_formula(50)
    trainable = sum(_num(v) for v in model.trainable_weights)
    assert 23.4e6 < trainable < 23.6e6  # "ResNet-50 1x: 23.5M without the classifier"

    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    conv_biases = sum(
        _num(v)
        for v in ref.weights
        if len(v.shape) == 1 and v.path.endswith("bias") and "_bn" not in v.path
    )
    assert ref.count_params() - conv_biases == ours
    # Every conv kernel shape appears the same number of times in both nets.
    ours_k = sorted(tuple(v.shape) for v in model.weights if len(v.shape) == 4)
    ref_k = sorted(tuple(v.shape) for v in ref.weights if len(v.shape) == 4)
    assert ours_k == ref_k


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_resnet18_param_count_formula(cifar_stem):
    size = 32 if cifar_stem else 64
    model = resnet.build_resnet(18, input_shape=(size, size, 3))
    assert model.resnet_config["cifar_stem"] is cifar_stem
    assert model.count_params() == resnet_param_formula(18, cifar_stem=cifar_stem)


def test_fractional_width_param_count():
    model = resnet.build_resnet(18, 0.25, input_shape=(32, 32, 3))
    assert model.count_params() == resnet_param_formula(18, 0.25, cifar_stem=True)
    assert model.output["final_avg_pool"].shape[-1] == 128


def test_endpoints_and_stems():
    keras.utils.set_random_seed(0)
    cifar = resnet.build_resnet(18, 0.25, input_shape=(32, 32, 3))
    out = cifar(tf.random.uniform((2, 32, 32, 3)), training=False)
    assert set(out) == set(resnet.ENDPOINTS)
    # CIFAR stem: 3x3 stride 1, no max-pool
    assert out["initial_conv"].shape == (2, 32, 32, 16)
    assert out["initial_max_pool"].shape == (2, 32, 32, 16)
    assert cifar.get_layer("initial_conv").convs[0].conv.kernel.shape == (3, 3, 3, 16)
    assert [out[f"block_group{i}"].shape[1] for i in range(1, 5)] == [32, 16, 8, 4]
    assert out["final_avg_pool"].shape == (2, 128)
    np.testing.assert_allclose(
        out["final_avg_pool"],
        tf.reduce_mean(out["block_group4"], axis=[1, 2]),
        rtol=1e-5,
        atol=1e-6,
    )

    imnet = resnet.build_resnet(18, 0.25, input_shape=(None, None, 3))  # unknown size -> ImageNet
    out = imnet(tf.random.uniform((1, 64, 64, 3)), training=False)
    assert imnet.get_layer("initial_conv").convs[0].conv.kernel.shape == (7, 7, 3, 16)
    assert out["initial_conv"].shape == (1, 32, 32, 16)
    assert out["initial_max_pool"].shape == (1, 16, 16, 16)
    assert out["block_group4"].shape == (1, 2, 2, 128)
    assert (
        resnet.build_resnet(18, 0.25, input_shape=(33, 33, 3)).resnet_config["cifar_stem"] is False
    )


def test_bn_settings_and_zero_init_gamma():
    model = resnet.build_resnet(50, 0.25, input_shape=(32, 32, 3), global_bn=True)
    bns = [v for v in model.weights if "batch_normalization" in v.path]
    assert bns, "BN layers must have batch_normalization in their variable path (LARS exclusion)"
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(layers) == 1 + 16 * 3 + 4  # stem + 3 per bottleneck block + 4 shortcuts
    for layer in layers:
        assert layer.momentum == 0.9 and layer.epsilon == 1e-5 and layer.synchronized
        zero = np.all(layer.gamma.numpy() == 0)
        assert zero == layer.name.startswith("bn3"), layer.name
    n_blocks = sum(1 for layer in layers if layer.name.startswith("bn3"))
    assert n_blocks == 16


def test_zero_init_makes_identity_blocks_identity():
    keras.utils.set_random_seed(1)
    model = resnet.build_resnet(18, 0.25, input_shape=(16, 16, 3))
    block = model.get_layer("block_group1").blocks[1]  # no projection: out = relu(x + F(x))
    x = tf.nn.relu(tf.random.normal((2, 16, 16, 16)))
    np.testing.assert_allclose(block(x, training=False), x, atol=1e-6)
    np.testing.assert_allclose(block(x, training=True), x, atol=1e-6)


def test_fixed_padding_matches_explicit_pad():
    keras.utils.set_random_seed(2)
    layer = resnet.FixedPaddingConv2D(4, 7, strides=2)
    x = tf.random.normal((1, 15, 16, 3))
    y = layer(x)
    assert y.shape == (1, 8, 8, 4)  # ceil(n / 2), independent of the input size parity
    ref = tf.nn.conv2d(tf.pad(x, [[0, 0], [3, 3], [3, 3], [0, 0]]), layer.conv.kernel, 2, "VALID")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_squeeze_excite_numpy():
    keras.utils.set_random_seed(3)
    se = resnet.SqueezeExcite(2)
    x = np.random.RandomState(0).randn(2, 4, 4, 8).astype("float32")
    y = se(x).numpy()
    w1, b1 = se.reduce.kernel.numpy()[0, 0], se.reduce.bias.numpy()
    w2, b2 = se.expand.kernel.numpy()[0, 0], se.expand.bias.numpy()
    s = x.mean(axis=(1, 2))
    s = np.maximum(s @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(y, x / (1 + np.exp(-s))[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_selective_kernel_numpy():
    keras.utils.set_random_seed(4)
    sk = resnet.SelectiveKernel(4, strides=1, sk_ratio=0.5, min_dim=3)
    x = np.random.RandomState(1).randn(2, 5, 5, 3).astype("float32")
    y = sk(x, training=False).numpy()
    eps = 1e-5
    # Inference BN at init: (v - 0) / sqrt(1 + eps) * 1 + 0.
    conv = tf.nn.conv2d(x, sk.conv.conv.kernel, 1, "SAME").numpy() / np.sqrt(1 + eps)
    conv = np.maximum(conv, 0)
    a, b = conv[..., :4], conv[..., 4:]
    g = (a + b).mean(axis=(1, 2))
    assert sk.fc_reduce.kernel.shape[-1] == 3  # max(int(4 * 0.5), min_dim)
    g = np.maximum(g @ sk.fc_reduce.kernel.numpy()[0, 0] / np.sqrt(1 + eps), 0)
    m = g @ sk.fc_expand.kernel.numpy()[0, 0]
    ma, mb = m[:, :4], m[:, 4:]
    wa = np.exp(ma) / (np.exp(ma) + np.exp(mb))
    ref = a * wa[:, None, None, :] + b * (1 - wa)[:, None, None, :]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_sk_se_resnet_structure():
    keras.utils.set_random_seed(5)
    model = resnet.build_resnet(
        50, 0.25, input_shape=(None, None, 3), sk_ratio=0.0625, se_ratio=0.25
    )
    stem = model.get_layer("initial_conv")
    assert [c.kernel_size for c in stem.convs] == [3, 3, 3]  # ResNet-D stem
    assert [c.filters for c in stem.convs] == [8, 8, 16]
    first = model.get_layer("block_group2").blocks[0]
    assert first.shortcut_pool is not None and first.shortcut_conv.strides == 1
    assert isinstance(first.block_layers[2], resnet.SelectiveKernel)
    assert first.se.reduced_filters == 8  # int(32 * 0.25)
    # Odd sizes (50 -> 25 -> 13 -> 7 -> 4 -> 2): the ResNet-D shortcut pads before pooling so
    # both paths give ceil(n / 2).
    out = model(tf.random.uniform((1, 50, 50, 3)), training=True)
    assert out["initial_max_pool"].shape == (1, 13, 13, 16)
    assert out["block_group4"].shape == (1, 2, 2, 512)
    assert np.all(np.isfinite(out["final_avg_pool"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=20), "depth"),
        (dict(depth=18, width_multiplier=0), "width_multiplier"),
        (dict(depth=18, sk_ratio=-1), "sk_ratio"),
        (dict(depth=18, input_shape=(32, 32)), "input_shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet.build_resnet(**kwargs)


def test_freeze_up_to_block():
    model = resnet.build_resnet(18, 0.25, input_shape=(16, 16, 3))
    n_all = len(model.trainable_weights)
    resnet.freeze_up_to_block(model, 1)
    assert not model.get_layer("initial_conv").trainable
    assert not model.get_layer("initial_max_pool").trainable
    assert not model.get_layer("block_group1").trainable
    assert model.get_layer("block_group2").trainable
    assert 0 < len(model.trainable_weights) < n_all
    assert all("block_group1" not in v.path for v in model.trainable_weights)
    with pytest.raises(ValueError, match="fine_tune_after_block"):
        resnet.freeze_up_to_block(model, 5)
    # The groups are also found by layer name (e.g. on a model reloaded from a .keras file).
    object.__delattr__(model, "layer_groups")
    assert [len(g) for g in resnet.layer_groups(model).values()] == [2, 1, 1, 1, 1]
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="block groups"):
        resnet.freeze_up_to_block(other, 2)
    resnet.freeze_up_to_block(other, 4)
    assert not other.trainable_weights


@pytest.mark.parametrize("shape, center", [((6, 5, 5, 7), True), ((9, 7), False)])
def test_fused_batch_norm_matches_keras(shape, center):
    fused = resnet.FusedBatchNormalization(momentum=0.9, epsilon=1e-5, center=center)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=center)
    x = tf.random.stateless_normal(shape, seed=[0, 1]) * 3 + 1
    for layer in (fused, plain):
        layer.build(shape)
        layer.gamma.assign(tf.random.stateless_normal(layer.gamma.shape, seed=[1, 2]))
        if center:
            layer.beta.assign(tf.random.stateless_normal(layer.beta.shape, seed=[1, 3]))
    grads, outs = [], []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y**3)
        grads.append(tape.gradient(loss, [x, layer.gamma]))
        outs.append(y)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-5)
    frozen = resnet.FusedBatchNormalization()
    frozen.build(shape)
    frozen.trainable = False  # frozen BN: inference mode even when training=True
    np.testing.assert_allclose(frozen(x, training=True), frozen(x, training=False))


def test_the_depths_the_settings_accept_are_the_depths_built():
    from tf_simclr.choices import RESNET_DEPTHS
    from tf_simclr.network.resnet import RESNET_LAYERS

    assert tuple(RESNET_LAYERS) == RESNET_DEPTHS
