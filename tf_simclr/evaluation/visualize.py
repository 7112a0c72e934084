"""Looking at the learned features: a nearest-neighbour picture and TensorBoard projector files.

Both reuse the features the evaluation extracts (`evaluate.extract_features` calls their
collectors batch by batch), so nothing is computed twice and only small thumbnails are kept:

- `FirstExamples` keeps the thumbnails of a split's first examples (the projector's sprite);
- `QueriesAcrossClasses` draws the picture's queries across the classes (seeded), keeping only
  the few thumbnails they can need, so a class-sorted split does not give queries of one class;
- `NeighbourSearch` finds each query's top-k training examples by cosine similarity while the
  training features stream past, keeping only the k best thumbnails per query;
- `write_neighbours` draws queries and their neighbours; `write_projector` writes features,
  labels and a sprite that `tensorboard --logdir MODEL_DIR` shows in its projector tab.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

NEIGHBOURS_FILENAME = "neighbours.png"
NEIGHBOURS_K = 8
PROJECTOR_CONFIG = "projector_config.pbtxt"  # the name TensorBoard looks for in a logdir
PROJECTOR_DIR = "projector"
PROJECTOR_FEATURES = "features.tsv"
PROJECTOR_METADATA = "metadata.tsv"
PROJECTOR_SPRITE = "sprite.png"
# TensorBoard refuses sprites larger than 8192 x 8192 pixels.
MAX_SPRITE_SIDE = 8192
THUMBNAIL_SIZE = 64

_SAME_CLASS = (40, 170, 70)
_OTHER_CLASS = (210, 50, 40)
_NO_CLASS = (150, 150, 150)  # an unlabelled neighbour (label -1)
_UINT64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_BACKGROUND = (255, 255, 255)


def thumbnails(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """uint8 [N, s, s, 3] with s = min(size, image side) from float images in [0, 1]."""
    from PIL import Image

    pixels = np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
    if pixels.shape[1] <= size and pixels.shape[2] <= size:
        return pixels
    return np.stack(
        [np.asarray(Image.fromarray(p).resize((size, size), Image.BOX)) for p in pixels]
    )


def _unit_rows(features: np.ndarray) -> np.ndarray:
    # As tf.math.l2_normalize, which the kNN evaluation uses: x / sqrt(max(|x|^2, 1e-12)).
    x = np.asarray(features, np.float64)
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), 1e-12))


class FirstExamples:
    """Collects the thumbnails of the first `limit` examples of the batches it is given."""

    def __init__(self, limit: int, thumbnail_size: int = THUMBNAIL_SIZE) -> None:
        self.limit = limit
        self.thumbnail_size = thumbnail_size
        self.images: list[np.ndarray] = []
        self.count = 0

    def __call__(self, features: np.ndarray, batch: dict) -> None:
        wanted = self.limit - self.count
        if wanted > 0:
            images = np.asarray(batch["image"][:wanted])
            self.images.append(thumbnails(images, self.thumbnail_size))
            self.count += len(images)

    def thumbnails(self) -> np.ndarray:
        """uint8 [min(limit, seen), s, s, 3]."""
        return np.concatenate(self.images) if self.images else np.zeros((0, 1, 1, 3), np.uint8)


def seeded_keys(seed: int, values: np.ndarray, salt: int) -> np.ndarray:
    """A pseudo-random uint64 key for each integer of `values`, a function of (seed, salt,
    value) alone (splitmix64's mixing), so a key does not depend on batch boundaries."""
    mask = int(_UINT64)
    with np.errstate(over="ignore"):
        x = np.asarray(values).astype(np.int64).astype(np.uint64)
        x = x + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & mask)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class QueriesAcrossClasses:
    """Chooses `count` labelled examples of the batches it is given, spread over the classes:
    the classes in a seeded order, then round robin, each class giving its examples in a
    seeded order (a class with too few examples lets the others give more). The same batches
    and seed give the same queries, whatever the batch size; unlabelled examples (label < 0)
    are never chosen.

    Only the examples the choice can still need are kept: with c classes seen so far, a class
    gives at most max(1, count - c + 1) queries, the lowest-keyed ones."""

    def __init__(self, count: int, *, seed: int, thumbnail_size: int = THUMBNAIL_SIZE) -> None:
        self.count = count
        self.seed = seed
        self.thumbnail_size = thumbnail_size
        self.seen = 0
        # class -> (keys, stream indices, thumbnails), sorted by key
        self._kept: dict[int, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}

    def _cap(self) -> int:
        return max(1, self.count - len(self._kept) + 1)

    def __call__(self, features: np.ndarray, batch: dict) -> None:
        labels = np.asarray(batch["label"]).reshape(-1)
        indices = np.arange(self.seen, self.seen + len(labels))
        self.seen += len(labels)
        if self.count <= 0:
            return
        keys = seeded_keys(self.seed, indices, salt=1)
        images = None
        for label in np.unique(labels[labels >= 0]).tolist():
            rows = np.flatnonzero(labels == label)
            self._kept.setdefault(label, (np.zeros(0, np.uint64), np.zeros(0, np.int64), []))
            old_keys, old_indices, old_thumbs = self._kept[label]
            all_keys = np.concatenate([old_keys, keys[rows]])
            all_indices = np.concatenate([old_indices, indices[rows]])
            best = np.lexsort((all_indices, all_keys))[: self._cap()]
            thumbs = []
            for position in best.tolist():
                if position < len(old_thumbs):
                    thumbs.append(old_thumbs[position])
                    continue
                if images is None:
                    images = np.asarray(batch["image"])
                row = rows[position - len(old_thumbs)]
                thumbs.append(thumbnails(images[row : row + 1], self.thumbnail_size)[0])
            self._kept[label] = (all_keys[best], all_indices[best], thumbs)
        cap = self._cap()  # new classes lower every class's cap
        for label, (k, i, t) in self._kept.items():
            self._kept[label] = (k[:cap], i[:cap], t[:cap])

    def chosen(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(stream indices [Q], labels [Q], thumbnails uint8 [Q, s, s, 3]) of the queries,
        Q = min(count, labelled examples seen), in the round-robin order."""
        classes = sorted(self._kept)
        order = np.lexsort((classes, seeded_keys(self.seed, classes, salt=2)))
        picked: list[tuple[int, int, np.ndarray]] = []
        for rank in range(max((len(v[1]) for v in self._kept.values()), default=0)):
            for c in order.tolist():
                _, indices, thumbs = self._kept[classes[c]]
                if rank < len(indices) and len(picked) < self.count:
                    picked.append((int(indices[rank]), classes[c], thumbs[rank]))
        if not picked:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1, 1, 3), np.uint8)
        indices, labels, thumbs = zip(*picked, strict=True)
        return np.asarray(indices), np.asarray(labels), np.stack(thumbs)


class NeighbourSearch:
    """Each query's k nearest examples (cosine similarity of features) among the batches it is
    given, ranked by (-similarity, index): of equal similarities the earlier example wins."""

    def __init__(
        self,
        query_features: np.ndarray,
        k: int = NEIGHBOURS_K,
        thumbnail_size: int = THUMBNAIL_SIZE,
    ) -> None:
        self.queries = _unit_rows(query_features)
        self.k = k
        self.thumbnail_size = thumbnail_size
        self.similarities = np.zeros((len(self.queries), 0))
        self.indices = np.zeros((len(self.queries), 0), np.int64)
        self.images: list[list[np.ndarray]] = [[] for _ in self.queries]  # thumbnails
        self.seen = 0

    def __call__(self, features: np.ndarray, batch: dict) -> None:
        if len(features) == 0:
            return
        held = self.indices.shape[1]
        similarities = self.queries @ _unit_rows(features).T  # [Q, B]
        indices = np.broadcast_to(
            np.arange(self.seen, self.seen + len(features)), similarities.shape
        )
        all_sims = np.concatenate([self.similarities, similarities], axis=1)
        all_indices = np.concatenate([self.indices, indices], axis=1)
        best = np.lexsort((all_indices, -all_sims), axis=1)[:, : self.k]
        batch_images = None
        new_thumbnails: dict[int, np.ndarray] = {}  # position in the batch -> thumbnail
        for q, row in enumerate(best):
            tiles = []
            for column in row.tolist():
                if column < held:
                    tiles.append(self.images[q][column])
                    continue
                position = column - held
                if position not in new_thumbnails:
                    if batch_images is None:
                        batch_images = np.asarray(batch["image"])
                    new_thumbnails[position] = thumbnails(
                        batch_images[position : position + 1], self.thumbnail_size
                    )[0]
                tiles.append(new_thumbnails[position])
            self.images[q] = tiles
        self.similarities = np.take_along_axis(all_sims, best, axis=1)
        self.indices = np.take_along_axis(all_indices, best, axis=1)
        self.seen += len(features)

    def neighbour_thumbnails(self) -> np.ndarray:
        """uint8 [Q, k, s, s, 3]: the thumbnails of `indices`."""
        return np.stack([np.stack(tiles) for tiles in self.images])


def neighbour_tile_origin(row: int, column: int, tile: int, border: int = 3) -> tuple[int, int]:
    """(y, x) of the top-left pixel of a tile in the `write_neighbours` picture: column 0 is
    the query, columns 1..k its neighbours, after a gap of one border."""
    step = tile + 3 * border
    header = 2 * border + 14
    y = header + row * step + border
    x = column * step + border + (border if column > 0 else 0)
    return y, x


def neighbours_picture(
    query_images: np.ndarray,
    neighbour_images: np.ndarray,
    same_class: np.ndarray,
    *,
    scale: int | None = None,
    border: int = 3,
    caption: str | None = None,
    unlabelled: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 picture: one row per query, the query then its neighbours framed green (same
    class as the query), red (another class) or grey (`unlabelled` [Q, k]: no label). Images:
    uint8 [Q, s, s, 3] and [Q, k, s, s, 3]. `caption` (default: test images and their nearest
    training images) heads the picture."""
    from PIL import Image, ImageDraw

    if scale is None:
        scale = max(1, 64 // query_images.shape[1])
    queries = np.repeat(np.repeat(query_images, scale, axis=1), scale, axis=2)
    neighbours = np.repeat(np.repeat(neighbour_images, scale, axis=2), scale, axis=3)
    num_queries, k = neighbours.shape[:2]
    tile = queries.shape[1]
    bottom, right = neighbour_tile_origin(num_queries - 1, k, tile, border)
    picture = np.full((bottom + tile + 2 * border, right + tile + 2 * border, 3), 255, np.uint8)
    for q in range(num_queries):
        y, x = neighbour_tile_origin(q, 0, tile, border)
        picture[y : y + tile, x : x + tile] = queries[q]
        for j in range(k):
            y, x = neighbour_tile_origin(q, j + 1, tile, border)
            colour = _SAME_CLASS if same_class[q, j] else _OTHER_CLASS
            if unlabelled is not None and unlabelled[q, j]:
                colour = _NO_CLASS
            picture[y - border : y + tile + border, x - border : x + tile + border] = colour
            picture[y : y + tile, x : x + tile] = neighbours[q, j]
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    if caption is None:
        caption = f"test image | its {k} nearest training images"
    frames = "green: same class, red: another"
    if unlabelled is not None and np.all(unlabelled):
        frames = "grey: no labels"  # e.g. an unlabelled folder embedded: no class to show
    elif unlabelled is not None and np.any(unlabelled):
        frames += ", grey: unlabelled"
    draw.text((border, border), f"{caption} (frame {frames})", fill=(0, 0, 0))
    return np.asarray(image)


def write_neighbours(
    path: str,
    search: NeighbourSearch,
    query_images: np.ndarray,
    query_labels: np.ndarray,
    train_labels: np.ndarray,
) -> str:
    """Write the picture of `search`'s queries (their thumbnails and labels) and neighbours
    (labels: `train_labels[search.indices]`, < 0 for unlabelled images) to `path` as PNG;
    returns `path`."""
    from PIL import Image

    neighbour_labels = np.asarray(train_labels)[search.indices]
    same_class = neighbour_labels == np.asarray(query_labels)[:, None]
    picture = neighbours_picture(
        np.asarray(query_images),
        search.neighbour_thumbnails(),
        same_class,
        unlabelled=neighbour_labels < 0,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(picture).save(path)
    return path


def sprite(images: np.ndarray) -> np.ndarray:
    """The images (uint8 [N, s, s, 3]) in a square grid, row by row, as TensorBoard's projector
    expects its sprite (unused cells white)."""
    count, side = len(images), images.shape[1]
    per_row = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / per_row)
    grid = np.full((rows * side, per_row * side, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, per_row)
        grid[r * side : (r + 1) * side, c * side : (c + 1) * side] = image
    return grid


def write_projector(
    model_dir: str,
    features: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    class_names: Sequence[str] = (),
    *,
    name: str = "test_features",
) -> str:
    """Write features (TSV), their labels and class names (TSV) and a sprite of their images
    for TensorBoard's projector; returns the path of the projector config in model_dir."""
    from PIL import Image
    from tensorboard.plugins import projector

    if not len(features) == len(labels) == len(images):
        raise ValueError(
            f"write_projector needs one label and one image per feature row, got "
            f"{len(features)} rows, {len(labels)} labels and {len(images)} images."
        )
    side = images.shape[1]
    if math.ceil(math.sqrt(len(images))) * side > MAX_SPRITE_SIDE:
        raise ValueError(
            f"{len(images)} images of {side} px make a sprite wider than TensorBoard's "
            f"{MAX_SPRITE_SIDE} px: write fewer embeddings."
        )
    directory = os.path.join(model_dir, PROJECTOR_DIR)
    os.makedirs(directory, exist_ok=True)
    np.savetxt(os.path.join(directory, PROJECTOR_FEATURES), features, delimiter="\t", fmt="%.6g")
    with open(os.path.join(directory, PROJECTOR_METADATA), "w", encoding="utf-8") as f:
        f.write("label\tclass\n")  # two columns: TensorBoard then expects a header line
        for label in np.asarray(labels).tolist():
            named = class_names[label] if 0 <= label < len(class_names) else str(label)
            f.write(f"{label}\t{named}\n")
    Image.fromarray(sprite(images)).save(os.path.join(directory, PROJECTOR_SPRITE))

    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = name
    # Relative to the config file: TensorBoard resolves them so, and the run stays movable.
    embedding.tensor_path = f"{PROJECTOR_DIR}/{PROJECTOR_FEATURES}"
    embedding.metadata_path = f"{PROJECTOR_DIR}/{PROJECTOR_METADATA}"
    embedding.sprite.image_path = f"{PROJECTOR_DIR}/{PROJECTOR_SPRITE}"
    embedding.sprite.single_image_dim.extend([side, side])
    projector.visualize_embeddings(model_dir, config)  # written last: it names the files above
    return os.path.join(model_dir, PROJECTOR_CONFIG)
