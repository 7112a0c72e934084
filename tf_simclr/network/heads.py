"""The SimCLR projection head g(h): the layers between the representation h and the contrastive
projection z, whose hidden layers fine-tuning can start from (SimCLRv2)."""

from __future__ import annotations

import keras
from keras import ops

from tf_simclr.choices import PROJ_HEAD_MODES
from tf_simclr.network.layers import batch_norm

# The head's depth when not given: SimCLRv1's 2 layers (the same default as
# Config.num_proj_layers and --num_proj_layers); SimCLRv2 uses 3.
DEFAULT_NUM_PROJ_LAYERS = 2


@keras.saving.register_keras_serializable(package="tf_simclr")
class ProjectionHead(keras.layers.Layer):
    """SimCLR projection head g(h); ``call`` returns the list of hiddens [h, g_1(h), ..., z].

    nonlinear: ``num_proj_layers`` layers; hidden ones are Dense(no bias) + BN + ReLU at the input
    width, the last is Dense(proj_out_dim, no bias) + BN without beta. linear: that last layer
    only. none: z = h. Dense kernels start from N(0, 0.01^2) as in the reference code.
    """

    def __init__(
        self,
        mode="nonlinear",
        proj_out_dim=128,
        num_proj_layers=DEFAULT_NUM_PROJ_LAYERS,
        batch_norm_decay=0.9,
        batch_norm_epsilon=1e-5,
        global_bn=False,
        fused_batch_norm=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in PROJ_HEAD_MODES:
            raise ValueError(f"proj_head_mode must be one of {PROJ_HEAD_MODES}, got {mode!r}.")
        if mode == "nonlinear" and num_proj_layers < 1:
            raise ValueError(
                f"proj_head_mode='nonlinear' needs num_proj_layers >= 1, got {num_proj_layers}."
            )
        if mode != "none" and proj_out_dim < 1:
            raise ValueError(f"proj_out_dim must be >= 1, got {proj_out_dim}.")
        self.mode = mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        self.global_bn = global_bn
        self.fused_batch_norm = fused_batch_norm
        self.dense_layers = []
        self.bn_layers = []

    @property
    def num_layers(self) -> int:
        """Number of Dense+BN layers (0 for mode 'none')."""
        return {"none": 0, "linear": 1, "nonlinear": self.num_proj_layers}[self.mode]

    def build(self, input_shape):
        width = int(input_shape[-1])
        n = self.num_layers
        prefix = "l" if self.mode == "linear" else "nl"
        for j in range(n):
            last = j == n - 1
            dense = keras.layers.Dense(
                self.proj_out_dim if last else width,
                use_bias=False,  # always followed by BN
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"{prefix}_{j}_dense",
            )
            bn = batch_norm(
                name=f"{prefix}_{j}_batch_normalization",
                momentum=self.batch_norm_decay,
                epsilon=self.batch_norm_epsilon,
                global_bn=self.global_bn,
                center=not last,  # the output layer has neither bias nor beta
                fused=self.fused_batch_norm,
            )
            dense.build((None, width))
            bn.build((None, dense.units))
            self.dense_layers.append(dense)
            self.bn_layers.append(bn)

    def call(self, h, training=None):
        hiddens = [h]
        x = h
        n = self.num_layers
        for j in range(n):
            x = self.bn_layers[j](self.dense_layers[j](x), training=training)
            if j != n - 1:
                x = ops.relu(x)
            hiddens.append(x)
        return hiddens

    def compute_output_shape(self, input_shape):
        shapes = [tuple(input_shape)]
        for j in range(self.num_layers):
            last = j == self.num_layers - 1
            shapes.append((input_shape[0], self.proj_out_dim if last else input_shape[-1]))
        return shapes

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            mode=self.mode,
            proj_out_dim=self.proj_out_dim,
            num_proj_layers=self.num_proj_layers,
            batch_norm_decay=self.batch_norm_decay,
            batch_norm_epsilon=self.batch_norm_epsilon,
            global_bn=self.global_bn,
            fused_batch_norm=self.fused_batch_norm,
        )
        return cfg
