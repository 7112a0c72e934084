"""Throughput of the two-view augmentation pipeline, ours vs. a per-image reference pipeline.

Prints one JSON object per configuration: two-view images/s, process CPU use (percent of one
core) and the machine's load average, for tf_simclr's batched pipeline and for a per-image
re-implementation of the reference TF2 pipeline (bench/_reference_pipeline.py), both fed the
same decoded uint8 images from memory (decoding is not timed).

    python bench/bench_pipeline.py                 # both recipes
    python bench/bench_pipeline.py --recipe cifar --seconds 20

Recipes: "cifar" = 32 px, crop + flip + colour (s=0.5), no blur;
"imagenet" = 224 px from 375x500 images, crop + flip + colour (s=1.0) + blur (ours; the
reference's blur is reported separately because the reference figure excludes it).
"""

from __future__ import annotations

import argparse
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
}


def _pool(src_hw, n=128, seed=0):
    """Decoded uint8 images with real-looking structure (smooth fields + edges), in memory."""
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
    n = int(pool.shape[0])
    return tf.data.Dataset.range(10**9).map(lambda i: pool[i % n])


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
        # The fair figure on a shared machine: work done per CPU-second actually received.
        "images_per_cpu_s": round(n * batch / max(cpu, 1e-9), 1),
        "batches": n,
        "seconds": round(wall, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def ours(recipe, pool, *, fixed_size, ops=None):
    r = RECIPES[recipe]
    ops, strength = augment.resolve_augmentations(ops or r["ops"], r["strength"])
    h, w = r["src"]
    info = data_lib.DatasetInfo(
        num_examples={"train": 1},
        num_classes=1,
        image_shape=(h, w, 3) if fixed_size else (None, None, 3),
    )
    src = _source(pool).map(lambda x: (x, tf.constant(0, tf.int64)))
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


def reference(recipe, pool, *, blur):
    r = RECIPES[recipe]
    return reference_two_view_dataset(
        _source(pool), size=r["size"], strength=r["strength"], batch_size=r["batch"], blur=blur
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip_reference", action="store_true")
    args = parser.parse_args(argv)
    recipes = list(RECIPES) if args.recipe == "all" else [args.recipe]
    for recipe in recipes:
        r = RECIPES[recipe]
        pool = _pool(r["src"])
        runs = []
        if not args.skip_reference:
            runs.append(("reference", reference(recipe, pool, blur=False)))
            if r["blur"]:
                runs.append(("reference+blur", reference(recipe, pool, blur=True)))
        runs.append(("tf_simclr", ours(recipe, pool, fixed_size=r["size"] <= 64)))
        if r["blur"]:
            runs.append(
                ("tf_simclr_no_blur", ours(recipe, pool, fixed_size=False, ops="crop,flip,color"))
            )
        results = {}
        for name, ds in runs:
            res = _measure(ds, r["batch"], args.seconds)
            results[name] = res
            print(
                json.dumps(
                    {
                        "recipe": recipe,
                        "pipeline": name,
                        "image_size": r["size"],
                        "source_hw": r["src"],
                        "batch": r["batch"],
                        **res,
                    }
                ),
                flush=True,
            )
        if "reference" in results:
            ours_r, ref_r = results["tf_simclr"], results["reference"]
            summary = {
                "recipe": recipe,
                "speedup_wall": round(ours_r["images_per_s"] / ref_r["images_per_s"], 2),
                "speedup_per_cpu_s": round(
                    ours_r["images_per_cpu_s"] / ref_r["images_per_cpu_s"], 2
                ),
            }
            if "reference+blur" in results:
                summary["speedup_wall_vs_reference_with_blur"] = round(
                    ours_r["images_per_s"] / results["reference+blur"]["images_per_s"], 2
                )
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
