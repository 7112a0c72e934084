"""The building blocks of tf_simclr's ResNets: batch norm (TF's fused kernel or the reference's
statistics), fixed-padding convolutions, selective kernels (SimCLRv2) and squeeze-excitation.

Every batch-norm layer has ``batch_normalization`` in its name so optimisers that exclude BN
parameters by variable path (LARS) find them.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tf_simclr.network.conv_grad import (
    conv2d_with_matmul_filter_gradient,
    matmul_filter_gradient_pays_off,
)


def strided_shape(input_shape, strides: int, channels: int | None) -> tuple:
    """[B, H, W, C] after a layer of stride `strides` with fixed padding: ceil(n / strides)
    (None stays None); `channels` None keeps the input's."""
    b, h, w, c = input_shape

    def out(n):
        return None if n is None else -(-n // strides)

    return (b, out(h), out(w), c if channels is None else channels)


def _conv_init():
    return keras.initializers.VarianceScaling()


def _scaled(channels: int, width_multiplier: float) -> int:
    """Channel count after the width multiplier (at least 1)."""
    return max(1, int(round(channels * width_multiplier)))


@keras.saving.register_keras_serializable(package="tf_simclr")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed with TF's fused kernel where possible.

    Same variables, hyper-parameters and semantics as the Keras layer (moving statistics use the
    biased batch variance, ``moving = momentum * moving + (1 - momentum) * batch``), but one
    FusedBatchNormV3 op (and its fused gradient) instead of ~15 elementwise ops: faster on CPU
    and much quicker to trace. Falls back to the Keras implementation for cross-replica
    (``synchronized``) statistics with more than one replica, masks, renorm, or axis != -1.
    """

    def _can_fuse(self, inputs, mask):
        if mask is not None or self.renorm or self.axis not in (-1, len(inputs.shape) - 1):
            return False
        if len(inputs.shape) not in (2, 4) or inputs.dtype not in (
            tf.float32,
            tf.float16,
            tf.bfloat16,
        ):
            return False
        if self.synchronized:
            ctx = tf.distribute.get_replica_context()
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                return False  # cross-replica statistics: Keras' all-reduce implementation
        return True

    def call(self, inputs, training=None, mask=None):
        inputs = tf.convert_to_tensor(inputs)
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = inputs
        if len(inputs.shape) == 2:
            x = tf.reshape(x, [-1, 1, 1, inputs.shape[-1]])
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            # The fused op returns the unbiased (n-1) variance; Keras keeps the biased one.
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=self.epsilon,
                is_training=False,
            )
        if len(inputs.shape) == 2:
            y = tf.reshape(y, tf.shape(inputs))
        return tf.cast(y, self.compute_dtype)


def batch_norm(
    *,
    name: str,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    global_bn: bool = False,
    gamma_zero: bool = False,
    center: bool = True,
    fused: bool = True,
) -> keras.layers.BatchNormalization:
    """BatchNormalization with SimCLR defaults; ``global_bn`` syncs statistics across replicas.

    ``fused=True``: `FusedBatchNormalization` (TF's fused kernel: faster, and its batch variance
    is computed in a numerically stabler way). ``fused=False``: plain Keras batch norm, whose
    statistics are computed as the reference code's (Sync)BatchNormalization computes them
    (with ``global_bn``: E[x^2] - E[x]^2 over all replicas), for bit-level parity with it.
    """
    if "batch_normalization" not in name:
        name = f"{name}_batch_normalization"
    cls = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    return cls(
        axis=-1,
        momentum=momentum,
        epsilon=epsilon,
        center=center,
        scale=True,
        gamma_initializer="zeros" if gamma_zero else "ones",
        synchronized=global_bn,
        name=name,
    )


class _BNConfigMixin:
    """Shared BN hyper-parameters for the composite layers below."""

    def _init_bn(self, batch_norm_decay, batch_norm_epsilon, global_bn, fused_batch_norm=True):
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        self.global_bn = global_bn
        self.fused_batch_norm = fused_batch_norm

    def _bn(self, name, gamma_zero=False):
        return batch_norm(
            name=name,
            momentum=self.batch_norm_decay,
            epsilon=self.batch_norm_epsilon,
            global_bn=self.global_bn,
            gamma_zero=gamma_zero,
            fused=self.fused_batch_norm,
        )

    def _bn_config(self):
        return {
            "batch_norm_decay": self.batch_norm_decay,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "global_bn": self.global_bn,
            "fused_batch_norm": self.fused_batch_norm,
        }


@keras.saving.register_keras_serializable(package="tf_simclr")
class FixedPaddingConv2D(keras.layers.Layer):
    """Conv2D without bias; strided convs pad by (k-1) explicitly so output size is ceil(n/s)."""

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        pad_total = kernel_size - 1
        self._pad = (pad_total // 2, pad_total - pad_total // 2)
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same" if strides == 1 else "valid",
            use_bias=False,
            kernel_initializer=_conv_init(),
            name="conv2d",
        )

    def build(self, input_shape):
        b, h, w, c = input_shape
        if self.strides > 1:
            h = None if h is None else h + self.kernel_size - 1
            w = None if w is None else w + self.kernel_size - 1
        self.conv.build((b, h, w, c))

    def call(self, x):
        output_shape = strided_shape(x.shape, self.strides, self.filters)
        if self.strides > 1 and self.kernel_size > 1:
            x = ops.pad(x, [[0, 0], self._pad, self._pad, [0, 0]])
        if matmul_filter_gradient_pays_off(x.dtype, output_shape):
            # Same variable and forward op as self.conv; only the kernel gradient differs.
            padding = "SAME" if self.strides == 1 else "VALID"
            kernel = tf.cast(self.conv.kernel, x.dtype)
            return conv2d_with_matmul_filter_gradient(x, kernel, self.strides, padding)
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides)
        return cfg


@keras.saving.register_keras_serializable(package="tf_simclr")
class SelectiveKernel(_BNConfigMixin, keras.layers.Layer):
    """SimCLRv2 selective-kernel conv: two 3x3 paths mixed by a softmax attention over paths."""

    def __init__(
        self,
        filters,
        strides=1,
        sk_ratio=0.0625,
        min_dim=32,
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
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        mid_dim = max(int(filters * sk_ratio), min_dim)
        self.conv = FixedPaddingConv2D(2 * filters, 3, strides, name="sk_conv")
        self.bn = self._bn("sk_batch_normalization")
        self.fc_reduce = keras.layers.Conv2D(
            mid_dim, 1, use_bias=False, kernel_initializer=_conv_init(), name="sk_reduce"
        )
        self.bn_reduce = self._bn("sk_reduce_batch_normalization")
        self.fc_expand = keras.layers.Conv2D(
            2 * filters, 1, use_bias=False, kernel_initializer=_conv_init(), name="sk_expand"
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))
        self.fc_reduce.build((None, 1, 1, self.filters))
        self.bn_reduce.build((None, 1, 1, self.fc_reduce.filters))
        self.fc_expand.build((None, 1, 1, self.fc_reduce.filters))

    def call(self, x, training=None):
        x = ops.relu(self.bn(self.conv(x), training=training))
        paths = ops.stack(ops.split(x, 2, axis=-1), axis=0)  # [2, B, H, W, C]
        squeeze = ops.mean(ops.sum(paths, axis=0), axis=(1, 2), keepdims=True)
        squeeze = ops.relu(self.bn_reduce(self.fc_reduce(squeeze), training=training))
        mixing = self.fc_expand(squeeze)
        mixing = ops.softmax(ops.stack(ops.split(mixing, 2, axis=-1), axis=0), axis=0)
        return ops.sum(paths * mixing, axis=0)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            filters=self.filters,
            strides=self.strides,
            sk_ratio=self.sk_ratio,
            min_dim=self.min_dim,
            **self._bn_config(),
        )
        return cfg


@keras.saving.register_keras_serializable(package="tf_simclr")
class SqueezeExcite(keras.layers.Layer):
    """SE-Net channel attention: global pool -> 1x1 reduce (ReLU) -> 1x1 expand (sigmoid) -> scale."""

    def __init__(self, reduced_filters, **kwargs):
        super().__init__(**kwargs)
        self.reduced_filters = reduced_filters
        self.reduce = keras.layers.Conv2D(
            reduced_filters, 1, kernel_initializer=_conv_init(), name="se_reduce"
        )
        self.expand = None

    def build(self, input_shape):
        self.expand = keras.layers.Conv2D(
            input_shape[-1], 1, kernel_initializer=_conv_init(), name="se_expand"
        )
        self.reduce.build((None, 1, 1, input_shape[-1]))
        self.expand.build((None, 1, 1, self.reduced_filters))

    def call(self, x):
        s = ops.mean(x, axis=(1, 2), keepdims=True)
        s = self.expand(ops.relu(self.reduce(s)))
        return ops.sigmoid(s) * x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cfg = super().get_config()
        cfg.update(reduced_filters=self.reduced_filters)
        return cfg
