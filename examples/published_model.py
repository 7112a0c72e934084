"""Use a published SimCLR v1/v2 model: convert it, then embed or linearly evaluate an image folder.

The published models are TF2 SavedModels of the reference code (see the README section "Using
the published SimCLR models" for where they are). Download one, then:

    # 1. convert (reads the SavedModel as data) and check it against the original
    python examples/published_model.py convert --src r50_1x_sk0/saved_model \
        --model_dir runs/r50_1x_sk0 --verify
    # 2. embeddings of every image of a folder (ImageNet evaluation preprocessing)
    python examples/published_model.py embed --model_dir runs/r50_1x_sk0 \
        --images photos/ --output photos.npy
    # 3. linear evaluation on a folder with train/<class>/ and test/<class>/
    python examples/published_model.py linear_eval --model_dir runs/r50_1x_sk0 \
        --data my_dataset/

Fine-tuning the whole network on a folder is a tf-simclr job:
    tf-simclr --train_mode=finetune --checkpoint=runs/r50_1x_sk0 --dataset=my_dataset/ \
        --image_size=224 --model_dir=runs/finetuned

Images are prepared as for the published ImageNet numbers: central crop keeping 87.5% of the
shorter side, bicubic resize to --image_size (224), values in [0, 1]. Images of 32 px or less
(CIFAR-stem models) are only resized.
"""

from __future__ import annotations

import argparse
import glob
import os

import keras
import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
CROP_PROPORTION = 0.875


def list_images(directory: str) -> list[str]:
    paths = [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not paths:
        raise SystemExit(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {directory!r}")
    return sorted(paths)


def load_for_eval(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode, central crop 87.5% of the shorter side (skipped for sides <= 32 px), bicubic
    resize to image_size, values in [0, 1]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(height, width)
    if image_size > 32 and short > 32:
        side = tf.cast(tf.round(CROP_PROPORTION * tf.cast(short, tf.float32)), tf.int32)
        top, left = (height - side + 1) // 2, (width - side + 1) // 2
        image = image[top : top + side, left : left + side]
    image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 1.0)


def latest_export(model_dir: str) -> str:
    steps = [
        p
        for p in glob.glob(os.path.join(model_dir, "saved_model", "*"))
        if os.path.basename(p).isdigit()
    ]
    if not steps:
        raise SystemExit(f"{model_dir} has no saved_model/<step>/ export: convert first")
    return max(steps, key=lambda p: int(os.path.basename(p)))


def embed(module, paths, image_size, batch_size=64, output_key="final_avg_pool"):
    """[N, D] float32 features of the images at `paths` (inference mode)."""
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(lambda p: load_for_eval(p, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    chunks = [
        module(images, training=False)[output_key].numpy()
        for images in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    ]
    return np.concatenate(chunks).astype(np.float32)


def folder_split(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = list_images(os.path.join(root, name))
        paths += found
        labels += [label] * len(found)
    return paths, np.array(labels, np.int32), classes


def linear_probe(train_x, train_y, test_x, test_y, num_classes, epochs=100, seed=0):
    """Accuracy of a softmax classifier on standardised frozen features (full-batch Adam)."""
    keras.utils.set_random_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = keras.Sequential([keras.layers.Dense(num_classes)])
    probe.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe.fit(train_x, train_y, epochs=epochs, batch_size=len(train_x), verbose=0)
    return float(probe.evaluate(test_x, test_y, verbose=0)[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="reference SavedModel -> tf_simclr model_dir")
    c.add_argument("--src", required=True)
    c.add_argument("--model_dir", required=True)
    c.add_argument("--verify", action="store_true")
    for name in ("embed", "linear_eval"):
        p = sub.add_parser(name)
        p.add_argument(
            "--model_dir", required=True, help="a converted (or any tf_simclr) model_dir"
        )
        p.add_argument("--image_size", type=int, default=224)
        p.add_argument("--batch_size", type=int, default=64)
    sub.choices["embed"].add_argument("--images", required=True)
    sub.choices["embed"].add_argument("--output", required=True)
    sub.choices["linear_eval"].add_argument("--data", required=True, help="root with train/, test/")
    sub.choices["linear_eval"].add_argument("--epochs", type=int, default=100)
    args = parser.parse_args(argv)

    if args.command == "convert":
        from tf_simclr import convert  # the only step that needs tf_simclr

        report = convert.convert(args.src, args.model_dir, verify=args.verify)
        return report
    module = tf.saved_model.load(latest_export(args.model_dir))
    if args.command == "embed":
        paths = list_images(args.images)
        features = embed(module, paths, args.image_size, args.batch_size)
        np.save(args.output, features)
        with open(os.path.splitext(args.output)[0] + ".txt", "w") as f:
            f.write("\n".join(paths) + "\n")
        print(f"wrote {features.shape} features to {args.output}")
        return features
    train_paths, train_y, classes = folder_split(os.path.join(args.data, "train"))
    test_paths, test_y, test_classes = folder_split(os.path.join(args.data, "test"))
    if test_classes != classes:
        raise SystemExit(f"train classes {classes} and test classes {test_classes} differ")
    train_x = embed(module, train_paths, args.image_size, args.batch_size)
    test_x = embed(module, test_paths, args.image_size, args.batch_size)
    accuracy = linear_probe(train_x, train_y, test_x, test_y, len(classes), args.epochs)
    print(
        f"linear probe top-1 on {len(test_y)} test images of {len(classes)} classes: {accuracy:.4f}"
    )
    return accuracy


if __name__ == "__main__":
    main()
