"""Preview of the augmentation pipeline: a PNG grid of images and their two augmented views."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_simclr import augment
from tf_simclr import data as data_lib

__all__ = ["preview_grid", "write_preview"]


def preview_grid(
    images: np.ndarray | tf.Tensor,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "cifar",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    seed: int = 0,
    num_views: int = 2,
    scale: int | None = None,
    border: int = 2,
) -> np.ndarray:
    """uint8 grid [rows, cols, 3]: one row per image = [original, view 1, view 2, ...].

    ``images``: a batch [N, H, W, 3] (uint8 or float in [0, 1]). The original is shown after
    the evaluation preprocessing (central crop + resize) so all cells have the same size.
    Small images are enlarged (nearest neighbour) by ``scale`` so the PNG is readable.
    """
    ops, strength = augment.resolve_augmentations(augmentations, color_jitter_strength)
    images = tf.convert_to_tensor(images)
    originals = augment.preprocess_for_eval(images, image_size)
    base = tf.constant([seed, 0], tf.int64)
    views = [
        augment.augment_batch(
            images,
            tf.random.experimental.stateless_fold_in(base, v + 1),
            image_size=image_size,
            augmentations=ops,
            color_jitter_strength=strength,
            brightness=brightness,
        )
        for v in range(num_views)
    ]
    cells = np.stack([originals.numpy()] + [v.numpy() for v in views], axis=1)  # [N, V+1, S, S, 3]
    if scale is None:
        scale = max(1, 96 // image_size)
    cells = np.repeat(np.repeat(cells, scale, axis=2), scale, axis=3)
    n, cols, s, _, _ = cells.shape
    step = s + border
    grid = np.ones((n * step + border, cols * step + border, 3), np.float32)
    for r in range(n):
        for c in range(cols):
            y, x = border + r * step, border + c * step
            grid[y : y + s, x : x + s] = cells[r, c]
    return np.clip(np.round(grid * 255.0), 0, 255).astype(np.uint8)


def write_preview(
    path: str,
    *,
    dataset: str = data_lib.DEFAULT_DATASET,
    data_dir: str | None = None,
    split: str = "train",
    image_size: int = 32,
    augmentations: str | Sequence[str] = "cifar",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    seed: int = 0,
    num_images: int = 8,
    num_views: int = 2,
    unlabelled: bool = False,
) -> str:
    """Write a PNG grid of ``num_images`` images of ``dataset`` with their augmented views.

    Columns: original (eval preprocessing), view 1, view 2. Returns ``path``. ``unlabelled``:
    the source read without labels (``load_source``).
    """
    from PIL import Image

    ds, _ = data_lib.load_source(
        dataset,
        data_dir=data_dir,
        split=split,
        shuffle_files=True,
        seed=seed,
        unlabelled=unlabelled,
    )
    examples = [ex["image"] for ex in ds.take(num_images)]
    if not examples:
        raise ValueError(f"Split {split!r} of {dataset!r} has no images to preview.")
    ops, strength = augment.resolve_augmentations(augmentations, color_jitter_strength)
    base = tf.constant([seed, 0], tf.int64)
    rows = []
    for i, image in enumerate(examples):
        # One image at a time: sources may have images of different sizes.
        grid_row = preview_grid(
            image[None],
            image_size=image_size,
            augmentations=ops,
            color_jitter_strength=strength,
            brightness=brightness,
            seed=int(tf.random.experimental.stateless_fold_in(base, i)[0].numpy()) + seed + i,
            num_views=num_views,
        )
        rows.append(grid_row if i == 0 else grid_row[2:])  # drop the duplicated top border
    grid = np.concatenate(rows, axis=0)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
