"""Images arrive as paths, bytes, PIL images, or the {"bytes", "path"} dicts of the RLAIF-V parquet schema."""

from __future__ import annotations

import io
import os
from typing import Any, Union

from PIL import Image

ImageInput = Union[str, os.PathLike, bytes, Image.Image, dict, None]


class ImageError(ValueError):
    """An image that is missing or cannot be decoded; the message names the source."""


def load_image(image: ImageInput, *, base_dir: str | os.PathLike | None = None) -> Image.Image:
    """Decode an image to RGB. Relative paths are resolved against `base_dir`."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, dict):
        if image.get("bytes"):
            return load_image(image["bytes"])
        if image.get("path"):
            return load_image(image["path"], base_dir=base_dir)
        raise ImageError("image dict has neither 'bytes' nor 'path'")
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as im:
                return im.convert("RGB")
        except Exception as e:
            raise ImageError(f"image bytes ({len(image)} bytes) cannot be decoded: {e}") from e
    if isinstance(image, (str, os.PathLike)):
        path = os.path.join(base_dir, image) if base_dir and not os.path.isabs(image) else os.fspath(image)
        if not os.path.exists(path):
            raise ImageError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as e:
            raise ImageError(f"image file {path} cannot be decoded: {e}") from e
    raise ImageError(f"unsupported image value of type {type(image).__name__}")


def image_bytes(image: ImageInput, *, base_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The RLAIF-V parquet form {"bytes": PNG/JPEG bytes, "path": original path or None}."""
    path = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
    if isinstance(image, dict):
        path = image.get("path")
        if image.get("bytes"):
            return {"bytes": bytes(image["bytes"]), "path": path}
        image = image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return {"bytes": bytes(image), "path": None}
    if isinstance(image, (str, os.PathLike)):
        full = os.path.join(base_dir, image) if base_dir and not os.path.isabs(image) else os.fspath(image)
        load_image(full)  # validates
        with open(full, "rb") as f:
            return {"bytes": f.read(), "path": path}
    buf = io.BytesIO()
    load_image(image).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": path}
