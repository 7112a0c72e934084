"""Generate the embedded default dataset ("shapes10") deterministically.

10 classes of 32x32 RGB images. The class is the *shape* of one object (disk, ring, square,
triangle, plus, star, arrow, crescent, parallel bars, L-corner); everything else is nuisance that
dominates the pixels: random object and background colours over the full hue range, a background
colour gradient in a random direction plus smooth texture blobs, random object position, scale,
rotation and stroke thickness, a few small distractor dots, and mild pixel noise. Random
convolutional features mostly see the colours, so they cluster the data badly; the augmentations
SimCLR learns invariances to (crop, colour jitter, grayscale) leave the shape as the signal.

From a checkout (the default output is the project's data/ folder, the dataset's home; an
installed tf_simclr holds the same file as tf_simclr/embedded_data/generate_embedded.py and runs
it as `python -m tf_simclr.embedded_data.generate_embedded`):

    python data/generate_embedded.py          # writes data/shapes10/1.0.0/
    python data/generate_embedded.py --check  # also prints nearest-neighbour baselines
    python data/generate_embedded.py --out=/tmp/shapes  # somewhere else

The output depends only on the seed and the code: NumPy's PCG64 generator drives every random
choice and Pillow draws the shapes at 4x resolution before an antialiased downsample.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if __package__ in (None, ""):  # run as a script from a checkout: the package sits beside data/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_simclr.data.sources import EMBEDDED_DIR  # noqa: E402

CLASS_NAMES = (
    "disk",
    "ring",
    "square",
    "triangle",
    "plus",
    "star",
    "arrow",
    "crescent",
    "bars",
    "corner",
)
SIZE = 32
SCALE = 4  # draw at 128 px, downsample to 32 px
SEED = 20240601
NUM_TRAIN = 5000
NUM_TEST = 1000
NOISE_STD = 0.0
VERSION = "1.0.0"
NAME = "shapes10"


def _rotate(points, angle, cx, cy):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in points]


def _hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array([r, g, b], dtype=np.float64)


def _luma(rgb):
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _colours(rng):
    """Background pair and object colour; the object differs from the background in luma."""
    while True:
        bg1 = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0))
        bg2 = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0))
        obj = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.1, 1.0))
        lb = 0.5 * (_luma(bg1) + _luma(bg2))
        if abs(_luma(obj) - lb) > 0.25 and abs(_luma(bg1) - _luma(bg2)) < 0.45:
            return bg1, bg2, obj


def _background(rng, bg1, bg2):
    n = SIZE * SCALE
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1.0)
    theta = rng.uniform(0, 2 * math.pi)
    t = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) / 1.42 + 0.5
    img = bg1[None, None, :] * (1 - t[..., None]) + bg2[None, None, :] * t[..., None]
    # Smooth texture: a few soft blobs of a random tint.
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, 1, size=2)
        r = rng.uniform(0.1, 0.35)
        w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        tint = _hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))
        img = img * (1 - 0.35 * w[..., None]) + 0.35 * w[..., None] * tint
    return img


def _shape_mask(rng, label):
    """Draw the class shape as a white-on-black 'L' mask at 128 px."""
    n = SIZE * SCALE
    mask = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(mask)
    r = rng.uniform(0.22, 0.40) * n  # object radius
    cx = rng.uniform(r, n - r)
    cy = rng.uniform(r, n - r)
    ang = rng.uniform(0, 2 * math.pi)
    th = rng.uniform(0.16, 0.30) * r * 2  # stroke thickness
    name = CLASS_NAMES[label]
    if name == "disk":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r - max(th * 0.6, 0.25 * r)
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == "square":
        pts = [(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)]
        d.polygon(_rotate(pts, ang, cx, cy), fill=255)
    elif name == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        d.polygon(_rotate(pts, ang, cx, cy), fill=255)
    elif name == "plus":
        h = th / 2
        for pts in (
            [(-r, -h), (r, -h), (r, h), (-r, h)],
            [(-h, -r), (h, -r), (h, r), (-h, r)],
        ):
            d.polygon(_rotate(pts, ang, cx, cy), fill=255)
    elif name == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        d.polygon(_rotate(pts, ang, cx, cy), fill=255)
    elif name == "arrow":
        h = th / 2
        shaft = [(-r, -h), (0.1 * r, -h), (0.1 * r, h), (-r, h)]
        head = [(0.0, -0.65 * r), (r, 0.0), (0.0, 0.65 * r)]
        d.polygon(_rotate(shaft, ang, cx, cy), fill=255)
        d.polygon(_rotate(head, ang, cx, cy), fill=255)
    elif name == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = 0.45 * r
        ox, oy = cx + off * math.cos(ang), cy + off * math.sin(ang)
        ro = 0.85 * r
        d.ellipse([ox - ro, oy - ro, ox + ro, oy + ro], fill=0)
    elif name == "bars":
        h = th / 2
        gap = max(0.35 * r, th * 0.8)
        for off in (-gap, gap):
            pts = [(-r, off - h), (r, off - h), (r, off + h), (-r, off + h)]
            d.polygon(_rotate(pts, ang, cx, cy), fill=255)
    elif name == "corner":
        h = th
        pts = [(-r, -r), (-r + h, -r), (-r + h, r - h), (r, r - h), (r, r), (-r, r)]
        d.polygon(_rotate([(0.85 * x, 0.85 * y) for x, y in pts], ang, cx, cy), fill=255)
    return mask


def make_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """One 32x32x3 uint8 image of class `label`."""
    n = SIZE * SCALE
    bg1, bg2, obj = _colours(rng)
    img = _background(rng, bg1, bg2)
    # Distractors: small dots of random colours.
    dots = Image.new("L", (n, n), 0)
    dd = ImageDraw.Draw(dots)
    dot_col = _hsv_to_rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.2, 1))
    for _ in range(rng.integers(0, 4)):
        x, y = rng.uniform(0, n, size=2)
        s = rng.uniform(3, 7)
        dd.ellipse([x - s, y - s, x + s, y + s], fill=255)
    dm = np.asarray(dots, dtype=np.float64)[..., None] / 255.0
    img = img * (1 - dm) + dm * dot_col
    mask = _shape_mask(rng, label)
    # Slight object shading so the object is not perfectly flat.
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float64)[..., None] / 255.0
    shade = 1.0 + 0.15 * (np.mgrid[0:n, 0:n][0][..., None] / n - 0.5) * rng.choice([-1, 1])
    img = img * (1 - m) + m * np.clip(obj * shade, 0, 1)
    big = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
    small = np.asarray(big.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float64)
    if NOISE_STD > 0:  # off by default: noise triples the PNG size
        small = small + rng.normal(0.0, NOISE_STD, size=small.shape)
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def split_labels(seed: int, num: int) -> np.ndarray:
    """Balanced labels (cycling through the classes) in a seeded random order."""
    labels = np.arange(num) % len(CLASS_NAMES)
    np.random.default_rng(seed).shuffle(labels)
    return labels.astype(np.int64)


def make_example(seed: int, num: int, index: int) -> tuple[np.ndarray, int]:
    """Example `index` of a split; each example has its own generator, so any one can be
    regenerated alone (the tests do)."""
    label = int(split_labels(seed, num)[index])
    return make_image(np.random.default_rng([seed, index]), label), label


def make_split(seed: int, num: int) -> tuple[np.ndarray, np.ndarray]:
    labels = split_labels(seed, num)
    images = np.stack(
        [make_image(np.random.default_rng([seed, i]), int(y)) for i, y in enumerate(labels)]
    )
    return images, labels


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def generate(out_root: str) -> str:
    """Write shapes10 as a TFDS-format directory under out_root; returns its version dir."""
    from tf_simclr.data import write_tfds_dataset

    splits = {}
    for split, seed, num in (("train", SEED, NUM_TRAIN), ("test", SEED + 1, NUM_TEST)):
        images, labels = make_split(seed, num)
        splits[split] = [
            {"image": png_bytes(img), "label": int(y), "id": f"{split}_{i:05d}"}
            for i, (img, y) in enumerate(zip(images, labels, strict=True))
        ]
    return write_tfds_dataset(
        out_root,
        name=NAME,
        version=VERSION,
        class_names=CLASS_NAMES,
        splits=splits,
        description=(
            "shapes10: 10 procedurally drawn shape classes, 32x32 RGB, with random colours, "
            "backgrounds, pose and distractors (tf_simclr embedded default dataset)."
        ),
        image_shape=(SIZE, SIZE, 3),
        progress=True,
    )


def _knn_check():
    """Nearest-neighbour baselines: raw pixels and a random conv net (should be poor)."""
    import tensorflow as tf

    xtr, ytr = make_split(SEED, NUM_TRAIN)
    xte, yte = make_split(SEED + 1, NUM_TEST)

    def knn(ftr, fte, k=20):
        ftr = ftr / np.linalg.norm(ftr, axis=1, keepdims=True).clip(1e-8)
        fte = fte / np.linalg.norm(fte, axis=1, keepdims=True).clip(1e-8)
        sim = fte @ ftr.T
        idx = np.argsort(-sim, axis=1)[:, :k]
        votes = np.zeros((len(fte), 10))
        for j in range(k):
            np.add.at(
                votes,
                (np.arange(len(fte)), ytr[idx[:, j]]),
                np.exp(sim[np.arange(len(fte)), idx[:, j]] / 0.1),
            )
        return float((votes.argmax(1) == yte).mean())

    print(
        "kNN raw pixels:", knn(xtr.reshape(len(xtr), -1) / 255.0, xte.reshape(len(xte), -1) / 255.0)
    )
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = inp
    for w in (16, 32, 64, 128):
        x = keras.layers.Conv2D(w, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(w, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPool2D()(x) if w < 128 else x
    x = keras.layers.GlobalAveragePooling2D()(x)
    net = keras.Model(inp, x)
    f = lambda a: net.predict(a.astype(np.float32) / 255.0, batch_size=500, verbose=0)  # noqa: E731
    print("kNN random CNN:", knn(f(xtr), f(xte)))
    del tf


def argument_parser() -> argparse.ArgumentParser:
    """The command line of `python data/generate_embedded.py`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        default=EMBEDDED_DIR,
        help="root of the TFDS-format output (default: the shipped copy, %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="print kNN baselines too")
    parser.add_argument("--check-only", action="store_true", help="only print kNN baselines")
    return parser


def main(argv=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    if not args.check_only:
        path = generate(args.out)
        print("wrote", path)
    if args.check or args.check_only:
        _knn_check()


if __name__ == "__main__":
    main()
