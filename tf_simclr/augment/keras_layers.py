"""The paper's augmentations in the forms Keras and tf.data code expects.

`SimCLRAugmentation` is a Keras layer: called on a batch in training mode it returns one freshly
augmented view per image (keras-io's SimCLR example calls its augmenter this way, so it switches
to the paper's augmentations by replacing that one layer); in inference mode it resizes only.
`TwoViews` is a callable for ``dataset.map`` that turns labelled (or unlabelled) image batches
into the ``{"view1", "view2", "label"}`` batches `SimCLRModel.fit` trains on.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_simclr.augment.compose import augment_batch, parse_augmentations
from tf_simclr.validation import check_images


def _check_recipe(augmentations: str, image_size: int) -> None:
    parse_augmentations(augmentations)  # unknown operator or preset: ValueError naming it
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}.")


@keras.saving.register_keras_serializable(package="tf_simclr")
class SimCLRAugmentation(keras.layers.Layer):
    """One SimCLR view of each image of a batch [B, H, W, 3] (uint8, or float in [0, 1]) ->
    float32 [B, image_size, image_size, 3] in [0, 1].

    ``augmentations``: a preset ("imagenet": crop, flip, colour, blur; "cifar": crop, flip,
    colour at strength 0.5; "finetune": crop, flip) or operators such as "crop,flip,color".
    Every call in training mode draws new random parameters (per image), from this layer's own
    seed generator (``seed``): two calls give two independent views. In inference mode the
    images are only resized to ``image_size``.
    """

    def __init__(
        self,
        image_size: int,
        augmentations: str = "imagenet",
        color_jitter_strength: float | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_recipe(augmentations, image_size)
        self.image_size = image_size
        self.augmentations = augmentations
        self.color_jitter_strength = color_jitter_strength
        self.seed = seed
        self._seeds = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            images = check_images(images, name="images", rank=4)
            if images.dtype == tf.uint8:
                images = tf.cast(images, tf.float32) / 255.0
            return tf.image.resize(images, [self.image_size, self.image_size], "bicubic")
        seed = tf.cast(self._seeds.next()[:2], tf.int32)
        return augment_batch(
            images,
            seed,
            image_size=self.image_size,
            augmentations=self.augmentations,
            color_jitter_strength=self.color_jitter_strength,
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "augmentations": self.augmentations,
            "color_jitter_strength": self.color_jitter_strength,
            "seed": self.seed,
        }


class TwoViews:
    """``dataset.map(TwoViews(image_size))``: batches of images -> {"view1", "view2", "label"}.

    Takes what image datasets yield after ``.batch()``: an images tensor, an (images, labels)
    tuple, or a dict with "image" (and "label"). A batch without labels gets label -1 for every
    image (unlabelled: `SimCLRModel` trains its online head on labelled rows only). Each batch
    draws its two seeds from this object's random generator (started from ``seed``), so every
    epoch sees new views, and a new TwoViews of the same seed over the same batches gives the
    same ones (with a parallel map, in the order the map runs).
    """

    def __init__(
        self,
        image_size: int,
        augmentations: str = "imagenet",
        color_jitter_strength: float | None = None,
        seed: int = 0,
    ):
        _check_recipe(augmentations, image_size)
        self.image_size = image_size
        self.augmentations = augmentations
        self.color_jitter_strength = color_jitter_strength
        self.seed = seed
        self._generator = tf.random.Generator.from_seed(seed)

    def _view(self, images, seed):
        return augment_batch(
            images,
            seed,
            image_size=self.image_size,
            augmentations=self.augmentations,
            color_jitter_strength=self.color_jitter_strength,
        )

    def __call__(self, *batch):
        images, labels = _images_and_labels(batch)
        seeds = self._generator.make_seeds(2)  # [2, 2]: one seed per column
        return {
            "view1": self._view(images, seeds[:, 0]),
            "view2": self._view(images, seeds[:, 1]),
            "label": labels,
        }


def _images_and_labels(batch: tuple):
    if len(batch) == 1 and isinstance(batch[0], dict):
        data = batch[0]
        if "image" not in data:
            raise ValueError(f"TwoViews needs an 'image' entry; got keys {sorted(data)}.")
        images, labels = data["image"], data.get("label")
    elif len(batch) == 1:
        images, labels = batch[0], None
    elif len(batch) == 2:
        images, labels = batch
    else:
        raise ValueError(f"TwoViews takes images, (images, labels) or a dict; got {len(batch)}.")
    if labels is None:
        labels = -tf.ones(tf.shape(images)[:1], tf.int64)
    return images, tf.cast(labels, tf.int64)
