"""Export a trained SimCLR model as a reusable TF2 SavedModel (TF-Hub format).

The exported module works for people who never import tf_simclr:

* ``tf.saved_model.load(path)`` / ``tensorflow_hub.load(path)`` give an object ``m`` with
  ``m(images, training=False)`` -> dict of named float32 outputs (traced for both values of
  ``training``), ``m(images, trainable=False)`` (the call style of the reference SimCLRv2 TF2
  modules), ``m.variables``, ``m.trainable_variables`` and ``m.regularization_losses``.
* ``m.signatures["serving_default"]`` (inference, TF Serving) and the single-input functions
  ``m.serve(images)`` / ``m.serve_train(images)`` (inference / training mode), which is what
  ``keras.layers.TFSMLayer`` needs; :class:`SimCLRHubLayer` wraps that for Keras 3.
* ``tensorflow_hub.KerasLayer(path, trainable=True, output_key="final_avg_pool")`` in a tf-keras
  model fine-tunes it: gradients flow in training mode, also through layers that were
  synchronised batch norm (exported outside a strategy scope, their one-replica all_reduce is
  saved with its custom gradient).
* A reloaded module fine-tuned in user code can be saved again with ``tf.saved_model.save(m, p)``
  (``serving_default`` is kept).

Images are float32 in [0, 1] (or uint8, scaled to [0, 1]), NHWC, 3 channels, any batch
size. Anything else stops a call with an InvalidArgumentError that names the problem and the
fix (``tf_simclr.validation.check_images``): out-of-range values, and for ``m(images)`` also a
wrong rank, channel count or dtype, which a reloaded module would otherwise only answer with
"Could not find matching concrete function". The ``serve`` signatures keep their fixed float32
[batch, height, width, 3] input (TF Serving and TFSMLayer need one); TensorFlow itself refuses
other shapes and dtypes there. Neither tensorflow-hub nor tf-keras is needed to export; they
are consumer-side dependencies only.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from tf_simclr import validation
from tf_simclr.network.resnet import ENDPOINTS

# Names of the endpoints a SimCLRModel returns (logits_sup only with a supervised head).
OUTPUT_NAMES = ENDPOINTS + ("proj_head_input", "proj_head_output", "logits_sup")
SERVE_ENDPOINT = "serve"
SERVE_TRAIN_ENDPOINT = "serve_train"
log = logging.getLogger(__name__)
_TMP_PREFIX = ".tmp-export-"
_OLD_PREFIX = ".old-export-"
# Dtypes people pass by mistake (NumPy's float64/int64 defaults, half precision, 16-bit PNG
# pixels). `m(images)` is traced for them too, as a function that only fails with the message
# naming the dtype and the fix.
_REFUSED_DTYPES = (tf.float64, tf.float16, tf.int32, tf.int64, tf.uint16)
# The (training, trainable) values `m(images, ...)` is traced for (Python bools, one graph
# each): the defaults, training=True, and the reference SimCLRv2 `trainable=` style, alone or
# with training=True. `trainable` overrides `training` when given.
_CALL_FORMS = ((False, None), (True, None), (False, False), (False, True), (True, True))


def _is_remote(path: str) -> bool:
    return "://" in path


def _normalise_image_size(image_size) -> tuple[int | None, int | None]:
    if image_size is None:
        return (None, None)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        sizes = (image_size, image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        sizes = tuple(image_size)
    else:
        raise ValueError(
            f"image_size must be None, an int or a (height, width) pair, got {image_size!r}."
        )
    for s in sizes:
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s <= 0):
            raise ValueError(
                f"image_size entries must be positive ints or None, got {image_size!r}."
            )
    return sizes


def _as_tf_variable(variable) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (the SavedModel tracks TF objects)."""
    if isinstance(variable, tf.Variable):
        return variable
    value = getattr(variable, "value", None)
    if isinstance(value, tf.Variable):
        return value
    raise TypeError(
        f"Cannot export variable {getattr(variable, 'path', variable)!r}: it is not backed by a "
        "tf.Variable. Export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)."
    )


def distinct_variables(variables) -> list:
    """`variables` with repeats of the same backing tf.Variable dropped, first one kept: the
    order in which an export saves them (`module.variables`), with the Keras objects (and so
    their paths) kept."""
    seen, out = set(), []
    for v in variables:
        key = id(_as_tf_variable(v))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _dedupe(variables) -> list[tf.Variable]:
    return [_as_tf_variable(v) for v in distinct_variables(variables)]


