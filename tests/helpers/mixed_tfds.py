"""A tiny TFDS-format dataset with labelled and unlabelled splits, like STL-10, for the tests.

`write_mixed_dataset(data_dir)` writes ``data_dir/mixed3/1.0.0/`` with TFDS's own writer
(`tf_simclr.data.write_tfds_dataset`, offline): three classes of 16 px images, a labelled
``train`` split, an ``unlabelled`` split whose every label is -1 (as TFDS stores STL-10's), and
a labelled ``test`` split. tf_simclr reads it as it reads a prepared TFDS dataset:
``--dataset=mixed3 --data_dir=<data_dir>``.

Each class is a pattern that survives the augmentations (horizontal stripes, vertical
stripes, a checkerboard) in random colours, so a few training steps learn something; the
numbers below are what the tests check against.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

NAME = "mixed3"
CLASS_NAMES = ("hstripes", "vstripes", "checker")
SIZE = 16
# Examples per class of the labelled splits, and of the unlabelled one (all label -1).
TRAIN_PER_CLASS = 4
TEST_PER_CLASS = 3
NUM_UNLABELLED = 20
NUM_TRAIN = TRAIN_PER_CLASS * len(CLASS_NAMES)  # 12 labelled
NUM_TEST = TEST_PER_CLASS * len(CLASS_NAMES)  # 9 labelled
MIXED_SPLIT = "train+unlabelled"
NUM_MIXED = NUM_TRAIN + NUM_UNLABELLED  # 32: one tiny batch


def pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 [SIZE, SIZE, 3] image of class `label`: its pattern, random colours and phase."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    period = int(rng.integers(3, 6))
    phase = int(rng.integers(0, period))
    if label == 0:
        mask = ((y + phase) // 2) % 2 == 0
    elif label == 1:
        mask = ((x + phase) // 2) % 2 == 0
    else:
        mask = (((x + phase) // 3) + ((y + phase) // 3)) % 2 == 0
    fore, back = rng.integers(0, 256, size=(2, 3))
    image = np.where(mask[..., None], fore, back)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def split_labels(split: str) -> np.ndarray:
    """The labels of `split` in the order they are generated (TFDS stores examples in an order
    of its own); -1 for the unlabelled split."""
    if split == "unlabelled":
        return np.full(NUM_UNLABELLED, -1, np.int64)
    per_class = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
    return np.repeat(np.arange(len(CLASS_NAMES)), per_class).astype(np.int64)


def _examples(split: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = split_labels(split)
    # The unlabelled images are of the same three classes, their labels withheld.
    drawn = labels if split != "unlabelled" else np.arange(NUM_UNLABELLED) % len(CLASS_NAMES)
    return [
        {"image": _png(pattern(int(c), rng)), "label": int(y), "id": f"{split}_{i:03d}"}
        for i, (c, y) in enumerate(zip(drawn, labels, strict=True))
    ]


def write_mixed_dataset(data_dir) -> str:
    """Write the dataset under `data_dir` (``data_dir/mixed3/1.0.0``); returns that path."""
    from tf_simclr.data import write_tfds_dataset

    return write_tfds_dataset(
        str(data_dir),
        name=NAME,
        class_names=CLASS_NAMES,
        splits={
            s: _examples(s, seed) for s, seed in (("train", 1), ("unlabelled", 2), ("test", 3))
        },
        description="mixed3: tf_simclr's test dataset with an unlabelled split (label -1).",
        image_shape=(SIZE, SIZE, 3),
        progress=False,
    )
