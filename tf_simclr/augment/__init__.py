"""SimCLR data augmentation in pure TensorFlow, vectorised over batches.

Every operator takes a batch ``images`` (float32 NHWC in [0, 1]) and a stateless seed (an int
tensor of shape [2]) and returns a batch of the same dtype. The same seed always gives the same
output; different operators derive their own sub-seeds, so views drawn with different seeds are
independent. Random parameters are drawn per image (one set per row of the batch), so a batch of
B images gets B independent transformations from one vectorised call. The entry points
(``augment_batch``, ``augment_image``, ``augment_single``, ``augment_single_crop``,
``leading_crop``, ``preprocess_for_eval``) also take uint8 and refuse other dtypes, other
layouts and float values outside [0, 1] (``tf_simclr.validation.check_images``, one reduction
per float input); the operators trust their input.

Operators follow the SimCLR papers (Chen et al. 2020, arXiv:2002.05709, Appendix A;
SimCLRv2, arXiv:2006.10029) and the authors' reference code, with the parameters of
``params``: ``crop`` (random resized crop, bicubic resize bit-for-bit the kernel of
``tf.image.resize(method="bicubic")``), ``flip``, ``color`` (colour jitter in a random order
per image, clipped after each step, then grayscale), ``blur``, and the composition-study
operators ``rotation`` (90/180/270), ``cutout``, ``noise`` (Gaussian), ``sobel``,
``color_drop`` (grayscale always), ``color_jitter`` (jitter without grayscale), ``grayscale``
(alone) and ``crop_no_resize`` (random window, no rescaling); ``OPERATORS`` describes each.

Modules: ``params`` (the paper's parameters and presets), ``draws`` (every random draw, shared
by all paths), ``kernels`` (per-pixel arithmetic and the batched XLA kernels),
``view_kernels`` (the fused path's one-view XLA kernels), ``operators`` (the operators),
``compose`` (names, presets, augment_batch / augment_image), ``fused`` (augment_single and its
crop and batch stages), ``evaluation`` (preprocess_for_eval).
"""

from tf_simclr.augment.compose import (
    OPERATORS,
    augment_batch,
    augment_image,
    leading_crop,
    parse_augmentations,
    resolve_augmentations,
)
from tf_simclr.augment.evaluation import preprocess_for_eval
from tf_simclr.augment.fused import (
    augment_finish_batch,
    augment_single,
    augment_single_crop,
    has_crop_stage,
)
from tf_simclr.augment.kernels import bicubic_resize_matrix, blur_kernel, to_float_image
from tf_simclr.augment.operators import (
    apply_color_ops,
    color_distortion,
    color_jitter,
    color_op_order,
    crop_and_resize,
    crop_no_resize,
    cutout,
    flip,
    gaussian_blur,
    gaussian_noise,
    grayscale,
    merge_sat_hue,
    random_resized_crop,
    rotation,
    sample_crop_boxes,
    sobel,
)
from tf_simclr.augment.params import AUGMENTATION_PRESETS, AugmentationPreset

__all__ = [
    "AUGMENTATION_PRESETS",
    "AugmentationPreset",
    "OPERATORS",
    "augment_batch",
    "apply_color_ops",
    "augment_image",
    "augment_finish_batch",
    "augment_single",
    "augment_single_crop",
    "bicubic_resize_matrix",
    "blur_kernel",
    "color_distortion",
    "color_jitter",
    "color_op_order",
    "crop_and_resize",
    "crop_no_resize",
    "cutout",
    "flip",
    "gaussian_blur",
    "gaussian_noise",
    "has_crop_stage",
    "leading_crop",
    "merge_sat_hue",
    "grayscale",
    "parse_augmentations",
    "preprocess_for_eval",
    "random_resized_crop",
    "resolve_augmentations",
    "rotation",
    "sample_crop_boxes",
    "sobel",
    "to_float_image",
]