def _regularization_fns(model) -> list[Callable[[], tf.Tensor]]:
    """One argument-free tf.function per regularised weight (the TF-Hub convention)."""
    fns = []
    for weight in getattr(model, "trainable_weights", []):
        regularizer = getattr(weight, "regularizer", None)
        if regularizer is None:
            continue

        fns.append(tf.function(_bind_regularizer(regularizer, weight), input_signature=[]))
    return fns


def _bind_regularizer(regularizer, weight):
    # A closure, not default arguments: tf.function cannot serialise non-tensor defaults.
    def loss():
        return tf.cast(regularizer(weight), tf.float32)

    return loss


class _HubModule(tf.train.Checkpoint):
    # A tf.train.Checkpoint root (unlike tf.Module) may carry a `variables` attribute.
    def __init__(self, model, image_size):
        super().__init__()
        # Bypass attribute tracking: the module's object graph holds only the variables and
        # functions, not the Keras objects (their internals are not part of the module API).
        object.__setattr__(self, "_model", model)
        self.variables = _dedupe(model.variables)
        self.trainable_variables = _dedupe(model.trainable_variables)
        self.regularization_losses = _regularization_fns(model)
        height, width = image_size
        any_size = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
        fixed_size = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
        # The network is traced once per mode; every public entry point calls into one of
        # these two graphs, so the module stores each only once. The fixed input signature
        # makes calls with fixed-size images reuse them instead of retracing.
        self._forward_inference = tf.function(
            self._forward_inference_py, input_signature=[any_size]
        )
        self._forward_training = tf.function(self._forward_training_py, input_signature=[any_size])
        self.serve = tf.function(self._serve_py, input_signature=[fixed_size])
        self.serve_train = tf.function(self._serve_train_py, input_signature=[fixed_size])
        # tf.saved_model.save(obj) with no `signatures` uses this attribute as serving_default,
        # so a module reloaded, fine-tuned and saved again keeps its serving signature.
        self._default_save_signature = self.serve
        # Nothing is traced here: see _trackable_children.

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # The saver asks for the children inside its save context, which is part of
        # tf.function's cache key: a trace made before tf.saved_model.save would be traced
        # again there (the network included) and thrown away. So the call forms of `m(images)`
        # are traced now, once; the functions with an input signature (serve, the two forward
        # graphs, the regularisers) are traced by the saver itself.
        if save_type == "savedmodel":
            self._trace_call_forms()
        return super()._trackable_children(save_type, **kwargs)

    def _trace_call_forms(self) -> None:
        # Any shape: the call checks rank and channels itself, with a readable message.
        for dtype in (tf.float32, tf.uint8, *_REFUSED_DTYPES):
            spec = tf.TensorSpec(None, dtype, name="images")
            for training, trainable in _CALL_FORMS:
                self.__call__.get_concrete_function(spec, training=training, trainable=trainable)

    def _forward_py(self, images, training):
        outputs = self._model(images, training=training)
        if not isinstance(outputs, Mapping):
            raise TypeError(
                "export_saved_model needs a model whose call(images, training) returns a dict of "
                f"named outputs (e.g. tf_simclr SimCLRModel); got {type(outputs).__name__}."
            )
        return {str(k): tf.cast(v, tf.float32) for k, v in outputs.items()}

    def _forward_inference_py(self, images):
        return self._forward_py(images, training=False)

    def _forward_training_py(self, images):
        return self._forward_py(images, training=True)

    @tf.function
    def __call__(self, images, training=False, trainable=None):
        if trainable is not None:
            training = trainable
        forward = self._forward_training if training else self._forward_inference
        problem = validation.dtype_problem(images.dtype)
        if problem is not None:
            return _refusal(images, problem, forward.get_concrete_function().structured_outputs)
        return forward(_checked_images(images))

    def _serve_py(self, images):
        return self._forward_inference(_checked_images(images))

    def _serve_train_py(self, images):
        return self._forward_training(_checked_images(images))


