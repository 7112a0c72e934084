"""Throughput of the two-view augmentation pipeline, ours vs. a per-image reference pipeline.

Prints one JSON object per configuration: two-view images/s, process CPU use (percent of one
core; kernel time separately) and the machine's load average, for tf_simclr's batched
pipeline and for a per-image re-implementation of the reference TF2 pipeline
(bench/_reference_pipeline.py), both fed the same decoded uint8 images from memory (decoding
is not timed).

    python bench/bench_pipeline.py                 # every recipe, 3 interleaved rounds
    python bench/bench_pipeline.py --recipe cifar --seconds 20 --rounds 5

Recipes: "cifar" = 32 px, crop + flip + colour (s=0.5), no blur;
"imagenet" = 224 px from 375x500 images, crop + flip + colour (s=1.0) + blur (ours; the
reference's blur is reported separately because the reference figure excludes it);
"imagenet_mixed" = the same from six source sizes (256x256 to 427x640, landscape and portrait).
The 224 px recipes also run both pipelines with crop, resize and flip only ("*_crop_only"):
the floor that colour and blur are added to.
Every round measures every pipeline once, each from a fresh iterator; the last line per recipe
gives the median and smallest speed-up over the rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf_simclr's default (see tf_simclr/__init__.py), for both pipelines.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _reference_pipeline import reference_two_view_dataset  # noqa: E402

from tf_simclr import augment  # noqa: E402
from tf_simclr import data as data_lib  # noqa: E402

RECIPES = {
    "cifar": dict(size=32, src=(32, 32), strength=0.5, ops="cifar", batch=256, blur=False),
    "imagenet": dict(size=224, src=(375, 500), strength=1.0, ops="imagenet", batch=64, blur=True),
    # Variable-size sources like real ImageNet JPEGs (landscape, portrait, square, larger).
    "imagenet_mixed": dict(
        size=224,
        src=[(375, 500), (500, 375), (333, 500), (427, 640), (256, 256), (480, 360)],
        strength=1.0,
        ops="imagenet",
        batch=64,
        blur=True,
    ),
}


def _pool(src_hw, n=128, seed=0):
    """Decoded uint8 images with real-looking structure (smooth fields + edges), in memory.

    ``src_hw`` is one (height, width) or a list of them (a list of pools, one per size)."""
    if isinstance(src_hw, list):
        return [_pool(hw, max(n // len(src_hw), 1), seed + i) for i, hw in enumerate(src_hw)]
    rng = np.random.default_rng(seed)
    h, w = src_hw
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    imgs = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        f = np.zeros((h, w, 3))
        for _ in range(6):
            a, b, c = rng.normal(size=3) * 6
            f += np.sin(a * xx + b * yy + c)[..., None] * rng.random(3)
        f = (f - f.min()) / (np.ptp(f) + 1e-6)
        imgs[i] = (f * 255).astype(np.uint8)
    return tf.constant(imgs)


def _source(pool):
    """Endless decoded images from memory, as from a cached dataset. (A per-element slice of
    one big tensor costs about 0.1 ms of CPU per image and capped the 32 px pipelines.)"""
    if isinstance(pool, list):  # cycle through the sizes: element shapes are [None, None, 3]
        parts = [tf.data.Dataset.from_tensor_slices(p).repeat() for p in pool]
        order = tf.data.Dataset.range(len(pool)).repeat()
        return tf.data.Dataset.choose_from_datasets(parts, order)
    return tf.data.Dataset.from_tensor_slices(pool).repeat()


def _measure(ds, batch, seconds, warmup=3):
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), os.times()
    n = 0
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {
        "images_per_s": round(n * batch / wall, 1),
        "cpu_percent": round(100 * cpu / wall, 1),
        # Kernel time (page faults, scheduling): a large share would mean buffer churn.
        "system_cpu_percent": round(100 * (c1.system - c0.system) / wall, 1),
        # The fair figure on a shared machine: work done per CPU-second actually received.
        "images_per_cpu_s": round(n * batch / max(cpu, 1e-9), 1),
        "batches": n,
        "seconds": round(wall, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def ours(recipe, pool, *, fixed_size, ops=None):
    r = RECIPES[recipe]
    ops, strength = augment.resolve_augmentations(ops or r["ops"], r["strength"])
    info = data_lib.DatasetInfo(
        num_examples={"train": 1},
        num_classes=1,
        image_shape=(*r["src"], 3) if fixed_size else (None, None, 3),
    )
    # Labels by zip, not a per-element map: a map call costs ~85 us per image on this CPU,
    # which the reference (images only) would not pay.
    labels = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).repeat()
    src = tf.data.Dataset.zip(_source(pool), labels)
    ds = data_lib._augmented(
        src,
        info,
        per_replica=r["batch"],
        image_size=r["size"],
        ops=ops,
        strength=strength,
        seed=tf.constant([0, 0], tf.int64),
        num_views=2,
        brightness="multiplicative",
        blur_per_image=True,
        drop_remainder=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def reference(recipe, pool, *, blur, color=True):
    r = RECIPES[recipe]
    return reference_two_view_dataset(
        _source(pool),
        size=r["size"],
        strength=r["strength"],
        batch_size=r["batch"],
        blur=blur,
        color=color,
    )


def _builders(recipe, pool, *, with_reference):
    """(name, build) pairs: each build() makes a fresh dataset of that pipeline."""
    r = RECIPES[recipe]
    out = []
    if with_reference:
        out.append(("reference", functools.partial(reference, recipe, pool, blur=False)))
        if r["blur"]:
            out.append(("reference+blur", functools.partial(reference, recipe, pool, blur=True)))
            # Crop, resize and flip only: what is left of the time budget once colour is free.
            crop_only = functools.partial(reference, recipe, pool, blur=False, color=False)
            out.append(("reference_crop_only", crop_only))
    out.append(("tf_simclr", functools.partial(ours, recipe, pool, fixed_size=r["size"] <= 64)))
    if r["blur"]:
        no_blur = functools.partial(ours, recipe, pool, fixed_size=False, ops="crop,flip,color")
        out.append(("tf_simclr_no_blur", no_blur))
        crop_only = functools.partial(ours, recipe, pool, fixed_size=False, ops="crop,flip")
        out.append(("tf_simclr_crop_only", crop_only))
    return out


def _median(values):
    return float(np.median(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every pipeline this many times, interleaved, and report the median "
        "speed-up (this VM's speed drifts by about 25%% over minutes)",
    )
    parser.add_argument("--skip_reference", action="store_true")
    args = parser.parse_args(argv)
    recipes = list(RECIPES) if args.recipe == "all" else [args.recipe]
    for recipe in recipes:
        r = RECIPES[recipe]
        pool = _pool(r["src"])
        builders = _builders(recipe, pool, with_reference=not args.skip_reference)
        rounds = []
        for round_index in range(args.rounds):
            results = {}
            for name, build in builders:
                # A fresh iterator per measurement: a paused one would start from full buffers.
                res = _measure(build(), r["batch"], args.seconds)
                results[name] = res
                print(
                    json.dumps(
                        {
                            "recipe": recipe,
                            "round": round_index + 1,
                            "pipeline": name,
                            "image_size": r["size"],
                            "source_hw": r["src"],
                            "batch": r["batch"],
                            **res,
                        }
                    ),
                    flush=True,
                )
            rounds.append(results)
        if args.skip_reference:
            continue

        def ratios(key, baseline="reference", pipeline="tf_simclr", rounds=rounds):
            return [x[pipeline][key] / x[baseline][key] for x in rounds]

        summary = {
            "recipe": recipe,
            "rounds": args.rounds,
            "speedup_wall_median": round(_median(ratios("images_per_s")), 2),
            "speedup_wall_min": round(min(ratios("images_per_s")), 2),
            "speedup_per_cpu_s_median": round(_median(ratios("images_per_cpu_s")), 2),
            "speedup_per_cpu_s_min": round(min(ratios("images_per_cpu_s")), 2),
        }
        for name, _ in builders:
            summary[f"{name}_images_per_s_median"] = round(
                _median([x[name]["images_per_s"] for x in rounds]), 1
            )
        if r["blur"]:
            summary["speedup_wall_vs_reference_with_blur_median"] = round(
                _median(ratios("images_per_s", "reference+blur")), 2
            )
            # The most any pipeline that crops and resizes with tf.image ops could gain over
            # the reference if colour distortion and blur cost nothing.
            summary["crop_only_over_reference_median"] = round(
                _median(ratios("images_per_s", pipeline="reference_crop_only")), 2
            )
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
