"""Test images and their bytes, shared by the tests (the tiny-model fixtures are in conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def make_images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    """Distinct noise images of different sizes (the processor resizes and crops them to 32x32)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (64, 48), (33, 57), (50, 50)]
    return [
        Image.fromarray(rng.integers(0, 256, (sizes[i % 4][1], sizes[i % 4][0], 3), dtype=np.uint8))
        for i in range(n)
    ]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