def _refusal(images: tf.Tensor, problem: str, outputs_like: Mapping) -> dict:
    """A graph for a refused dtype: it fails with `problem` (the message of
    validation.check_images) and never runs the network; its outputs only have the network's
    names and dtypes, so the graph captures no variable."""
    # A condition that is never true but not a constant, so nothing folds it away.
    failed = tf.debugging.Assert(tf.equal(tf.size(images), -1), [problem])
    with tf.control_dependencies([failed]):
        return {
            name: tf.zeros([1 if d is None else d for d in like.shape], like.dtype)
            for name, like in outputs_like.items()
        }


def _checked_images(images: tf.Tensor) -> tf.Tensor:
    """The float32 [0, 1] batch a module function feeds the network (uint8 scaled to [0, 1]),
    behind the checks of validation.check_images."""
    images = validation.check_images(images, name="images", rank=4)
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) * (1.0 / 255.0)
    return images


def _ensure_built(model, image_size) -> None:
    if getattr(model, "built", False) or getattr(model, "variables", None):
        return
    height, width = image_size
    if height is None or width is None:
        raise ValueError(
            "The model is not built yet: call it once on a batch of images, or pass "
            "image_size= so export_saved_model can build it."
        )
    model(tf.zeros([1, height, width, 3], tf.float32), training=False)


def write_saved_model(model, path: str, *, image_size=None) -> str:
    """Write `model` as a TF-Hub style SavedModel at `path` (not atomic; see export_saved_model).

    `model(images, training=bool)` must return a dict of named tensors. Returns `path`.
    """
    sizes = _normalise_image_size(image_size)
    _ensure_built(model, sizes)
    module = _HubModule(model, sizes)
    # Every function is traced by the saver, in the caller's distribution context: outside a
    # strategy scope synchronised batch norm is traced with the default replica context's
    # all_reduce (one replica, the same batch moments), whose custom gradients are saved.
    tf.saved_model.save(
        module,
        path,
        signatures={"serving_default": module.serve},
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=True),
    )
    return path


def _list_steps(export_dir_base: str) -> list[int]:
    if not tf.io.gfile.isdir(export_dir_base):
        return []
    steps = []
    for name in tf.io.gfile.listdir(export_dir_base):
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(export_dir_base, name)):
            steps.append(int(name))
    return sorted(steps)


def list_exports(export_dir_base: str) -> list[str]:
    """Paths of the complete exports under `export_dir_base`, oldest (lowest step) first."""
    return [os.path.join(export_dir_base, str(s)) for s in _list_steps(export_dir_base)]


def latest_export(export_dir_base: str) -> str | None:
    """Path of the newest export under `export_dir_base`, or None if there is none."""
    exports = list_exports(export_dir_base)
    return exports[-1] if exports else None


def prune_exports(export_dir_base: str, keep_max: int | None) -> list[str]:
    """Delete the oldest `<step>/` exports so that at most `keep_max` remain; returns the removed."""
    if keep_max is None:
        return []
    if isinstance(keep_max, bool) or not isinstance(keep_max, int) or keep_max < 1:
        raise ValueError(f"keep_max must be a positive int or None (keep all), got {keep_max!r}.")
    exports = list_exports(export_dir_base)
    removed = exports[: max(0, len(exports) - keep_max)]
    for path in removed:
        tf.io.gfile.rmtree(path)
    return removed


def _rmtree_quiet(path: str) -> None:
    try:
        if _is_remote(path):
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    except (OSError, tf.errors.OpError):
        pass


def _rename(src: str, dst: str) -> None:
    if _is_remote(src):
        tf.io.gfile.rename(src, dst, overwrite=False)
    else:
        os.replace(src, dst)


def recover_interrupted_exports(export_dir_base: str) -> dict:
    """Clean up after an export that was killed (SIGKILL, power loss) rather than interrupted.

    A hidden `.tmp-export-*` directory is an unfinished module: it is deleted. A hidden
    `.old-export-<step>-*` directory is a complete earlier export of <step> that was being
    replaced: it is deleted if `<step>/` exists, otherwise renamed back to `<step>/`.
    Returns {"removed": [...], "restored": [...]}; each action is logged.
    """
    done = {"removed": [], "restored": []}
    if not tf.io.gfile.isdir(export_dir_base):
        return done
    for name in sorted(tf.io.gfile.listdir(export_dir_base)):
        name = name.rstrip("/")
        path = os.path.join(export_dir_base, name)
        if name.startswith(_TMP_PREFIX):
            log.warning("Removing %s: an export that was killed before it finished.", path)
            _rmtree_quiet(path)
            done["removed"].append(path)
        elif name.startswith(_OLD_PREFIX):
            step = name[len(_OLD_PREFIX) :].split("-", 1)[0]
            final_path = os.path.join(export_dir_base, step)
            if step.isdigit() and not tf.io.gfile.exists(final_path):
                log.warning("Restoring %s from %s (its replacement was killed).", final_path, path)
                _rename(path, final_path)
                done["restored"].append(final_path)
            else:
                log.warning("Removing %s: an export that had already been replaced.", path)
                _rmtree_quiet(path)
                done["removed"].append(path)
    return done


