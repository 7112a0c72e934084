"""Input pipelines: infinite shuffled augmented batches for training (two views for
pretraining, one for fine-tuning) and one pass of centrally cropped batches for evaluation."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tf_simclr import augment
from tf_simclr.data.labels import LabelCache, _eval_subset, _subset_indices, labelled_subset_ids
from tf_simclr.data.sources import (
    DEFAULT_DATASET,
    DatasetInfo,
    _enumerate,
    _map,
    load_source,
)


def _per_replica_batch(batch_size: int, input_context) -> int:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if input_context is None:
        return batch_size
    return input_context.get_per_replica_batch_size(batch_size)


def _should_cache(cache, info: DatasetInfo, split: str) -> bool:
    if cache == "auto":
        n = info.num_examples.get(split, 0) or 0
        return info.fixed_size and n * info.image_shape[0] * info.image_shape[1] * 3 < 2**30
    return bool(cache)


def _base_seed(seed: int, input_context) -> tf.Tensor:
    pid = input_context.input_pipeline_id if input_context is not None else 0
    return tf.constant([int(seed), int(pid)], tf.int64)


def _fold(seed: tf.Tensor, i) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(i, tf.int64))


def _augmented(
    ds: tf.data.Dataset,
    info: DatasetInfo,
    *,
    per_replica: int,
    image_size: int,
    ops: tuple[str, ...],
    strength: float,
    seed: tf.Tensor,
    num_views: int,
    brightness: str,
    blur_per_image: bool,
    drop_remainder: bool,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Batch (image uint8, label) pairs and augment whole batches (num_views views each).

    ``start_batch`` resumes an infinite stream: the examples of the first start_batch batches
    are skipped before augmentation (cheap) and the per-batch seeds continue from there, so the
    batches equal those a fresh stream yields from that point on."""
    if start_batch:
        ds = ds.skip(int(start_batch) * per_replica)
    kw = dict(
        image_size=image_size,
        augmentations=ops,
        color_jitter_strength=strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
    )
    batching = dict(per_replica=per_replica, drop_remainder=drop_remainder)
    first_example = int(start_batch) * per_replica
    src_side = max(info.image_shape[0] or 10**6, info.image_shape[1] or 10**6)
    if info.fixed_size and max(src_side, image_size) <= 64:
        ds, views = _augment_batches_whole(ds, kw, seed, num_views, **batching)
    elif augment.has_crop_stage(ops):
        ds, views = _augment_crops_first(ds, kw, seed, num_views, first_example, **batching)
    else:
        return _augment_per_image(ds, kw, seed, num_views, first_example, **batching)

    def pack(i, batch):
        return _views_dict(*views(i, batch), num_views=num_views)

    # XLA kernels run on the calling thread, so keep one batch per core in flight.
    return _map(_enumerate(ds, int(start_batch)), pack, parallel=max(2, os.cpu_count() or 2))


# The three routes of _augmented. Each draws its randomness from ``seed`` folded with the
# batch index (whole batches) or the example index (per image), so a route's numbers depend
# only on the seed and the position in the stream.
def _augment_batches_whole(ds, kw, seed, num_views, *, per_replica, drop_remainder):
    """Small fixed-size images (CIFAR-like): batches, then (batch index, batch) ->
    (views, labels) augmenting whole batches with vectorised kernels."""
    ds = ds.batch(per_replica, drop_remainder=drop_remainder)

    def views(i, batch):
        images, labels = batch
        # All views of the batch in one call: every row gets its own random draws.
        stacked = tf.concat([images] * num_views, axis=0)
        out = augment.augment_batch(stacked, _fold(seed, i), **kw)
        return tf.split(out, num_views, axis=0) if num_views > 1 else [out], labels

    return ds, views


