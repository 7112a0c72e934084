"""ResNet v1 family (post-activation) as used by SimCLR v1/v2, in Keras 3.

Follows the reference SimCLR code: the stride sits on the 3x3 conv of a bottleneck block
("v1.5"), strided convs use fixed (input-size independent) padding, conv kernels have no bias
and use ``VarianceScaling()`` (scale 1, fan-in, truncated normal), BN momentum 0.9 / epsilon 1e-5,
and the last BN of every residual block starts with gamma = 0. SimCLRv2 options: selective
kernels (``sk_ratio``; also switches to the ResNet-D stem of three 3x3 convs and average-pool
shortcuts) and squeeze-excitation (``se_ratio``).

All batch-norm layers have ``batch_normalization`` in their name so optimisers that exclude
BN parameters by variable path (LARS) find them.
"""

from __future__ import annotations

import keras
from keras import ops

# The layers live in tf_simclr.network.layers; these names stay importable from here.
from tf_simclr.network.layers import (  # noqa: F401
    FixedPaddingConv2D,
    FusedBatchNormalization,
    SelectiveKernel,
    SqueezeExcite,
    _BNConfigMixin,
    _conv_init,
    _scaled,
    batch_norm,
    strided_shape,
)

ENDPOINTS = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)

# depth -> (bottleneck?, blocks per group)
RESNET_LAYERS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}

CIFAR_STEM_MAX_SIZE = 32


@keras.saving.register_keras_serializable(package="tf_simclr")
class ResidualBlock(_BNConfigMixin, keras.layers.Layer):
    """Basic (depth 18/34) or bottleneck (50+) post-activation residual block."""

    def __init__(
        self,
        filters,
        strides=1,
        use_projection=False,
        bottleneck=False,
        sk_ratio=0.0,
        se_ratio=0.0,
        batch_norm_decay=0.9,
        batch_norm_epsilon=1e-5,
        global_bn=False,
        fused_batch_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_bn(batch_norm_decay, batch_norm_epsilon, global_bn, fused_batch_norm)
        self.filters = filters
        self.strides = strides
        self.use_projection = use_projection
        self.bottleneck = bottleneck
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.out_filters = 4 * filters if bottleneck else filters
        self._make_shortcut()
        self.layers_seq = self._make_residual_path()
        # Keep sublayers tracked by Keras (a list of tuples is not auto-tracked).
        self.block_layers = [layer for layer, _ in self.layers_seq]
        self.se = None
        if se_ratio > 0:
            self.se = SqueezeExcite(max(1, int(filters * se_ratio)), name="se")

    def _make_shortcut(self):
        """The projection shortcut's layers (all None without projection)."""
        self.shortcut_pad = None
        self.shortcut_pool = None
        self.shortcut_conv = None
        self.shortcut_bn = None
        if not self.use_projection:
            return
        if self.sk_ratio > 0:
            # ResNet-D: average-pool then 1x1 stride-1 conv, so no activation is skipped.
            if self.strides > 1:
                # Pad (0, 1) first, as the reference, so odd sizes give ceil(n / s) rows.
                self.shortcut_pad = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))
                self.shortcut_pool = keras.layers.AveragePooling2D(
                    pool_size=2, strides=self.strides, padding="valid", name="shortcut_pool"
                )
            else:
                self.shortcut_pool = keras.layers.AveragePooling2D(
                    pool_size=2, strides=1, padding="same", name="shortcut_pool"
                )
            self.shortcut_conv = FixedPaddingConv2D(self.out_filters, 1, 1, name="shortcut_conv")
        else:
            self.shortcut_conv = FixedPaddingConv2D(
                self.out_filters, 1, self.strides, name="shortcut_conv"
            )
        self.shortcut_bn = self._bn("shortcut_batch_normalization")

    def _make_residual_path(self) -> list:
        """The residual branch as (layer, kind), kind in {"conv", "bn_relu", "bn", "sk"}."""
        filters, strides = self.filters, self.strides
        if not self.bottleneck:
            return [
                (FixedPaddingConv2D(filters, 3, strides, name="conv1"), "conv"),
                (self._bn("bn1_batch_normalization"), "bn_relu"),
                (FixedPaddingConv2D(filters, 3, 1, name="conv2"), "conv"),
                (self._bn("bn2_batch_normalization", gamma_zero=True), "bn"),
            ]
        layers = [
            (FixedPaddingConv2D(filters, 1, 1, name="conv1"), "conv"),
            (self._bn("bn1_batch_normalization"), "bn_relu"),
        ]
        if self.sk_ratio > 0:
            sk = SelectiveKernel(filters, strides, self.sk_ratio, name="sk2", **self._bn_config())
            layers.append((sk, "sk"))
        else:
            layers += [
                (FixedPaddingConv2D(filters, 3, strides, name="conv2"), "conv"),
                (self._bn("bn2_batch_normalization"), "bn_relu"),
            ]
        return layers + [
            (FixedPaddingConv2D(self.out_filters, 1, 1, name="conv3"), "conv"),
            (self._bn("bn3_batch_normalization", gamma_zero=True), "bn"),
        ]

    def build(self, input_shape):
        if self.use_projection:
            shape = input_shape
            if self.shortcut_pad is not None:
                shape = self.shortcut_pad.compute_output_shape(shape)
            if self.shortcut_pool is not None:
                shape = self.shortcut_pool.compute_output_shape(shape)
            self.shortcut_conv.build(shape)
            self.shortcut_bn.build(self.shortcut_conv.compute_output_shape(shape))
        shape = input_shape
        for layer, kind in self.layers_seq:
            layer.build(shape)
            if kind in ("conv", "sk"):
                shape = layer.compute_output_shape(shape)
        if self.se is not None:
            self.se.build(shape)

    def call(self, x, training=None):
        shortcut = x
        if self.use_projection:
            if self.shortcut_pad is not None:
                shortcut = self.shortcut_pad(shortcut)
            if self.shortcut_pool is not None:
                shortcut = self.shortcut_pool(shortcut)
            shortcut = self.shortcut_bn(self.shortcut_conv(shortcut), training=training)
        for layer, kind in self.layers_seq:
            if kind == "conv":
                x = layer(x)
            elif kind == "sk":
                x = layer(x, training=training)
            else:
                x = layer(x, training=training)
                if kind == "bn_relu":
                    x = ops.relu(x)
        if self.se is not None:
            x = self.se(x)
        return ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.out_filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            filters=self.filters,
            strides=self.strides,
            use_projection=self.use_projection,
            bottleneck=self.bottleneck,
            sk_ratio=self.sk_ratio,
            se_ratio=self.se_ratio,
            **self._bn_config(),
        )
        return cfg


