"""Decoding untrusted image bytes into RGB pixels, safely and fast.

The format is sniffed from the bytes (the Content-Type is never trusted), the declared size is checked
against a pixel cap before any pixel is decoded (decompression bombs), animations give their first
frame, EXIF orientation is applied the way `transformers.image_utils.load_image` does, and every
failure becomes a `RequestError` with a message a client can act on.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from serve.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
"""Image formats the runtime decodes (Pillow format names)."""

_SIGNATURES = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("GIF", b"GIF8"),
    ("WebP", b"RIFF"),
    ("BMP", b"BM"),
)
_ORIENTATION = 0x0112  # the EXIF tag
# JPEG's decoder can scale by 1/2, 1/4 or 1/8 while decoding (DCT scaling).
_JPEG_SCALES = (8, 4, 2)


def decode_image(data: bytes, *, max_pixels: int, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `data` into an RGB image, upright as its EXIF orientation says.

    `min_size` (width, height), when given, lets the JPEG decoder scale a large photo down by 2, 4 or 8
    while decoding, as long as the result stays at least that large in both dimensions (whatever the
    orientation). Raises `BadRequest` (empty, truncated or corrupt), `UnsupportedMediaType` (not an image
    of a supported format) or `PayloadTooLarge` (more pixels than `max_pixels`).
    """
    if not data:
        raise BadRequest("the request body is empty: send the image bytes (JPEG, PNG, WebP or GIF)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PayloadTooLarge(f"the image has too many pixels: {error}") from None
    except UnidentifiedImageError:
        if (kind := _signature(data)) is not None:
            raise BadRequest(f"the image is corrupt: its {kind} header cannot be read") from None
        raise UnsupportedMediaType(
            "the body is not an image in a supported format: send JPEG, PNG, WebP, GIF or BMP bytes"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"the image header cannot be read: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    if min_size is not None and image.format in ("JPEG", "MPO"):
        _draft(image, min_size)
    try:
        image.load()
        if image.getexif().get(_ORIENTATION, 1) != 1:
            ImageOps.exif_transpose(image, in_place=True)
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadRequest(f"the image is truncated or corrupt: {error}") from None


def _signature(data: bytes) -> str | None:
    """The supported format whose magic bytes `data` starts with, if any (tells corrupt from foreign)."""
    for kind, magic in _SIGNATURES:
        if data.startswith(magic) and (kind != "WebP" or data[8:12] == b"WEBP"):
            return kind
    return None


def _draft(image: Image.Image, min_size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that keeps both sides >= the larger of `min_size`."""
    need = max(min_size)
    width, height = image.size
    for scale in _JPEG_SCALES:
        if min(width, height) / scale >= need:
            image.draft("RGB", (width // scale, height // scale))
            return
