"""Compositions: operator names and presets, and augment_batch / augment_image.

A composition is an ordered list of operator names ("crop,flip,color,blur") or a preset name
(``params.AUGMENTATION_PRESETS``), whose colour strength applies unless one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from types import MappingProxyType

import tensorflow as tf

from tf_simclr.augment.draws import _bernoulli, _seeds
from tf_simclr.augment.kernels import to_float_image
from tf_simclr.augment.operators import (
    _batch,
    _random_resized_crop_one,
    color_distortion,
    color_jitter,
    crop_no_resize,
    cutout,
    flip,
    gaussian_blur,
    gaussian_noise,
    grayscale,
    random_resized_crop,
    rotation,
    sobel,
)
from tf_simclr.augment.params import (
    AUGMENTATION_PRESETS,
    BLUR_KERNEL_FRACTION,
    BLUR_P,
    BLUR_SIGMA_RANGE,
    CROP_AREA_RANGE,
    CROP_ASPECT_RANGE,
    CROP_NO_RESIZE_PAD_FRACTION,
    CUTOUT_FRACTION,
    DEFAULT_COLOR_JITTER_STRENGTH,
    FLIP_P,
    GRAYSCALE_P,
    JITTER_P,
    NOISE_STDDEV,
)
from tf_simclr.validation import check_images


def _fraction(x: float) -> str:
    return str(Fraction(x).limit_denominator(100))


# name -> one-line description (the order here is only for listing them in errors and docs).
OPERATORS = MappingProxyType(
    {
        "crop": (
            f"random resized crop (area {CROP_AREA_RANGE[0]:g}-{CROP_AREA_RANGE[1]:g}, "
            f"aspect {_fraction(CROP_ASPECT_RANGE[0])}-{_fraction(CROP_ASPECT_RANGE[1])}, "
            "bicubic resize)"
        ),
        "crop_no_resize": (
            "random image_size window of the image padded by "
            f"{_fraction(CROP_NO_RESIZE_PAD_FRACTION)} (no rescaling)"
        ),
        "flip": f"horizontal flip, p={FLIP_P:g}",
        "color": f"colour jitter (p={JITTER_P:g}) then grayscale (p={GRAYSCALE_P:g})",
        "color_jitter": f"colour jitter only (p={JITTER_P:g})",
        "grayscale": f"grayscale, p={GRAYSCALE_P:g}",
        "color_drop": "grayscale always (the paper's 'colour drop')",
        "blur": (
            f"Gaussian blur, p={BLUR_P:g}, sigma U[{BLUR_SIGMA_RANGE[0]:g}, "
            f"{BLUR_SIGMA_RANGE[1]:g}], kernel {BLUR_KERNEL_FRACTION:.0%} of the side"
        ),
        "rotation": "rotation by 90, 180 or 270 degrees",
        "cutout": f"one black square of {_fraction(CUTOUT_FRACTION)} the side at a random centre",
        "noise": f"additive Gaussian noise, stddev {NOISE_STDDEV:g}",
        "sobel": "Sobel edge magnitude of the grayscale image",
    }
)

_CROP_OPS = ("crop", "crop_no_resize")


def parse_augmentations(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn "crop,flip,color,blur" (or a preset name, or a list of names) into a tuple of names.

    Raises ValueError naming the unknown operator and listing the valid ones.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in AUGMENTATION_PRESETS:
            return AUGMENTATION_PRESETS[key].augmentations
        names = [s.strip().lower() for s in key.replace("+", ",").split(",")]
    else:
        names = [str(s).strip().lower() for s in spec]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in OPERATORS]
    if unknown:
        raise ValueError(
            f"Unknown augmentation(s) {unknown} in {spec!r}. Valid operators: "
            f"{', '.join(OPERATORS)}; presets: {', '.join(AUGMENTATION_PRESETS)}. "
            "Write a composition as a comma-separated list, e.g. 'crop,flip,color,blur'."
        )
    return tuple(names)


def resolve_augmentations(
    spec: str | Sequence[str] | None, color_jitter_strength: float | None = None
) -> tuple[tuple[str, ...], float]:
    """Return (operators, colour strength); a preset supplies its strength unless one is given
    (a list: ``DEFAULT_COLOR_JITTER_STRENGTH``)."""
    strength = color_jitter_strength
    if isinstance(spec, str) and spec.strip().lower() in AUGMENTATION_PRESETS:
        preset = AUGMENTATION_PRESETS[spec.strip().lower()]
        if strength is None:
            strength = preset.color_jitter_strength
    if strength is None:
        strength = DEFAULT_COLOR_JITTER_STRENGTH
    if strength < 0:
        raise ValueError(f"color_jitter_strength must be >= 0, got {strength}.")
    return parse_augmentations(spec), float(strength)


def _resize_to(images: tf.Tensor, size: int) -> tf.Tensor:
    """Bicubic resize of a batch to size x size, clipped; a no-op if it already has that size."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return tf.clip_by_value(tf.image.resize(images, (size, size), method="bicubic"), 0.0, 1.0)