@keras.saving.register_keras_serializable(package="tf_simclr")
class BlockGroup(_BNConfigMixin, keras.layers.Layer):
    """A stage of residual blocks; the first block changes stride/width via a projection."""

    def __init__(
        self,
        filters,
        num_blocks,
        strides,
        bottleneck=False,
        sk_ratio=0.0,
        se_ratio=0.0,
        batch_norm_decay=0.9,
        batch_norm_epsilon=1e-5,
        global_bn=False,
        fused_batch_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_bn(batch_norm_decay, batch_norm_epsilon, global_bn, fused_batch_norm)
        self.filters = filters
        self.num_blocks = num_blocks
        self.strides = strides
        self.bottleneck = bottleneck
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.blocks = [
            ResidualBlock(
                filters,
                strides=strides if i == 0 else 1,
                use_projection=i == 0,
                bottleneck=bottleneck,
                sk_ratio=sk_ratio,
                se_ratio=se_ratio,
                name=f"block_{i}",
                **self._bn_config(),
            )
            for i in range(num_blocks)
        ]

    def build(self, input_shape):
        shape = input_shape
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return strided_shape(
            input_shape, self.strides, self.filters * (4 if self.bottleneck else 1)
        )

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            filters=self.filters,
            num_blocks=self.num_blocks,
            strides=self.strides,
            bottleneck=self.bottleneck,
            sk_ratio=self.sk_ratio,
            se_ratio=self.se_ratio,
            **self._bn_config(),
        )
        return cfg


