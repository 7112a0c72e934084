"""SimCLR inside your own Keras code: any backbone, compile() + fit(), the paper's two-view
augmentation as a tf.data map, a kNN monitor, and keras.saving.

    python examples/keras_fit.py --images data/ --image_size 32 --epochs 20 --out simclr.keras

--images holds train/<class>/*.jpg and test/<class>/*.jpg (the labels are only used by the kNN
monitor; pretraining itself ignores them). Without --images, the dataset shipped with
tf_simclr is used. Prints each epoch's loss and kNN top-1 and saves the trained model;
--monitor_images N scores the monitor on N images per split instead of all.
"""

import argparse

# isort: off
# tf_simclr before keras and tensorflow: imported first, it turns on TensorFlow's oneDNN CPU
# kernels, which TF leaves off on CPUs without AVX-512 (a training step then takes about twice
# as long).
import tf_simclr  # noqa: F401
import keras
import tensorflow as tf
# isort: on

from tf_simclr.augment.keras_layers import TwoViews
from tf_simclr.evaluation.callbacks import KNNMonitor
from tf_simclr.network.model import SimCLRModel
from tf_simclr.network.resnet import build_resnet
from tf_simclr.training.optim import LARS


def image_batches(images_dir, split, image_size, batch_size, shuffle, limit=None):
    """(uint8 images, labels) batches of one split, from a folder or the shipped dataset;
    with `limit`, of that many images drawn across the split (a folder lists its files class
    by class, so its file order is shuffled first; the shipped dataset is stored shuffled)."""
    if images_dir:
        ds = keras.utils.image_dataset_from_directory(
            f"{images_dir}/{split}",
            image_size=(image_size, image_size),
            batch_size=None,
            shuffle=limit is not None,
            seed=0,
        ).map(lambda image, label: (tf.cast(image, tf.uint8), label))
    else:
        from tf_simclr.data import load_source

        ds, _ = load_source("embedded", split=split)
        ds = ds.map(lambda x: (tf.image.resize(x["image"], [image_size] * 2), x["label"]))
        ds = ds.map(lambda image, label: (tf.cast(tf.round(image), tf.uint8), label))
    if limit is not None:
        ds = ds.take(limit)
    if shuffle:
        ds = ds.shuffle(10_000, seed=0)
    return ds.batch(batch_size)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=None)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps_per_epoch", type=int, default=None)
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
    parser.add_argument("--out", default="simclr.keras")
    parser.add_argument(
        "--monitor_images",
        type=int,
        default=None,
        help="the kNN monitor's images per split (default: all): fewer make each epoch's "
        "check faster and noisier",
    )
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    size = args.image_size

    # Pretraining data: two augmented views of every image (the CIFAR recipe: crop, flip,
    # colour at strength 0.5). Any Keras backbone works as the encoder, e.g.
    # keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3)).
    train = image_batches(args.images, "train", size, args.batch_size, shuffle=True)
    two_views = train.map(TwoViews(size, "cifar", seed=0)).prefetch(2)
    encoder = build_resnet(18, args.width, input_shape=(size, size, 3))
    model = SimCLRModel(encoder, num_classes=None, temperature=0.5)
    model.compile(optimizer=LARS(learning_rate=1.0, weight_decay=1e-4))

    # kNN accuracy of the frozen features after every epoch (images resized, not augmented).
    monitor = dict(shuffle=False, limit=args.monitor_images)
    knn = KNNMonitor(
        image_batches(args.images, "train", size, 256, **monitor),
        image_batches(args.images, "test", size, 256, **monitor),
        k=20,
    )
    history = model.fit(
        two_views, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, callbacks=[knn]
    )
    for epoch, (loss, top1) in enumerate(
        zip(history.history["loss"], history.history["knn_top1"], strict=True), 1
    ):
        print(f"epoch {epoch}: loss {loss:.4f}, kNN top-1 {top1:.4f}")
    model.save(args.out)
    print(f"saved {args.out}; reload with keras.saving.load_model({args.out!r})")


if __name__ == "__main__":
    main()
