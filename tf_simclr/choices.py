"""The valid values of each setting with a fixed set of choices, and the settings' error type:
one definition each, read by the Config, its checks, the command line and the library modules
that take these values (no TensorFlow)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag value or a combination of flags is invalid; the message names the flag."""


MODES = ("train", "eval", "train_then_eval", "preview", "export", "semi_supervised", "embed")
# The --mode values that train a network, and those that evaluate one.
TRAINING_MODES = ("train", "train_then_eval", "semi_supervised")
EVALUATING_MODES = ("eval", "train_then_eval", "semi_supervised")
TRAIN_MODES = ("pretrain", "finetune", "distill")
# The train modes whose supervised head is trained through the network (on labels or on a
# teacher's predictions).
SUPERVISED_TRAIN_MODES = ("finetune", "distill")
OPTIMIZERS = ("lars", "momentum", "adam", "adamw")
LR_SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("nonlinear", "linear", "none")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# tf_simclr.training.precision resolves "auto" to one of the others, the Keras policies.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
LOSS_SCALES = ("paper", "reference")
SUP_HEAD_OPTIMIZERS = ("momentum", "shared")
BRIGHTNESS_MODES = ("multiplicative", "additive")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)

# 100 x 100 thumbnails of at most 64 px (tf_simclr.evaluation.visualize) keep the projector's sprite
# within the 8192 px TensorBoard accepts.
MAX_PROJECTOR_EMBEDDINGS = 10_000
