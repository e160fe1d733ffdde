"""Encoding generated images into the bytes of a response: PNG (the default), JPEG or WebP."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

ENCODINGS: dict[str, dict[str, Any]] = {
    # zlib level 1: a 512x512 image in ~20-40 ms instead of ~300 ms at Pillow's default 6, ~15% larger.
    "image/png": {"format": "PNG", "compress_level": 1},
    "image/jpeg": {"format": "JPEG", "quality": 90},
    "image/webp": {"format": "WEBP", "quality": 90},
}
"""Media type -> Pillow save options."""


def encode_image(image: Image.Image, media_type: str) -> bytes:
    """`image` encoded as `media_type` (one of `ENCODINGS`)."""
    buffer = io.BytesIO()
    image.save(buffer, **ENCODINGS[media_type])
    return buffer.getvalue()
