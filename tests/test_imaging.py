"""Unit tests for `serve.imaging.decode_image`: untrusted bytes in, upright RGB pixels (or a clear error) out.

Pixels are compared with `transformers.image_utils.load_image` on the same bytes, which is what the model's
`pipeline` sees, so preprocessing parity starts here.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from transformers.image_utils import load_image

from serve.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from serve.imaging import decode_image
from tests.fixtures.images import (
    FRAME_COLORS,
    MARKER_COLOR,
    animated_gif,
    cmyk_jpeg,
    decompression_bomb_png,
    encode,
    exif_rotated_jpeg,
    grayscale_png,
    not_an_image,
    photo,
    photo_image,
    rgba_png,
    truncated,
)

NO_LIMIT = 10**12
_ORIENTATION = 0x0112


def reference(data: bytes) -> np.ndarray:
    """What `transformers` makes of these bytes: EXIF-transposed, converted to RGB."""
    return np.asarray(load_image(Image.open(io.BytesIO(data))))


def decoded(data: bytes) -> np.ndarray:
    """`decode_image` with no pixel cap, checked to be RGB, as an array."""
    image = decode_image(data, max_pixels=NO_LIMIT)
    assert image.mode == "RGB"
    return np.asarray(image)


@functools.cache
def big_photo(width: int, height: int) -> Image.Image:
    """A large photo-like image, made cheaply by upscaling a small one."""
    return photo_image(max(8, width // 8), max(8, height // 8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )


def with_orientation(image: Image.Image, fmt: str, orientation: int, **opts: object) -> bytes:
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    return encode(image, fmt, exif=exif.tobytes(), **opts)


# -- formats and modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "opts"),
    [
        ("JPEG", {}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 80}),
        ("GIF", {}),
        ("BMP", {}),
    ],
    ids=["jpeg", "png", "webp-lossless", "webp-lossy", "gif", "bmp"],
)
def test_formats_decode_to_rgb(fmt: str, opts: dict[str, object]) -> None:
    data = photo(40, 30, fmt=fmt, **opts)
    pixels = decoded(data)
    assert pixels.shape == (30, 40, 3)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, reference(data))


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_lossless_formats_keep_the_exact_pixels(fmt: str) -> None:
    original = photo_image(33, 17, seed=3)
    np.testing.assert_array_equal(decoded(encode(original, fmt)), np.asarray(original))


@pytest.mark.parametrize("frames", [1, 3, 6])
def test_gif_gives_its_first_frame(frames: int) -> None:
    pixels = decoded(animated_gif(frames=frames, width=24, height=16))
    assert pixels.shape == (16, 24, 3)
    assert (pixels == np.array(FRAME_COLORS[0], dtype=np.uint8)).all()


def _palette_with_transparency() -> bytes:
    image = photo_image(24, 16).convert("P")
    image.info["transparency"] = 0
    return encode(image, "PNG")


def _sixteen_bit_png() -> bytes:
    grey = np.asarray(photo_image(24, 16).convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


@pytest.mark.parametrize(
    "make",
    [
        grayscale_png,
        rgba_png,
        cmyk_jpeg,
        lambda: encode(photo_image(64, 48).convert("L"), "JPEG"),
        lambda: encode(photo_image(64, 48).convert("LA"), "PNG"),
        lambda: encode(photo_image(64, 48).convert("P"), "PNG"),
        lambda: encode(photo_image(64, 48).convert("1"), "PNG"),
        lambda: encode(photo_image(64, 48).convert("L"), "BMP"),
        lambda: encode(Image.open(io.BytesIO(rgba_png())), "WEBP", lossless=True),
        _palette_with_transparency,
        _sixteen_bit_png,
    ],
    ids=[
        "grey-png",
        "rgba-png",
        "cmyk-jpeg",
        "grey-jpeg",
        "la-png",
        "palette-png",
        "1bit-png",
        "grey-bmp",
        "rgba-webp",
        "palette-transparent-png",
        "16bit-png",
    ],
)
def test_other_modes_become_rgb(make: Callable[[], bytes]) -> None:
    data = make()
    assert Image.open(io.BytesIO(data)).mode != "RGB"
    pixels = decoded(data)
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    np.testing.assert_array_equal(pixels, reference(data))


def test_grayscale_has_equal_channels() -> None:
    pixels = decoded(grayscale_png(32, 24))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.std() > 10  # not a flat image


def test_cmyk_colours_survive() -> None:
    """CMYK is converted, not reinterpreted: the result is close to the RGB original."""
    original = np.asarray(photo_image(64, 48)).astype(int)
    assert np.abs(decoded(cmyk_jpeg(64, 48)).astype(int) - original).mean() < 12


# -- EXIF orientation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_transformers(orientation: int) -> None:
    data = exif_rotated_jpeg(64, 48, orientation=orientation)
    pixels = decoded(data)
    assert pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(pixels, reference(data))
    corner = pixels[2:8, 2:8].reshape(-1, 3).mean(axis=0)
    assert np.abs(corner - np.array(MARKER_COLOR)).max() < 40  # upright: the red marker is top-left


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_exif_orientation_in_other_formats(fmt: str, orientation: int) -> None:
    opts = {"lossless": True} if fmt == "WEBP" else {}
    data = with_orientation(photo_image(40, 30), fmt, orientation, **opts)
    pixels = decoded(data)
    assert pixels.shape == ((30, 40, 3) if orientation < 5 else (40, 30, 3))
    np.testing.assert_array_equal(pixels, reference(data))


# -- errors ------------------------------------------------------------------------------------------------


def test_empty_body() -> None:
    with pytest.raises(BadRequest) as caught:
        decode_image(b"", max_pixels=NO_LIMIT)
    assert caught.value.status == 400
    assert "empty" in caught.value.message


@pytest.mark.parametrize(
    "data",
    [
        not_an_image(),
        b"\x00" * 64,
        b'{"inputs": "AAAA"}',
        b"%PDF-1.7\n" + b"x" * 100,
        photo(16, 16, fmt="TIFF"),
        photo(16, 16, fmt="ICO"),
        photo(16, 16, fmt="PPM"),
    ],
    ids=["text", "zeros", "json", "pdf", "tiff", "ico", "ppm"],
)
def test_not_a_supported_image(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_image(data, max_pixels=NO_LIMIT)
    assert caught.value.status == 415
    assert "JPEG, PNG, WebP, GIF or BMP" in caught.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_truncated_image(fmt: str, keep: float) -> None:
    data = truncated(photo(64, 48, fmt=fmt), keep)
    with pytest.raises(BadRequest) as caught:
        decode_image(data, max_pixels=NO_LIMIT)
    assert type(caught.value) is BadRequest
    assert caught.value.status == 400
    assert "truncated" in caught.value.message or "cannot be read" in caught.value.message


@pytest.mark.parametrize(("width", "height"), [(101, 100), (10_001, 1), (1, 10_001)])
def test_declared_size_over_the_cap(width: int, height: int) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(encode(Image.new("L", (width, height)), "PNG"), max_pixels=10_000)
    assert caught.value.status == 413
    assert f"{width}x{height}" in caught.value.message
    assert "10000" in caught.value.message


def test_declared_size_at_the_cap_is_fine() -> None:
    assert decode_image(encode(Image.new("L", (100, 100)), "PNG"), max_pixels=10_000).size == (100, 100)


def test_size_is_checked_before_decoding() -> None:
    """Only the header is needed to refuse an image: a truncated body still gets 413, not 400."""
    data = truncated(photo(300, 200, fmt="PNG"), 0.2)
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=300 * 200 - 1)


@pytest.mark.parametrize(
    ("width", "height"),
    [(14_000, 14_000), (10_000, 10_000)],
    ids=["over-2x-pillow-limit-error", "over-pillow-limit-warning"],
)
def test_pillow_decompression_bomb(width: int, height: int) -> None:
    """Pillow's own guard (an error past twice MAX_IMAGE_PIXELS, a warning past it) also gives 413."""
    with pytest.raises(PayloadTooLarge) as caught:
        decode_image(decompression_bomb_png(width, height), max_pixels=NO_LIMIT)
    assert caught.value.status == 413
    assert "too many pixels" in caught.value.message