def export_saved_model(
    model,
    export_dir_base: str,
    *,
    step: int,
    keep_max: int | None = 5,
    image_size=None,
) -> str:
    """Export `model` to `export_dir_base/<step>/` atomically; returns that path.

    `model` is a built Keras 3 model (e.g. tf_simclr SimCLRModel) whose
    `model(images, training=bool)` returns a dict of named outputs. The module is written to a
    temporary sibling directory and renamed into place, so `<step>/` is either absent or
    complete; an existing export of the same step is replaced. Afterwards the oldest exports
    beyond `keep_max` are deleted (None keeps all). `image_size` (int, (h, w) or None = any)
    fixes the spatial dims of the `serving_default`/`serve`/`serve_train` signatures only.
    Works inside or outside a distribution strategy scope (distributed variables are saved as
    plain ones). With several workers, call it on the chief only: workers share the directory.
    A killed export can leave a hidden `.tmp-export-*` directory, never a partial `<step>/`;
    the next export cleans it up (`recover_interrupted_exports`).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int (the global step), got {step!r}.")
    if keep_max is not None and (
        isinstance(keep_max, bool) or not isinstance(keep_max, int) or keep_max < 1
    ):
        raise ValueError(f"keep_max must be a positive int or None (keep all), got {keep_max!r}.")
    export_dir_base = os.fspath(export_dir_base)
    tf.io.gfile.makedirs(export_dir_base)
    recover_interrupted_exports(export_dir_base)
    final_path = os.path.join(export_dir_base, str(step))
    token = uuid.uuid4().hex[:8]
    tmp_path = os.path.join(export_dir_base, f"{_TMP_PREFIX}{step}-{token}")
    old_path = os.path.join(export_dir_base, f"{_OLD_PREFIX}{step}-{token}")
    try:
        write_saved_model(model, tmp_path, image_size=image_size)
        if tf.io.gfile.exists(final_path):
            _rename(final_path, old_path)
        _rename(tmp_path, final_path)
    except BaseException:
        _rmtree_quiet(tmp_path)
        if tf.io.gfile.exists(old_path) and not tf.io.gfile.exists(final_path):
            _rename(old_path, final_path)
        raise
    _rmtree_quiet(old_path)
    prune_exports(export_dir_base, keep_max)
    return final_path


@keras.saving.register_keras_serializable(package="tf_simclr")
class SimCLRHubLayer(keras.layers.TFSMLayer):
    """Keras 3 layer around an exported tf_simclr module (no tensorflow-hub needed).

    `output_key` selects one output (None returns the whole dict). With `trainable=False` the
    module always runs in inference mode (frozen encoder, linear evaluation); with
    `trainable=True` it runs the training-mode graph when the model is training (batch-norm
    statistics update, gradients reach the module's weights) for fine-tuning.
    """

    def __init__(self, filepath, output_key="final_avg_pool", trainable=False, **kwargs):
        kwargs.pop("call_endpoint", None)
        kwargs.pop("call_training_endpoint", None)
        super().__init__(
            filepath,
            call_endpoint=SERVE_ENDPOINT,
            call_training_endpoint=SERVE_TRAIN_ENDPOINT,
            trainable=trainable,
            **kwargs,
        )
        self.output_key = output_key

    def call(self, inputs, training=False):
        if training and self.trainable:
            outputs = self.call_training_endpoint_fn(inputs)
        else:
            outputs = self.call_endpoint_fn(inputs)
        if self.output_key is None:
            return outputs
        if self.output_key not in outputs:
            raise ValueError(
                f"output_key {self.output_key!r} is not an output of {self.filepath}; "
                f"available: {sorted(outputs)}."
            )
        return outputs[self.output_key]

    def get_config(self):
        return {**super().get_config(), "output_key": self.output_key}
