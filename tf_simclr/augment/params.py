"""The augmentation parameters of the SimCLR papers, each defined once.

Every code path (the per-operator functions, the batched XLA kernels, the fused single-image
path and its crop and batch stages) reads these names, so a change here changes them all.
Sources: Chen et al. 2020 (arXiv:2002.05709), Appendix A and B.9, and the authors' reference
code; the composition-study operators follow the paper's Figure 5 study.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "AUGMENTATION_PRESETS",
    "AugmentationPreset",
    "BLUR_KERNEL_FRACTION",
    "BLUR_P",
    "BLUR_SIGMA_RANGE",
    "CROP_AREA_RANGE",
    "CROP_ASPECT_RANGE",
    "CROP_MAX_ATTEMPTS",
    "CROP_NO_RESIZE_PAD_FRACTION",
    "CUTOUT_FRACTION",
    "DEFAULT_COLOR_JITTER_STRENGTH",
    "EVAL_CROP_PROPORTION",
    "EVAL_MIN_CROP_SIDE",
    "FLIP_P",
    "GRAYSCALE_P",
    "HUE_MAGNITUDE",
    "JITTER_MAGNITUDE",
    "JITTER_P",
    "NOISE_STDDEV",
]

# Random resized crop: area fraction U[0.08, 1], aspect ratio log-uniform in [3/4, 4/3];
# after this many misses the whole image is used.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MAX_ATTEMPTS = 100

FLIP_P = 0.5

# Colour jitter with strength s: brightness, contrast and saturation factors
# U[1 - 0.8s, 1 + 0.8s] (additive brightness: U[-0.8s, 0.8s]), hue shift U[-0.2s, 0.2s].
JITTER_P = 0.8
JITTER_MAGNITUDE = 0.8
HUE_MAGNITUDE = 0.2
GRAYSCALE_P = 0.2

# Gaussian blur: sigma U[0.1, 2.0], kernel 10% of the image side (made odd).
BLUR_P = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
BLUR_KERNEL_FRACTION = 0.1

# Evaluation: central crop of 87.5% of the shorter side, skipped at or below 32 px (the
# reference's rule for CIFAR-sized images).
EVAL_CROP_PROPORTION = 0.875
EVAL_MIN_CROP_SIDE = 32

# Composition-study operators.
CUTOUT_FRACTION = 0.5
NOISE_STDDEV = 0.1
CROP_NO_RESIZE_PAD_FRACTION = 0.125

# Colour strength of compositions written as a list (no preset).
DEFAULT_COLOR_JITTER_STRENGTH = 1.0


class AugmentationPreset(NamedTuple):
    """A named recipe: the ordered operators and the colour-jitter strength s."""

    augmentations: tuple[str, ...]
    color_jitter_strength: float


# The ImageNet recipe of the paper and the CIFAR recipe of its Appendix B.9 (no blur, s = 0.5).
# Read-only: a preset is a fact of the paper, not a registry to extend at run time.
AUGMENTATION_PRESETS = MappingProxyType(
    {
        "imagenet": AugmentationPreset(("crop", "flip", "color", "blur"), 1.0),
        "cifar": AugmentationPreset(("crop", "flip", "color"), 0.5),
        "finetune": AugmentationPreset(("crop", "flip"), 0.0),
        "none": AugmentationPreset((), 0.0),
    }
)
