"""Linear evaluation of an exported SimCLR module with Keras 3 (frozen encoder).

Needs only TensorFlow and Keras 3 (no tensorflow-hub, no tf_simclr). The data is a folder with
one sub-folder of images per class:

    python linear_eval_keras3.py --module /path/model_dir/saved_model/<step> \
        --train_dir data/train --val_dir data/val --image_size 224 --epochs 10

Add --fine_tune to train the encoder too (batch norm then runs in training mode).
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def load_images(directory, image_size, batch_size, shuffle):
    """Labelled (image, label) batches; images float32 in [0, 1] as the module expects."""
    ds = keras.utils.image_dataset_from_directory(
        directory,
        image_size=(image_size, image_size),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=0,
        verbose=False,
    )
    num_classes = len(ds.class_names)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
    return ds.prefetch(tf.data.AUTOTUNE), num_classes


def build_classifier(module_path, image_size, num_classes, fine_tune=False):
    # "serve" is the inference graph, "serve_train" the training-mode graph (batch-norm
    # statistics update); both return a dict of named outputs.
    encoder = keras.layers.TFSMLayer(
        module_path,
        call_endpoint="serve",
        call_training_endpoint="serve_train" if fine_tune else None,
        trainable=fine_tune,
    )
    images = keras.Input((image_size, image_size, 3))
    features = encoder(images)["final_avg_pool"]
    logits = keras.layers.Dense(num_classes, name="linear_head")(features)
    return keras.Model(images, logits)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="exported SavedModel directory")
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--val_dir", default=None)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    parser.add_argument("--fine_tune", action="store_true", help="also train the encoder")
    parser.add_argument("--output", default=None, help="save the trained model (.keras)")
    args = parser.parse_args(argv)

    train_ds, num_classes = load_images(args.train_dir, args.image_size, args.batch_size, True)
    model = build_classifier(args.module, args.image_size, num_classes, args.fine_tune)
    model.compile(
        optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_ds, epochs=args.epochs, verbose=2)
    results = {}
    if args.val_dir:
        val_ds, _ = load_images(args.val_dir, args.image_size, args.batch_size, False)
        results = model.evaluate(val_ds, return_dict=True, verbose=0)
        print(f"validation: {results}")
    if args.output:
        model.save(args.output)
    return model, results


if __name__ == "__main__":
    main()