def _augment_crops_first(ds, kw, seed, num_views, first_example, *, per_replica, drop_remainder):
    """Large or variable-size images (ImageNet-like), crop first: a parallel map cuts and
    resizes each view's crop from the full-size image (the only per-image work that needs the
    source), then batches; the returned (batch index, batch) -> (views, labels) runs the
    per-pixel rest of each batch in one XLA call."""
    kw_crop = {k: v for k, v in kw.items() if k != "blur_per_image"}

    def crops(i, example):
        image, label = example
        return tuple(
            augment.augment_single_crop(image, s, **kw_crop)
            for s in _view_seeds(seed, i, num_views)
        ), label

    ds = _map(_enumerate(ds, first_example), crops)
    ds = ds.batch(per_replica, drop_remainder=drop_remainder)

    def views(i, batch):
        stages, labels = batch
        return [
            augment.augment_finish_batch(x, p, brightness=kw["brightness"]) for x, p in stages
        ], labels

    return ds, views


def _augment_per_image(ds, kw, seed, num_views, first_example, *, per_replica, drop_remainder):
    """Other compositions on large or variable-size images: one image per call in a parallel
    map, cropping from the full-size image and running only the operations drawn; the map
    emits the final dict so batching is the only copy. Returns the batched dataset."""

    def per_image(i, example):
        image, label = example
        outs = [augment.augment_single(image, s, **kw) for s in _view_seeds(seed, i, num_views)]
        return _views_dict(outs, label, num_views=num_views)

    return _map(_enumerate(ds, first_example), per_image).batch(
        per_replica, drop_remainder=drop_remainder
    )


def _view_seeds(seed: tf.Tensor, i, num_views: int) -> list[tf.Tensor]:
    # Per-example view seeds, the same on both per-image routes.
    s = _fold(_fold(seed, i), 7)
    return [_fold(s, v) for v in range(num_views)]


def _views_dict(outs, labels, *, num_views: int) -> dict:
    labels = tf.cast(labels, tf.int32)
    if num_views == 2:
        return {"view1": outs[0], "view2": outs[1], "label": labels}
    return {"image": outs[0], "label": labels}


def build_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    training: bool,
    split: str,
    batch_size: int,
    image_size: int,
    num_views: int = 1,
    augmentations: str | Sequence[str] = "crop,flip",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    seed: int = 0,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = "auto",
    shuffle_buffer: int = 10_000,
    strict: bool = False,
    start_batch: int = 0,
    choose_examples: Callable[[], np.ndarray | None] | None = None,
    labelled_ids: Callable[[], Sequence[str] | None] | None = None,
    unlabelled: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """The input pipeline behind every ``build_*_dataset``.

    ``training``: an infinite stream, shuffled with ``seed``, of whole batches of ``num_views``
    augmented views per image ({"view1", "view2", "label"} for two views, {"image", "label"}
    for one), augmented by ``augmentations`` at ``color_jitter_strength`` (None: the preset's,
    1.0 for explicit lists) with ``brightness``; ``start_batch`` resumes it after that many
    batches. Otherwise one pass in stored order of {"image", "label"} with the evaluation
    preprocessing (central crop, resize), the last batch possibly smaller; the augmentation
    arguments, ``shuffle_buffer`` and ``start_batch`` do not apply.

    ``choose_examples`` gives the positions of the examples to keep (None: all); it runs after
    the other arguments are checked, since it may read every label of the split.
    ``info.num_examples[split]`` is then the number kept. ``labelled_ids`` gives the ids of
    the examples whose labels are kept (None: all); every other example gets label -1.
    ``unlabelled``: the source read without labels (``load_source``), every label -1.
    """
    if num_views not in (1, 2):
        raise ValueError(f"num_views must be 1 or 2, got {num_views!r}.")
    ops, strength = augment.resolve_augmentations(augmentations, color_jitter_strength)
    _check_size(image_size)
    per_replica = _per_replica_batch(batch_size, input_context)
    ds, info = _load_examples(
        dataset,
        split=split,
        data_dir=data_dir,
        input_context=input_context,
        strict=strict,
        training=training,
        seed=seed,
        choose_examples=choose_examples,
        labelled_ids=labelled_ids,
        unlabelled=unlabelled,
    )
    if not training:
        return _eval_batches(ds, image_size, per_replica, _should_cache(cache, info, split)), info
    ds = _map(ds, lambda d: (d["image"], d["label"]), parallel=False)
    if _should_cache(cache, info, split):
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = _augmented(
        ds,
        info,
        per_replica=per_replica,
        image_size=image_size,
        ops=ops,
        strength=strength,
        seed=_base_seed(seed, input_context),
        num_views=num_views,
        brightness=brightness,
        blur_per_image=blur_per_image,
        drop_remainder=True,
        start_batch=start_batch,
    )
    return ds.prefetch(tf.data.AUTOTUNE), info


