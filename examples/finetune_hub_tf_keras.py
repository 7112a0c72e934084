"""Fine-tune an exported SimCLR module with tensorflow_hub.KerasLayer in tf-keras (Keras 2).

hub.KerasLayer is a tf-keras layer: it cannot go into a Keras 3 model, so this script builds
the classifier with tf_keras (pip install tensorflow-hub tf-keras). The data is a folder with
one sub-folder of images per class:

    python finetune_hub_tf_keras.py --module /path/model_dir/saved_model/<step> \
        --train_dir data/train --val_dir data/val --image_size 224 --epochs 5

Pass --frozen for a linear classifier on frozen features instead.
"""

import argparse

import tensorflow as tf
import tensorflow_hub as hub
import tf_keras


def load_images(directory, image_size, batch_size, shuffle):
    """Labelled (image, label) batches; images float32 in [0, 1] as the module expects."""
    ds = tf_keras.utils.image_dataset_from_directory(
        directory,
        image_size=(image_size, image_size),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=0,
    )
    num_classes = len(ds.class_names)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
    return ds.prefetch(tf.data.AUTOTUNE), num_classes


def build_classifier(module_path, image_size, num_classes, trainable=True):
    # trainable=True: the module runs in training mode while fitting (batch-norm statistics
    # update) and its weights get gradients; trainable=False: frozen, inference mode.
    encoder = hub.KerasLayer(module_path, trainable=trainable, output_key="final_avg_pool")
    return tf_keras.Sequential(
        [
            tf_keras.Input((image_size, image_size, 3)),
            encoder,
            tf_keras.layers.Dense(num_classes, name="head"),
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="exported SavedModel directory")
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--val_dir", default=None)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--frozen", action="store_true", help="train only the linear head")
    parser.add_argument("--output", default=None, help="save the fine-tuned model (SavedModel)")
    args = parser.parse_args(argv)

    train_ds, num_classes = load_images(args.train_dir, args.image_size, args.batch_size, True)
    model = build_classifier(args.module, args.image_size, num_classes, not args.frozen)
    model.compile(
        optimizer=tf_keras.optimizers.SGD(args.learning_rate, momentum=0.9),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
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
