"""SimCLRv2's distillation teacher: what --teacher names, opened as a frozen network.

`load_teacher` opens a tf_simclr model_dir or checkpoint, a converted published model, or an
exported module as a frozen `Teacher` that maps images to logits; the training loop adds its
logits of each batch to the batch, and `tf_simclr.objectives.distillation` is the loss.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from tf_simclr.config import CONFIG_FILENAME, Config, ConfigError
from tf_simclr.training import checkpoints as ckpt_lib

log = logging.getLogger(__name__)


class TeacherError(ValueError):
    """--teacher does not name a usable teacher; the message says why and what to give."""


@dataclass
class Teacher:
    """A frozen network mapping images (float32 in [0, 1], [B, H, W, 3]) to class logits.

    Called like a SimCLRModel: ``teacher(images, training=False)`` returns {"logits_sup": ...},
    so the evaluation helpers score it the same way. It always runs in inference mode.
    """

    logits_fn: Callable[[tf.Tensor], tf.Tensor]
    num_classes: int
    source: str
    variables: list
    image_size: int | None = None  # images are resized to this side first (None: as given)

    def logits(self, images) -> tf.Tensor:
        images = tf.cast(images, tf.float32)
        if self.image_size is not None and images.shape[1] != self.image_size:
            images = tf.image.resize(images, [self.image_size, self.image_size])
        return tf.stop_gradient(tf.cast(self.logits_fn(images), tf.float32))

    def __call__(self, images, training=False):
        del training  # a teacher is always frozen
        return {"logits_sup": self.logits(images)}


def _head_classes(prefix: str) -> int | None:
    """Classes of the supervised head stored in a tf_simclr checkpoint (None: it has none)."""
    from tf_simclr.network.model import SUPERVISED_HEAD_NAME

    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    for path in ckpt_lib.stored_model_weight_paths(prefix):
        if SUPERVISED_HEAD_NAME + "/kernel" in path:
            return int(shapes[ckpt_lib.checkpoint_key(path)][-1])
    return None


def _not_a_model(path: str, why: str) -> TeacherError:
    return TeacherError(
        f"--teacher={path} is not a model: {why}. Give a tf_simclr model_dir (config.json and "
        "ckpt-N files, e.g. a --train_mode=finetune run or one written by "
        "`python -m tf_simclr.convert`), a checkpoint prefix model_dir/ckpt-N, or an exported "
        "module model_dir/saved_model/<step>."
    )


def _no_head(path: str) -> TeacherError:
    return TeacherError(
        f"--teacher={path} has no supervised head, so it predicts no classes to distil. "
        "Fine-tune it first (--train_mode=finetune --checkpoint=...) and use that run as "
        "the teacher."
    )


def _teacher_from_checkpoint(path: str, precision: str, strategy) -> Teacher:
    from tf_simclr import factory

    run_dir = next(
        (
            d
            for d in (path, os.path.dirname(path))
            if d and os.path.isfile(os.path.join(d, CONFIG_FILENAME))
        ),
        None,
    )
    if run_dir is None:
        raise _not_a_model(path, f"there is no {CONFIG_FILENAME} beside it (or it does not exist)")
    try:
        config = Config.load(run_dir)
    except ConfigError as err:
        raise _not_a_model(path, str(err)) from err
    from tf_simclr.workflows.warm_start import resolve_checkpoint

    try:
        _, prefix = resolve_checkpoint(path, flag="--teacher")
    except (FileNotFoundError, ValueError) as err:
        raise _not_a_model(path, str(err)) from err
    classes = _head_classes(prefix)
    if not classes:
        raise _no_head(path)
    # The teacher's own architecture; nothing of it trains (no freezing, no unused-BN updates).
    config = config.replace(
        num_classes=classes,
        fine_tune_after_block=-1,
        ft_update_unused_head_bn=False,
        checkpoint=None,
        teacher=None,
        train_mode="finetune" if config.train_mode == "distill" else config.train_mode,
        label_fraction=None,
        label_ids_file=None,
        random_init=False,
    )
    with strategy.scope():  # its variables on every replica, like the student's
        model = factory.build_model(config, classes, precision=precision)
    ckpt_lib.check_checkpoint_fits(prefix, model)
    ckpt_lib.training_checkpoint(model).restore(prefix).expect_partial()
    model.trainable = False

    def logits_fn(images):
        return model(images, training=False)["logits_sup"]

    log.info(
        "Teacher: %s (ResNet-%d x%g, %d classes, %s).",
        prefix,
        config.resnet_depth,
        config.width_multiplier,
        classes,
        config.train_mode,
    )
    return Teacher(logits_fn, classes, prefix, list(model.weights), image_size=config.image_size)


def _teacher_from_export(path: str, image_size: int) -> Teacher:
    try:
        module = tf.saved_model.load(path)
    except (tf.errors.OpError, OSError, ValueError) as err:
        raise _not_a_model(path, f"its SavedModel cannot be loaded ({err})") from err
    if not callable(module):
        raise _not_a_model(path, "the SavedModel has no __call__ function")

    def logits_fn(images):
        outputs = module(images, training=False)
        if not isinstance(outputs, dict):
            raise _not_a_model(path, "its SavedModel does not return named outputs")
        if "logits_sup" not in outputs:
            raise _no_head(path)
        return outputs["logits_sup"]

    probe = logits_fn(tf.zeros([1, image_size, image_size, 3]))
    classes = int(probe.shape[-1])
    log.info("Teacher: exported module %s (%d classes).", path, classes)
    return Teacher(logits_fn, classes, path, list(module.variables))


def load_teacher(
    path: str, *, image_size: int, precision: str = "float32", strategy=None
) -> Teacher:
    """The frozen teacher --teacher names. A tf_simclr model_dir or checkpoint is rebuilt from
    its config.json (its own architecture and image size) in `precision`, under `strategy`'s
    scope (default: the current strategy); an exported module is loaded as it is (float32)
    and outside any strategy scope: a SavedModel loaded under MirroredStrategy cannot be
    called from a replica (TensorFlow: "a graph generated from the cross-replica context"),
    while one-process replicas read plain variables. (On TPUs give a model_dir or checkpoint.)
    Raises TeacherError naming what is wrong with `path`."""
    if not path:
        raise TeacherError("--train_mode=distill needs --teacher.")
    path = os.path.expanduser(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return _teacher_from_export(path, image_size)
    if os.path.isfile(path) and not path.endswith(".index"):
        raise _not_a_model(path, "it is a file")
    return _teacher_from_checkpoint(path, precision, strategy or tf.distribute.get_strategy())