def _eval_batches(ds, image_size: int, per_replica: int, cache: bool) -> tf.data.Dataset:
    """One pass of {"image", "label"} batches with the evaluation preprocessing."""
    ds = _map(
        ds,
        lambda d: {
            "image": augment.preprocess_for_eval(d["image"], image_size),
            "label": tf.cast(d["label"], tf.int32),
        },
    )
    if cache:
        ds = ds.cache()
    return ds.batch(per_replica, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def _load_examples(
    dataset: str,
    *,
    split: str,
    data_dir: str | None,
    input_context,
    strict: bool,
    training: bool,
    seed: int,
    choose_examples,
    labelled_ids,
    unlabelled: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """The split's chosen examples as {"image", "label"} (labels outside ``labelled_ids``
    hidden), files shuffled when training; ``info`` counts the examples kept."""
    indices = choose_examples() if choose_examples is not None else None
    keep_labels = labelled_ids() if labelled_ids is not None else None
    ds, info = load_source(
        dataset,
        data_dir=data_dir,
        split=split,
        input_context=input_context,
        strict=strict,
        indices=indices,
        shuffle_files=training,
        seed=seed if training else None,
        with_ids=keep_labels is not None,
        unlabelled=unlabelled,
    )
    if keep_labels is not None:
        ds = _map(ds, _label_only(keep_labels))
    if indices is not None:
        info = dataclasses.replace(info, num_examples={**info.num_examples, split: len(indices)})
    return ds, info


def build_pretrain_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    batch_size: int = 256,
    image_size: int = 32,
    augmentations: str | Sequence[str] = "cifar",
    color_jitter_strength: float | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = "auto",
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    shuffle_buffer: int = 10_000,
    strict: bool = False,
    start_batch: int = 0,
    unlabelled: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Infinite shuffled two-view batches {"view1", "view2": f32 [B,S,S,3], "label": i32 [B]}.

    ``batch_size`` is the global batch; with ``input_context`` each pipeline makes batches of
    ``input_context.get_per_replica_batch_size(batch_size)`` from its own shard.
    ``augmentations`` is a preset ("imagenet", "cifar") or a list like "crop,flip,color,blur";
    ``color_jitter_strength`` None means the preset's (1.0 for explicit lists). Deterministic
    given ``seed``; the two views of an image are independent draws. ``start_batch`` resumes
    the stream after that many batches (training resumed from a checkpoint). ``unlabelled``:
    the split read without labels (label -1; an image folder: every image at any depth).
    """
    return build_dataset(
        dataset,
        training=True,
        num_views=2,
        split=split,
        batch_size=batch_size,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
        seed=seed,
        data_dir=data_dir,
        input_context=input_context,
        cache=cache,
        shuffle_buffer=shuffle_buffer,
        strict=strict,
        start_batch=start_batch,
        unlabelled=unlabelled,
    )


def build_finetune_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    batch_size: int = 256,
    image_size: int = 32,
    seed: int = 0,
    label_fraction: float | None = None,
    label_ids_file: str | None = None,
    augmentations: str | Sequence[str] = "crop,flip",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    blur_per_image: bool = True,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = "auto",
    shuffle_buffer: int = 10_000,
    strict: bool = False,
    start_batch: int = 0,
    label_cache: LabelCache | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Infinite shuffled batches {"image": f32 [B,S,S,3], "label": i32 [B]}, crop + flip unless
    ``augmentations`` (with ``color_jitter_strength``, ``brightness``) says otherwise, as in
    ``build_pretrain_dataset``: the image is that builder's first view for the same ``seed``.

    ``label_fraction`` (e.g. 0.01, 0.1; 1.0: all) keeps a class-balanced deterministic subset
    of the split's labelled examples (never its unlabelled ones, label -1); ``label_ids_file``
    keeps the listed labelled examples instead. ``info.num_examples[split]``
    is then the subset's size. ``label_cache`` keeps the split's labels for the next call.
    """
    return build_dataset(
        dataset,
        training=True,
        num_views=1,
        split=split,
        batch_size=batch_size,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        blur_per_image=blur_per_image,
        seed=seed,
        data_dir=data_dir,
        input_context=input_context,
        cache=cache,
        shuffle_buffer=shuffle_buffer,
        strict=strict,
        start_batch=start_batch,
        choose_examples=lambda: _subset_indices(
            dataset, data_dir, split, label_fraction, label_ids_file, seed, strict, label_cache
        ),
    )


def build_distill_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "train",
    batch_size: int = 256,
    image_size: int = 32,
    seed: int = 0,
    label_fraction: float | None = None,
    label_ids_file: str | None = None,
    augmentations: str | Sequence[str] = "crop,flip",
    color_jitter_strength: float | None = None,
    brightness: str = "multiplicative",
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = "auto",
    shuffle_buffer: int = 10_000,
    strict: bool = False,
    start_batch: int = 0,
    label_cache: LabelCache | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Distillation batches {"image", "label"} over EVERY example of the split (the teacher
    labels them all), augmented like `build_finetune_dataset`. With ``label_fraction`` or
    ``label_ids_file`` only the labelled subset (the one fine-tuning would keep for the same
    ``seed``) keeps its labels; the others have label -1."""
    return build_dataset(
        dataset,
        training=True,
        num_views=1,
        split=split,
        batch_size=batch_size,
        image_size=image_size,
        augmentations=augmentations,
        color_jitter_strength=color_jitter_strength,
        brightness=brightness,
        seed=seed,
        data_dir=data_dir,
        input_context=input_context,
        cache=cache,
        shuffle_buffer=shuffle_buffer,
        strict=strict,
        start_batch=start_batch,
        labelled_ids=lambda: labelled_subset_ids(
            dataset, data_dir, split, label_fraction, label_ids_file, seed, strict, label_cache
        ),
    )


def build_eval_dataset(
    dataset: str = DEFAULT_DATASET,
    *,
    split: str = "test",
    batch_size: int = 256,
    image_size: int = 32,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cache: bool | str = False,
    strict: bool = False,
    indices: np.ndarray | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    label_cache: LabelCache | None = None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """One pass of {"image": f32 [B,S,S,3], "label": i32 [B]}: central crop (87.5%, skipped
    for images of 32 px or less) and bicubic resize; the last batch may be smaller.

    Undecodable files are skipped and counted as in the training pipelines (``strict=True``:
    they raise ValueError, naming them). ``max_examples`` evaluates a representative subset
    instead of the whole split (or of ``indices``): every class keeps its share of the
    examples (to one example), chosen by a permutation seeded with ``seed``, so the subset is
    the same on every run; a warning says it is a subset and of how many examples, and
    ``info.num_examples[split]`` is its size. ``label_cache`` keeps the split's labels for the
    next call.
    """

    def chosen() -> np.ndarray | None:
        if max_examples is None:
            return indices
        return _eval_subset(
            dataset, data_dir, split, strict, indices, max_examples, seed, label_cache
        )

    return build_dataset(
        dataset,
        training=False,
        split=split,
        batch_size=batch_size,
        image_size=image_size,
        data_dir=data_dir,
        input_context=input_context,
        cache=cache,
        strict=strict,
        choose_examples=chosen,
    )


def _label_only(ids: Sequence[str]):
    """A map keeping the label of the examples with these ids and setting the others' to -1."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(ids), tf.string), tf.ones([len(ids)], tf.int64)
        ),
        default_value=0,
    )

    def hide(d):
        keep = table.lookup(d["id"]) > 0
        label = tf.where(keep, tf.cast(d["label"], tf.int64), tf.constant(-1, tf.int64))
        return {"image": d["image"], "label": label}

    return hide


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}.")