def test_decompression_bomb_under_a_small_cap() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(decompression_bomb_png(14_000, 14_000), max_pixels=40_000_000)


# -- JPEG draft (min_size) ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "min_size", "expected"),
    [
        ((2400, 1800), (512, 512), (1200, 900)),
        ((2400, 1800), (224, 224), (300, 225)),  # 1800 / 8 = 225 is just enough
        ((2400, 1800), (226, 226), (600, 450)),
        ((2400, 1800), (100, 100), (300, 225)),
        ((2400, 1800), (200, 600), (1200, 900)),  # the larger of the two sides counts
        ((1800, 2400), (512, 512), (900, 1200)),
        ((2048, 2048), (256, 256), (256, 256)),
        ((2047, 1025), (512, 512), (1024, 513)),  # odd sizes round up
        ((900, 700), (512, 512), (900, 700)),  # halving would go below 512
        ((1023, 1023), (512, 512), (1023, 1023)),
        ((600, 400), (2048, 2048), (600, 400)),  # smaller than asked for
    ],
)
def test_jpeg_draft(size: tuple[int, int], min_size: tuple[int, int], expected: tuple[int, int]) -> None:
    data = encode(big_photo(*size), "JPEG", quality=85)
    image = decode_image(data, max_pixels=NO_LIMIT, min_size=min_size)
    assert image.mode == "RGB"
    assert image.size == expected
    assert min(image.size) >= min(max(min_size), *size)


