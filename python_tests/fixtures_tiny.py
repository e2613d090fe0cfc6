"""Session-scoped tiny models (built once, offline) and test images, shared by the engine tests.

Import the fixtures into a test module: `from fixtures_tiny import tiny_llava, tiny_llama, images  # noqa: F401`.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from rlaifv_fast.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from rlaifv_fast.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


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


@pytest.fixture(scope="session")
def images():
    return make_images(3)
