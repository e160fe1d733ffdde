"""The test images (`tests.fixtures.images`) are what their names promise."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from tests.fixtures import images


def decode(data: bytes) -> Image.Image:
    """Decode `data` fully with Pillow."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_photos_compress_like_photos_and_are_deterministic() -> None:
    data = images.photo(320, 240)

    img = decode(data)
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (320, 240))
    assert 0.05 < len(data) / (320 * 240) < 1.0
    assert images.photo(320, 240) == data != images.photo(320, 240, seed=1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_encode_writes_the_asked_format(fmt: str) -> None:
    assert decode(images.encode(images.photo_image(40, 30), fmt)).format == fmt


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_displays_upright(orientation: int) -> None:
    stored = decode(images.exif_rotated_jpeg(64, 48, orientation=orientation))

    upright = ImageOps.exif_transpose(stored)

    assert stored.getexif()[0x0112] == orientation
    assert stored.size == ((48, 64) if orientation >= 5 else (64, 48))
    assert upright.size == (64, 48)
    red, green, blue = upright.getpixel((3, 3))
    assert red > 200 and green < 60 and blue < 60


def test_animated_gif_has_distinct_frames() -> None:
    gif = decode(images.animated_gif(frames=3))

    assert gif.is_animated and gif.n_frames == 3
    colors = []
    for frame in range(3):
        gif.seek(frame)
        colors.append(gif.convert("RGB").getpixel((0, 0)))
    assert colors == list(images.FRAME_COLORS[:3])


def test_truncated_images_fail_to_decode() -> None:
    with pytest.raises(OSError):
        decode(images.truncated(images.photo(64, 48)))


def test_decompression_bomb_is_small_but_declares_a_huge_image() -> None:
    data = images.decompression_bomb_png()

    assert len(data) < 200_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_small_bomb_shaped_png_is_a_valid_image() -> None:
    img = decode(images.decompression_bomb_png(100, 40))
    assert (img.size, img.mode, img.getextrema()) == ((100, 40), "1", (0, 0))


@pytest.mark.parametrize(
    ("make", "fmt", "mode"),
    [
        (images.grayscale_png, "PNG", "L"),
        (images.rgba_png, "PNG", "RGBA"),
        (images.cmyk_jpeg, "JPEG", "CMYK"),
    ],
)
def test_odd_color_modes(make: Callable[[], bytes], fmt: str, mode: str) -> None:
    img = decode(make())
    assert (img.format, img.mode) == (fmt, mode)


def test_not_an_image_is_refused() -> None:
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(images.not_an_image()))