def test_jpeg_draft_keeps_the_picture() -> None:
    """The downscaled decode is the same picture as the full one, downscaled."""
    data = encode(big_photo(2400, 1800), "JPEG", quality=90)
    full = decode_image(data, max_pixels=NO_LIMIT)
    small = decode_image(data, max_pixels=NO_LIMIT, min_size=(512, 512))
    assert small.size == (1200, 900)
    difference = np.abs(
        np.asarray(full.resize(small.size, Image.Resampling.BOX)).astype(int) - np.asarray(small)
    )
    assert difference.mean() < 3


def test_no_min_size_no_draft() -> None:
    data = encode(big_photo(2400, 1800), "JPEG", quality=85)
    assert decode_image(data, max_pixels=NO_LIMIT).size == (2400, 1800)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_other_formats_are_never_downscaled(fmt: str) -> None:
    opts = {"WEBP": {"quality": 50}, "PNG": {"compress_level": 1}}.get(fmt, {})
    data = encode(big_photo(1200, 1000), fmt, **opts)
    assert decode_image(data, max_pixels=NO_LIMIT, min_size=(64, 64)).size == (1200, 1000)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_draft_with_exif_rotation(orientation: int) -> None:
    data = with_orientation(big_photo(2400, 1800), "JPEG", orientation, quality=85)
    image = decode_image(data, max_pixels=NO_LIMIT, min_size=(512, 512))
    assert image.size == ((1200, 900) if orientation == 3 else (900, 1200))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_jpeg_draft_other_colour_spaces(mode: str) -> None:
    data = encode(big_photo(2400, 1800).convert(mode), "JPEG", quality=85)
    image = decode_image(data, max_pixels=NO_LIMIT, min_size=(512, 512))
    assert image.mode == "RGB"
    assert image.size == (1200, 900)


def test_pixel_cap_applies_to_the_declared_size_even_with_draft() -> None:
    data = encode(big_photo(2400, 1800), "JPEG", quality=85)
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=2400 * 1800 - 1, min_size=(64, 64))
