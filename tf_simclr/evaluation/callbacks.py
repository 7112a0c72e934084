"""Keras callbacks for training tf_simclr models with ``fit()``."""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

from tf_simclr.evaluation import evaluate

log = logging.getLogger(__name__)


def _as_labelled_batches(dataset: tf.data.Dataset, what: str) -> tf.data.Dataset:
    """{"image", "label"} batches from a dataset of such dicts or of (images, labels) tuples."""
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if "image" not in spec or "label" not in spec:
            raise ValueError(f"{what} must yield 'image' and 'label'; it yields {sorted(spec)}.")
        return dataset
    if isinstance(spec, tuple) and len(spec) == 2:
        return dataset.map(lambda images, labels: {"image": images, "label": labels})
    raise ValueError(
        f"{what} must yield batches of {{'image', 'label'}} or (images, labels) tuples, "
        f"with labels: kNN accuracy needs them; got {spec}."
    )


class KNNMonitor(keras.callbacks.Callback):
    """Weighted kNN top-1 of the model's frozen features, every ``every`` epochs of ``fit()``.

    The features (``feature_key`` of the model's outputs, in inference mode) of ``train_data``
    form the memory bank and those of ``test_data`` are classified by their ``k`` nearest
    neighbours, each voting with weight exp(cosine / temperature) (`tf_simclr.evaluation.evaluate`, the
    protocol of Wu et al. 2018 that SimCLR ports report). Both datasets yield batches of
    {"image", "label"} or (images, labels) with the test split's images preprocessed for
    evaluation. The accuracy joins the epoch's logs as ``name`` (``fit()``'s history shows it;
    a `keras.callbacks.TensorBoard` listed after this callback writes it), and is written to
    ``log_dir`` with `tf.summary` when given.
    """

    def __init__(
        self,
        train_data: tf.data.Dataset,
        test_data: tf.data.Dataset,
        *,
        every: int = 1,
        k: int = 200,
        temperature: float = 0.1,
        num_classes: int | None = None,
        feature_key: str = "final_avg_pool",
        name: str = "knn_top1",
        log_dir: str | None = None,
    ):
        super().__init__()
        if every < 1 or k < 1 or not temperature > 0:
            raise ValueError(
                f"every and k must be >= 1 and temperature > 0; got every={every}, k={k}, "
                f"temperature={temperature}."
            )
        self.train_data = _as_labelled_batches(train_data, "train_data")
        self.test_data = _as_labelled_batches(test_data, "test_data")
        self.every, self.k, self.temperature = every, k, temperature
        self.num_classes, self.feature_key, self.name = num_classes, feature_key, name
        self.log_dir = log_dir
        self._writer = None
        self._inference = None  # (model, its InferenceFunction): traced once, not per epoch

    def _inference_of(self, model) -> evaluate.InferenceFunction:
        if self._inference is None or self._inference[0] is not model:
            self._inference = (model, evaluate.InferenceFunction(model))
        return self._inference[1]

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        top1 = self.evaluate()
        if logs is not None:
            logs[self.name] = top1
        if self.log_dir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                tf.summary.scalar(self.name, top1, step=epoch + 1)
            self._writer.flush()
        log.info("Epoch %d: %s %.4f", epoch + 1, self.name, top1)

    def evaluate(self) -> float:
        """The kNN top-1 accuracy of the model as it is now."""
        infer = self._inference_of(self.model)
        train_x, train_y = evaluate.extract_features(
            infer, self.train_data, feature_key=self.feature_key
        )
        test_x, test_y = evaluate.extract_features(
            infer, self.test_data, feature_key=self.feature_key
        )
        num_classes = self.num_classes or int(max(np.max(train_y), np.max(test_y)) + 1)
        scores = evaluate.knn_classify(
            train_x,
            train_y,
            test_x,
            num_classes=num_classes,
            k=min(self.k, len(train_x)),
            temperature=self.temperature,
        )
        return evaluate.topk_accuracy(scores, test_y, 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