@keras.saving.register_keras_serializable(package="tf_simclr")
class StemConv(_BNConfigMixin, keras.layers.Layer):
    """Stem convolution(s) up to (not including) the last BN: output is the ``initial_conv`` endpoint.

    ImageNet: 7x7/2 conv. CIFAR (<=32 px): 3x3/1 conv. ResNet-D (sk_ratio > 0, not CIFAR):
    3x3/2 -> BN-ReLU -> 3x3 -> BN-ReLU -> 3x3.
    """

    def __init__(
        self,
        filters,
        cifar_stem=False,
        resnet_d=False,
        batch_norm_decay=0.9,
        batch_norm_epsilon=1e-5,
        global_bn=False,
        fused_batch_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_bn(batch_norm_decay, batch_norm_epsilon, global_bn, fused_batch_norm)
        self.filters = filters
        self.cifar_stem = cifar_stem
        self.resnet_d = resnet_d
        self.convs = []
        self.bns = []
        if cifar_stem:
            self.convs = [FixedPaddingConv2D(filters, 3, 1, name="conv")]
        elif resnet_d:
            half = max(1, filters // 2)
            self.convs = [
                FixedPaddingConv2D(half, 3, 2, name="conv1"),
                FixedPaddingConv2D(half, 3, 1, name="conv2"),
                FixedPaddingConv2D(filters, 3, 1, name="conv3"),
            ]
            self.bns = [self._bn("bn1_batch_normalization"), self._bn("bn2_batch_normalization")]
        else:
            self.convs = [FixedPaddingConv2D(filters, 7, 2, name="conv")]

    def build(self, input_shape):
        shape = input_shape
        for i, conv in enumerate(self.convs):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if i < len(self.bns):
                self.bns[i].build(shape)

    def call(self, x, training=None):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.bns):
                x = ops.relu(self.bns[i](x, training=training))
        return x

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, (1 if self.cifar_stem else 2), self.filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            filters=self.filters,
            cifar_stem=self.cifar_stem,
            resnet_d=self.resnet_d,
            **self._bn_config(),
        )
        return cfg


@keras.saving.register_keras_serializable(package="tf_simclr")
class StemPool(_BNConfigMixin, keras.layers.Layer):
    """Stem BN + ReLU (+ 3x3/2 max-pool unless CIFAR stem): the ``initial_max_pool`` endpoint."""

    def __init__(
        self,
        cifar_stem=False,
        batch_norm_decay=0.9,
        batch_norm_epsilon=1e-5,
        global_bn=False,
        fused_batch_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_bn(batch_norm_decay, batch_norm_epsilon, global_bn, fused_batch_norm)
        self.cifar_stem = cifar_stem
        self.bn = self._bn("stem_batch_normalization")
        self.pool = None
        if not cifar_stem:
            self.pool = keras.layers.MaxPooling2D(pool_size=3, strides=2, padding="same")

    def build(self, input_shape):
        self.bn.build(input_shape)

    def call(self, x, training=None):
        x = ops.relu(self.bn(x, training=training))
        if self.pool is not None:
            x = self.pool(x)
        return x

    def compute_output_shape(self, input_shape):
        if self.cifar_stem:
            return input_shape
        return strided_shape(input_shape, 2, None)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(cifar_stem=self.cifar_stem, **self._bn_config())
        return cfg


def build_resnet(
    depth: int = 50,
    width_multiplier: float = 1.0,
    *,
    input_shape=(None, None, 3),
    cifar_stem: bool | None = None,
    sk_ratio: float = 0.0,
    se_ratio: float = 0.0,
    batch_norm_decay: float = 0.9,
    batch_norm_epsilon: float = 1e-5,
    global_bn: bool = False,
    fused_batch_norm: bool = True,
    name: str | None = None,
) -> keras.Model:
    """Build a SimCLR ResNet v1 trunk (no classifier).

    Returns a functional ``keras.Model`` mapping images [B, H, W, 3] to a dict of endpoints
    ``ENDPOINTS`` (``final_avg_pool`` is the [B, C] representation h). ``cifar_stem=None`` picks
    the CIFAR stem (3x3/1 conv, no max-pool) when the input side is known and <= 32 px.
    ``fused_batch_norm=False`` computes batch statistics as the reference code does (see
    `batch_norm`).
    The model also carries ``layer_groups``: an ordered dict ``{"stem": [...], "block_group1":
    [...], ...}`` of layers, used for ``fine_tune_after_block``.
    """
    _check_resnet_arguments(depth, width_multiplier, sk_ratio, se_ratio, input_shape)
    if cifar_stem is None:
        h, w = input_shape[0], input_shape[1]
        cifar_stem = h is not None and w is not None and max(h, w) <= CIFAR_STEM_MAX_SIZE
    bn_kw = dict(
        batch_norm_decay=batch_norm_decay,
        batch_norm_epsilon=batch_norm_epsilon,
        global_bn=global_bn,
        fused_batch_norm=fused_batch_norm,
    )
    if name is None:
        wm = f"{width_multiplier:g}".replace(".", "_")
        name = f"resnet{depth}_{wm}x" + ("_sk" if sk_ratio > 0 else "")

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    outputs, groups = _resnet_trunk(
        inputs, depth, width_multiplier, cifar_stem, sk_ratio, se_ratio, bn_kw
    )
    model = keras.Model(inputs, outputs, name=name)
    # object.__setattr__: keep Keras from tracking the layers a second time via this dict.
    object.__setattr__(model, "layer_groups", groups)
    object.__setattr__(
        model,
        "resnet_config",
        dict(
            depth=depth,
            width_multiplier=width_multiplier,
            cifar_stem=cifar_stem,
            sk_ratio=sk_ratio,
            se_ratio=se_ratio,
            **bn_kw,
        ),
    )
    return model


def _check_resnet_arguments(depth, width_multiplier, sk_ratio, se_ratio, input_shape) -> None:
    if depth not in RESNET_LAYERS:
        raise ValueError(
            f"Unsupported ResNet depth {depth!r}; choose one of {sorted(RESNET_LAYERS)}."
        )
    if not width_multiplier or width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
    if sk_ratio < 0 or se_ratio < 0:
        raise ValueError(f"sk_ratio and se_ratio must be >= 0, got {sk_ratio}, {se_ratio}.")
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(f"input_shape must be (H, W, C) with known C, got {input_shape!r}.")


def _resnet_trunk(inputs, depth, width_multiplier, cifar_stem, sk_ratio, se_ratio, bn_kw):
    """Stem, four block groups and average pool on ``inputs``: (endpoints, layer groups)."""
    bottleneck, blocks = RESNET_LAYERS[depth]
    stem_conv = StemConv(
        _scaled(64, width_multiplier),
        cifar_stem=cifar_stem,
        resnet_d=sk_ratio > 0,
        name="initial_conv",
        **bn_kw,
    )
    stem_pool = StemPool(cifar_stem=cifar_stem, name="initial_max_pool", **bn_kw)
    outputs = {}
    x = stem_conv(inputs)
    outputs["initial_conv"] = x
    x = stem_pool(x)
    outputs["initial_max_pool"] = x
    groups = {"stem": [stem_conv, stem_pool]}
    for i, (base, n, stride) in enumerate(
        zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True)
    ):
        group = BlockGroup(
            _scaled(base, width_multiplier),
            n,
            stride,
            bottleneck=bottleneck,
            sk_ratio=sk_ratio,
            se_ratio=se_ratio,
            name=f"block_group{i + 1}",
            **bn_kw,
        )
        x = group(x)
        outputs[f"block_group{i + 1}"] = x
        groups[f"block_group{i + 1}"] = [group]
    outputs["final_avg_pool"] = keras.layers.GlobalAveragePooling2D(name="final_avg_pool")(x)
    return outputs, groups