def _apply_op(name, images, seed, *, image_size, strength, brightness, blur_per_image, xla):
    if name == "crop":
        return random_resized_crop(images, seed, size=image_size, xla=xla)
    if name == "crop_no_resize":
        return crop_no_resize(images, seed, size=image_size)
    if name == "flip":
        return flip(images, seed, xla=xla)
    if name == "color":
        return color_distortion(images, seed, strength=strength, brightness=brightness, xla=xla)
    if name == "color_jitter":
        return color_jitter(images, seed, strength=strength, brightness=brightness, xla=xla)
    if name == "grayscale":
        return grayscale(images, seed, xla=xla)
    if name == "color_drop":
        return grayscale(images, seed, p=1.0, xla=xla)
    if name == "blur":
        return gaussian_blur(images, seed, per_image=blur_per_image, xla=xla)
    if name == "rotation":
        return rotation(images, seed)
    if name == "cutout":
        return cutout(images, seed)
    if name == "noise":
        return gaussian_noise(images, seed)
    if name == "sobel":
        return sobel(images, seed)
    raise ValueError(f"Unknown augmentation {name!r}; valid: {', '.join(OPERATORS)}.")


def augment_batch(
    images: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    skip_leading_crop: bool = False,
    xla: bool = True,
) -> tf.Tensor:
    """Augment a batch [B, H, W, 3] (uint8 or float in [0, 1]) -> float32 [B, S, S, 3] in [0, 1].

    Operators run in the order given (e.g. "crop,flip,color,blur" or a preset name). If the
    composition contains no crop, images are resized (bicubic) to image_size first. ``seed``
    is a shape-[2] int tensor: the same seed gives the same output. ``color_jitter_strength``
    None is the preset's (1.0 for a list). ``skip_leading_crop`` is for pipelines that already
    cropped each image (variable-size sources). ``xla`` runs the per-pixel work in XLA-compiled
    kernels (same results to ~1e-6, several times faster). Other dtypes, shapes or float
    values outside [0, 1] are refused (``check_images``).
    """
    return _augment_batch(
        check_images(images, name="images", rank=4),
        seed,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
        skip_leading_crop=skip_leading_crop,
        xla=xla,
    )


def _augment_batch(
    images: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations,
    color_jitter_strength,
    brightness,
    blur_per_image,
    skip_leading_crop,
    xla,
) -> tf.Tensor:
    ops, strength = resolve_augmentations(augmentations, color_jitter_strength)
    if skip_leading_crop and ops and ops[0] in _CROP_OPS:
        ops = ops[1:]
    elif not any(op in _CROP_OPS for op in ops):
        images = _resize_to(to_float_image(images), image_size)
    if not ops or ops[0] != "crop":
        images = to_float_image(images)  # the crop kernel converts uint8 itself
    seeds = _seeds(seed, max(len(ops), 1))
    i = 0
    while i < len(ops):
        name, s = ops[i], seeds[i]
        if name == "crop" and i + 1 < len(ops) and ops[i + 1] == "flip":
            # A flip right after the crop is folded into the crop's resize matrices (free);
            # its draw is exactly the one flip() would make with its own seed.
            mask = _bernoulli(_batch(images), FLIP_P, seeds[i + 1])
            images = random_resized_crop(images, s, size=image_size, xla=xla, flip_mask=mask)
            i += 2
            continue
        images = _apply_op(
            name,
            images,
            s,
            image_size=image_size,
            strength=strength,
            brightness=brightness,
            blur_per_image=blur_per_image,
            xla=xla,
        )
        i += 1
    images = _resize_to(images, image_size)
    return tf.ensure_shape(images, [None, image_size, image_size, 3])


def augment_image(
    image: tf.Tensor,
    seed,
    *,
    image_size: int,
    augmentations: str | Sequence[str] = "imagenet",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    skip_leading_crop: bool = False,
    xla: bool = True,
) -> tf.Tensor:
    """augment_batch for one image [H, W, 3] (e.g. inside a per-example tf.data map)."""
    image = check_images(image, name="image", rank=3)
    return _augment_batch(
        image[None],
        seed,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
        skip_leading_crop=skip_leading_crop,
        xla=xla,
    )[0]


def leading_crop(
    image: tf.Tensor, seed, *, image_size: int, augmentations: str | Sequence[str]
) -> tf.Tensor:
    """Apply only the first operator if it is a crop, else resize: for variable-size images.

    Used per example in tf.data before batching; ``augment_batch(..., skip_leading_crop=True)``
    then applies the rest to whole batches.
    """
    image = check_images(image, name="image", rank=3)
    ops = parse_augmentations(augmentations)
    if ops and ops[0] == "crop":
        return _random_resized_crop_one(image, seed, image_size)
    image = to_float_image(image)[None]
    if ops and ops[0] == "crop_no_resize":
        image = crop_no_resize(image, seed, size=image_size)
    return tf.ensure_shape(_resize_to(image, image_size)[0], [image_size, image_size, 3])
