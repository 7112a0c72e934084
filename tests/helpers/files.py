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


def reference_io(fixtures_root: str, name: str):
    """The inputs and outputs the reference code recorded for fixture `name` (io.npz)."""
    return np.load(os.path.join(fixtures_root, name, "io.npz"))
