"""Small file builders and readers shared by the tests."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """`pixels` encoded as PNG (converted to PIL `mode` first when given)."""
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_files(root, files: dict[str, bytes]) -> str:
    """Writes each `files` entry (a path relative to `root`: its bytes), making folders as
    needed; returns `root` as a string."""
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    return str(root)


def reference_io(fixtures_root: str, name: str):
    """The inputs and outputs the reference code recorded for fixture `name` (io.npz)."""
    return np.load(os.path.join(fixtures_root, name, "io.npz"))