def layer_groups(encoder) -> dict | None:
    """``{"stem": [...], "block_group1": [...], ...}`` of a ResNet from ``build_resnet`` (also
    after ``keras.models.load_model``, found by layer name); None for other encoders."""
    groups = getattr(encoder, "layer_groups", None)
    if groups:
        return groups
    try:
        found = {"stem": [encoder.get_layer("initial_conv"), encoder.get_layer("initial_max_pool")]}
        for i in range(1, 5):
            found[f"block_group{i}"] = [encoder.get_layer(f"block_group{i}")]
    except (AttributeError, ValueError):
        return None
    return found


def freeze_up_to_block(encoder: keras.Model, fine_tune_after_block: int) -> None:
    """Freeze the stem and block groups 1..k (k = ``fine_tune_after_block``).

    -1 trains everything, 0 freezes the stem only, 4 freezes the whole encoder. Frozen layers
    get ``trainable=False``, so their batch norm runs in inference mode (Keras semantics).
    Encoders without ``layer_groups`` (e.g. keras.applications models) accept only -1 and 4.
    """
    k = fine_tune_after_block
    if k not in (-1, 0, 1, 2, 3, 4):
        raise ValueError(f"fine_tune_after_block must be in -1..4, got {k!r}.")
    if k == -1:
        return
    if k == 4:
        encoder.trainable = False
        return
    groups = layer_groups(encoder)
    if not groups:
        raise ValueError(
            f"fine_tune_after_block={k} needs an encoder with named block groups "
            "(build it with tf_simclr.network.resnet.build_resnet); for other encoders use -1 (train all) "
            "or 4 (freeze the encoder)."
        )
    names = ["stem"] + [f"block_group{i}" for i in range(1, k + 1)]
    for gname in names:
        for layer in groups[gname]:
            layer.trainable = False
