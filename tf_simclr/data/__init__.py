"""Data sources and input pipelines for SimCLR.

Sources (``load_source``): a TFDS dataset by name (prepared in ``data_dir``; nothing is
downloaded), a TFDS-format directory, an image folder ``root/<split>/<class>/*.jpg`` (with
``unlabelled=True``: every image at any depth under ``root/<split>``, or under ``root`` without
split folders, each with label -1), or
``"embedded"``: the small dataset shipped with the package (the project's ``data/`` folder,
installed as ``tf_simclr/embedded_data/``; ``EMBEDDED_DIR``; written by
``data/generate_embedded.py``).

Pipelines: ``build_pretrain_dataset`` (two augmented views per image), ``build_eval_dataset``
(central crop, single pass), ``build_finetune_dataset`` (crop + flip, optional label
fraction) and ``build_distill_dataset`` (every example, labels only on the labelled subset),
all thin wrappers of ``build_dataset``. Every pipeline yields dicts of float32
images in [0, 1] and int32 labels; training pipelines repeat, shuffle and drop the last partial
batch. Randomness is stateless and derived from ``seed``, so a pipeline is reproducible.
``count_examples`` counts a split, or its labelled subset, without building a pipeline.

Command line: ``python -m tf_simclr.data convert --src FOLDER --dst OUT_DIR`` turns an image
folder into a TFDS-format directory (decoded once, then read fast); ``python -m tf_simclr.data
info DATASET`` prints what a source contains.

Modules: ``folders`` (image-folder layout checks and listing), ``sources`` (opening and
decoding every kind of source), ``labels`` (label fractions, id files, evaluation subsets),
``pipelines`` (the input pipelines), ``converter`` (image folder -> TFDS directory) and
``cli`` (the command line).
"""

from tf_simclr.data.cli import main
from tf_simclr.data.converter import convert_image_folder, write_tfds_dataset
from tf_simclr.data.folders import (
    IMAGE_EXTENSIONS,
    check_image_folder,
    check_same_classes,
    describe_unlabelled_folder,
    list_image_folder,
    list_unlabelled_images,
    unlabelled_image_dir,
)
from tf_simclr.data.labels import (
    LabelCache,
    count_examples,
    has_labelled_example,
    label_fraction_indices,
    labelled_class_counts,
    labelled_subset_indices,
    read_label_ids_file,
    stratified_subset,
)
from tf_simclr.data.pipelines import (
    build_dataset,
    build_distill_dataset,
    build_eval_dataset,
    build_finetune_dataset,
    build_pretrain_dataset,
)
from tf_simclr.data.sources import (
    DEFAULT_DATASET,
    EMBEDDED_DIR,
    UNLABELLED,
    DatasetInfo,
    check_decodable,
    image_folder_root,
    load_source,
)

# isort: split
# Internals that tests and benchmarks reach as tf_simclr.data._name (the "as" marks a re-export).
from tf_simclr.data.converter import _read_as_rgb_bytes as _read_as_rgb_bytes
from tf_simclr.data.pipelines import _augmented as _augmented
from tf_simclr.data.pipelines import _fold as _fold
from tf_simclr.data.sources import _decode as _decode

__all__ = [
    "DEFAULT_DATASET",
    "EMBEDDED_DIR",
    "IMAGE_EXTENSIONS",
    "UNLABELLED",
    "DatasetInfo",
    "LabelCache",
    "build_dataset",
    "build_distill_dataset",
    "build_eval_dataset",
    "build_finetune_dataset",
    "build_pretrain_dataset",
    "check_decodable",
    "check_image_folder",
    "check_same_classes",
    "convert_image_folder",
    "count_examples",
    "describe_unlabelled_folder",
    "image_folder_root",
    "label_fraction_indices",
    "has_labelled_example",
    "labelled_class_counts",
    "labelled_subset_indices",
    "list_image_folder",
    "list_unlabelled_images",
    "load_source",
    "main",
    "read_label_ids_file",
    "stratified_subset",
    "unlabelled_image_dir",
    "write_tfds_dataset",
]
