"""tf_simclr.evaluation.visualize: nearest neighbours found while features stream past equal a NumPy
cosine top-k over the same features; the picture shows them; the projector files hold the
features, their labels and a sprite of their images, as TensorBoard reads them."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

from tf_simclr.evaluation import evaluate, visualize


def _images_with_ids(count: int, side: int = 8, seed: int = 0) -> np.ndarray:
    """float images in [0, 1] whose pixel (0, 0) encodes the example's index (exact in uint8)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, side, side, 3)).astype(np.float32)
    images[:, 0, 0, 0] = np.arange(count) % 256
    images[:, 0, 0, 1] = np.arange(count) // 256
    return images / 255.0


def _ids(thumbnails: np.ndarray) -> np.ndarray:
    return thumbnails[..., 0, 0, 0].astype(int) + 256 * thumbnails[..., 0, 0, 1].astype(int)


def _cosine_top_k(queries, bank, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    return np.argsort(-(q @ b.T), axis=1, kind="stable")[:, :k]


def _features_of(images, projection):
    # A fixed nonlinear "encoder" of the images, so features come from extract_features.
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    return tf.tanh(tf.matmul(flat, projection))


def test_neighbours_found_during_extraction_equal_a_numpy_cosine_top_k():
    train_images = _images_with_ids(300, seed=1)
    test_images = _images_with_ids(40, seed=2)
    projection = tf.constant(np.random.default_rng(3).normal(size=(8 * 8 * 3, 16)), tf.float32)

    def model(images, training=False):
        return _features_of(images, projection)

    def dataset(images):
        labels = np.arange(len(images)) % 7
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(64)

    queries = visualize.FirstExamples(5)
    test_x, test_y = evaluate.extract_features(model, dataset(test_images), on_batch=[queries])
    search = visualize.NeighbourSearch(test_x[:5], k=8)
    train_x, _ = evaluate.extract_features(model, dataset(train_images), on_batch=[search])

    expected = _cosine_top_k(test_x[:5], train_x, 8)
    np.testing.assert_array_equal(search.indices, expected)
    # Across the five batches of 64 the kept thumbnails stayed those of the kept examples.
    np.testing.assert_array_equal(_ids(search.neighbour_thumbnails()), expected)
    assert search.seen == 300
    np.testing.assert_array_equal(_ids(queries.thumbnails()), np.arange(5))


def test_equal_similarities_keep_the_earlier_example():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    search = visualize.NeighbourSearch(np.array([[1.0, 0.0]]), k=3)
    images = _images_with_ids(4)
    search(bank[:2], {"image": images[:2]})
    search(bank[2:], {"image": images[2:]})
    np.testing.assert_array_equal(search.indices, [[0, 2, 3]])


def test_neighbours_picture_shows_queries_and_their_neighbours(tmp_path):
    rng = np.random.default_rng(4)
    train_images = _images_with_ids(50, side=16, seed=5)
    train_labels = rng.integers(0, 3, size=50)
    features = rng.normal(size=(50, 6))
    query_features = rng.normal(size=(3, 6))
    query_images = visualize.thumbnails(_images_with_ids(3, side=16, seed=6))
    query_labels = np.array([0, 1, 2])
    search = visualize.NeighbourSearch(query_features, k=4)
    for start in range(0, 50, 16):
        search(features[start : start + 16], {"image": train_images[start : start + 16]})
    path = visualize.write_neighbours(
        str(tmp_path / "n.png"), search, query_images, query_labels, train_labels
    )
    picture = np.asarray(Image.open(path).convert("RGB"))
    tile, scale = 64, 4  # 16 px images are enlarged 4x
    expected = _cosine_top_k(query_features, features, 4)
    stored = visualize.thumbnails(train_images)
    for q in range(3):
        y, x = visualize.neighbour_tile_origin(q, 0, tile)
        np.testing.assert_array_equal(
            picture[y : y + tile : scale, x : x + tile : scale], query_images[q]
        )
        for j in range(4):
            y, x = visualize.neighbour_tile_origin(q, j + 1, tile)
            shown = picture[y : y + tile : scale, x : x + tile : scale]
            np.testing.assert_array_equal(shown, stored[expected[q, j]])
            same = train_labels[expected[q, j]] == query_labels[q]
            assert tuple(picture[y - 1, x]) == ((40, 170, 70) if same else (210, 50, 40))


def test_projector_files_hold_the_features_labels_and_images(tmp_path):
    rng = np.random.default_rng(7)
    features = rng.normal(size=(37, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=37)
    images = visualize.thumbnails(_images_with_ids(37, side=8, seed=8))
    names = ("disk", "ring", "square", "triangle")
    path = visualize.write_projector(str(tmp_path), features, labels, images, names)

    assert path == str(tmp_path / "projector_config.pbtxt")
    config = text_format.Parse(open(path).read(), projector.ProjectorConfig())
    (embedding,) = config.embeddings
    resolve = lambda rel: os.path.join(tmp_path, rel)  # noqa: E731  (relative to the config)
    rows = np.loadtxt(resolve(embedding.tensor_path), delimiter="\t", ndmin=2)
    assert rows.shape == (37, 5)
    np.testing.assert_allclose(rows, features, rtol=1e-5)
    metadata = open(resolve(embedding.metadata_path)).read().splitlines()
    assert metadata[0] == "label\tclass" and len(metadata) == 38
    assert [line.split("\t") for line in metadata[1:]] == [[str(y), names[y]] for y in labels]
    sprite = np.asarray(Image.open(resolve(embedding.sprite.image_path)).convert("RGB"))
    assert list(embedding.sprite.single_image_dim) == [8, 8]
    per_row = math.ceil(math.sqrt(37))
    assert sprite.shape == (math.ceil(37 / per_row) * 8, per_row * 8, 3)
    for i in (0, 6, 7, 36):  # row by row, as TensorBoard reads a sprite
        r, c = divmod(i, per_row)
        np.testing.assert_array_equal(sprite[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8], images[i])
    with pytest.raises(ValueError, match="one label and one image per feature row"):
        visualize.write_projector(str(tmp_path), features, labels[:3], images)


def test_thumbnails_shrink_large_images_only():
    small = np.full((2, 32, 32, 3), 0.5, np.float32)
    assert visualize.thumbnails(small).shape == (2, 32, 32, 3)
    large = np.full((2, 224, 224, 3), 0.5, np.float32)
    shrunk = visualize.thumbnails(large)
    assert shrunk.shape == (2, 64, 64, 3) and shrunk.dtype == np.uint8
    assert np.all(shrunk == 128)


def _class_sorted_batches(per_class: int, num_classes: int, batch_size: int, unlabelled=0):
    """Batches of a class-sorted split (as an image folder is read): labels 0,0,..,1,1,..;
    `unlabelled` images of label -1 first. Pixel (0, 0) of each image encodes its position."""
    labels = np.concatenate(
        [np.full(unlabelled, -1), np.repeat(np.arange(num_classes), per_class)]
    ).astype(np.int64)
    images = _images_with_ids(len(labels), seed=4)
    return [
        {"image": images[i : i + batch_size], "label": labels[i : i + batch_size]}
        for i in range(0, len(labels), batch_size)
    ], labels


def _choose(batches, count, seed):
    chooser = visualize.QueriesAcrossClasses(count, seed=seed)
    for batch in batches:
        chooser(np.zeros((len(batch["label"]), 2)), batch)
    return chooser.chosen()


@pytest.mark.parametrize("count, num_classes", [(8, 10), (8, 3), (4, 4), (5, 1)])
def test_queries_are_drawn_across_the_classes_of_a_class_sorted_split(count, num_classes):
    """The first `count` images of a class-sorted split are all of class 0; the chosen queries
    cover min(count, classes) classes, each class at most one more than another (round robin),
    their labels and thumbnails are those of the examples chosen, the choice does not depend
    on the batch size, and another seed chooses differently."""
    batches, labels = _class_sorted_batches(9, num_classes, batch_size=7, unlabelled=5)
    indices, chosen_labels, thumbs = _choose(batches, count, seed=3)
    assert len(indices) == count == len(set(indices.tolist()))
    assert len(set(chosen_labels.tolist())) == min(count, num_classes)
    per_class = np.bincount(chosen_labels, minlength=num_classes)
    if count >= num_classes:
        assert per_class.max() - per_class.min() <= 1
    np.testing.assert_array_equal(labels[indices], chosen_labels)
    assert np.all(chosen_labels >= 0)  # never an unlabelled image
    np.testing.assert_array_equal(_ids(thumbs), indices)
    # Deterministic for a seed, whatever the batches; another seed draws other examples.
    regrouped, _ = _class_sorted_batches(9, num_classes, batch_size=64, unlabelled=5)
    again = _choose(regrouped, count, seed=3)
    np.testing.assert_array_equal(again[0], indices)
    others = [_choose(batches, count, seed=s)[0] for s in (4, 5)]
    assert any(not np.array_equal(np.sort(o), np.sort(indices)) for o in others)


def test_a_class_with_few_examples_lets_the_others_give_more():
    # Class 1 has a single example: the other class gives the rest of the queries.
    labels = np.array([0] * 10 + [1])
    images = _images_with_ids(len(labels))
    chooser = visualize.QueriesAcrossClasses(6, seed=0)
    chooser(np.zeros((11, 2)), {"image": images, "label": labels})
    _, chosen_labels, _ = chooser.chosen()
    assert sorted(chosen_labels.tolist()) == [0, 0, 0, 0, 0, 1]


def test_unlabelled_neighbours_are_framed_grey(tmp_path):
    search = visualize.NeighbourSearch(np.array([[1.0, 0.0]]), k=2)
    bank = np.array([[1.0, 0.0], [0.9, 0.1]])
    search(bank, {"image": _images_with_ids(2)})
    query = visualize.thumbnails(_images_with_ids(1))
    path = visualize.write_neighbours(str(tmp_path / "n.png"), search, query, [0], [-1, 0])
    picture = np.asarray(Image.open(path).convert("RGB"))
    tile = 64  # 8 px images are enlarged 8x
    for column, colour in ((1, (150, 150, 150)), (2, (40, 170, 70))):
        y, x = visualize.neighbour_tile_origin(0, column, tile)
        assert tuple(picture[y - 1, x]) == colour
