"""Embed every image of a folder with an exported SimCLR module and save them to a .npy file.

Needs only TensorFlow. Images (jpeg/png/bmp/gif, searched recursively, sorted by path) are
resized to --image_size and scaled to [0, 1]:

    python extract_embeddings.py --module /path/model_dir/saved_model/<step> \
        --images photos/ --output embeddings.npy --image_size 224

Writes an [N, D] float32 array to --output and the matching image paths, one per line, to
<output without .npy>.txt. --output_key picks another module output (e.g. proj_head_output).
"""

import argparse
import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_images(directory):
    paths = []
    for root, _, files in os.walk(directory):
        paths += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {directory!r}")
    return sorted(paths)


def load_image(path, image_size):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [image_size] * 2)
    return tf.clip_by_value(image, 0.0, 1.0)


def embed_folder(module_path, image_dir, *, image_size=224, batch_size=64, output_key=None):
    """Returns (paths, [N, D] float32 embeddings)."""
    module = tf.saved_model.load(module_path)
    paths = list_images(image_dir)
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(lambda p: load_image(p, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    chunks = []
    for images in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        outputs = module(images, training=False)  # dict of named outputs
        chunks.append(outputs[output_key or "final_avg_pool"].numpy())
    return paths, np.concatenate(chunks).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="exported SavedModel directory")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--output", required=True, help="where to write the .npy array")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output_key", default="final_avg_pool")
    args = parser.parse_args(argv)

    paths, embeddings = embed_folder(
        args.module,
        args.images,
        image_size=args.image_size,
        batch_size=args.batch_size,
        output_key=args.output_key,
    )
    np.save(args.output, embeddings)
    with open(os.path.splitext(args.output)[0] + ".txt", "w") as f:
        f.write("\n".join(paths) + "\n")
    print(f"wrote {embeddings.shape} embeddings to {args.output}")
    return paths, embeddings


if __name__ == "__main__":
    main()
