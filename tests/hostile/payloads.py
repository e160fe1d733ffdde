"""The binary and oversized bodies of the hostile-input corpus (`tests/hostile/requests/*.toml`), made here.

Request files name a payload (`payload = "bomb-png"`) rather than hold it: images are binary, and some bodies
are megabytes (a 1 MB prompt, a JSON document nested 100 000 deep, a 1000-part multipart form). Every
payload is built deterministically, by hand where the point is a malformed or hostile header (decompression
bombs declare their sizes in a few hundred bytes: nothing is ever decoded to get them).

`python -m tests.hostile.payloads DIR` writes every payload into DIR, to look at or replay with curl.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fixtures import images

PAYLOADS: dict[str, Callable[[], bytes]] = {}


def payload(name: str) -> Callable[[Callable[[], bytes]], Callable[[], bytes]]:
    """Register the decorated function as the payload `name` (computed once)."""

    def register(function: Callable[[], bytes]) -> Callable[[], bytes]:
        PAYLOADS[name] = functools.cache(function)
        return PAYLOADS[name]

    return register


def get(name: str) -> bytes:
    """The bytes of payload `name`."""
    return PAYLOADS[name]()


def _photo(fmt: str, **options: object) -> bytes:
    return images.encode(images.photo_image(96, 72, seed=3), fmt, **options)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int, color: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def _flip_bytes(data: bytes, start: float, length: int = 16) -> bytes:
    """`data` with `length` bytes from the fraction `start` of it inverted (corruption, not truncation)."""
    at = int(len(data) * start)
    return data[:at] + bytes(255 - b for b in data[at : at + length]) + data[at + length :]


# ---- odd but valid images: they must be answered (200), and correctly ----


@payload("cmyk-jpeg")
def cmyk_jpeg() -> bytes:
    return images.cmyk_jpeg(96, 72)


@payload("gray16-png")
def gray16_png() -> bytes:
    ramp = (np.arange(96 * 72, dtype=np.uint32).reshape(72, 96) * 9).astype(np.uint16)
    return images.encode(Image.fromarray(ramp), "PNG")


@payload("rgb48-png")
def rgb48_png() -> bytes:
    """16 bits per channel RGB, written by hand (Pillow cannot save it)."""
    pixels = (np.random.default_rng(4).integers(0, 65536, (72, 96 * 3), dtype=np.uint32)).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return _png(96, 72, 16, 2, rows)


@payload("rgba-png")
def rgba_png() -> bytes:
    return images.rgba_png(96, 72)


@payload("palette-png")
def palette_png() -> bytes:
    return images.encode(images.photo_image(96, 72, seed=5).convert("P"), "PNG", transparency=0)


@payload("animated-gif")
def animated_gif() -> bytes:
    return images.animated_gif(frames=4, width=48, height=48)


@payload("animated-webp")
def animated_webp() -> bytes:
    first = images.photo_image(64, 48, seed=6)
    return images.encode(first, "WEBP", save_all=True, append_images=[first.rotate(180)], duration=100)


@payload("exif-rotated-jpeg")
def exif_rotated_jpeg() -> bytes:
    return images.exif_rotated_jpeg(96, 64, orientation=8)


@payload("bmp")
def bmp() -> bytes:
    return _photo("BMP")


@payload("one-pixel-png")
def one_pixel_png() -> bytes:
    return images.encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")


# ---- truncated and corrupt images of every supported format: 400 ----


@payload("truncated-jpeg")
def truncated_jpeg() -> bytes:
    return images.truncated(_photo("JPEG", quality=90), 0.4)


@payload("truncated-png")
def truncated_png() -> bytes:
    return images.truncated(_photo("PNG"), 0.5)


@payload("truncated-webp")
def truncated_webp() -> bytes:
    return images.truncated(_photo("WEBP", quality=80), 0.5)


@payload("truncated-gif")
def truncated_gif() -> bytes:
    return images.truncated(_photo("GIF"), 0.5)


@payload("truncated-bmp")
def truncated_bmp() -> bytes:
    return images.truncated(_photo("BMP"), 0.5)


@payload("corrupt-jpeg")
def corrupt_jpeg() -> bytes:
    """A JPEG whose frame header (SOF0) declares 0 components."""
    data = bytearray(_photo("JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 9] = 0  # marker(2) length(2) precision(1) height(2) width(2) -> component count
    return bytes(data)


@payload("corrupt-png")
def corrupt_png() -> bytes:
    """A PNG whose image data fails its CRC."""
    return _flip_bytes(_photo("PNG"), 0.5)


@payload("corrupt-webp")
def corrupt_webp() -> bytes:
    """A WebP whose VP8 bitstream is garbage after its header."""
    data = _photo("WEBP", quality=80)
    return data[:30] + bytes(range(256)) * ((len(data) - 30) // 256 + 1)


@payload("corrupt-gif")
def corrupt_gif() -> bytes:
    """A GIF whose LZW minimum code size is out of range."""
    data = bytearray(_photo("GIF"))
    descriptor = data.index(b"\x2c", 13 + 3 * 256)  # image descriptor after the global palette
    data[descriptor + 10] = 0xFF
    return bytes(data)


@payload("corrupt-bmp")
def corrupt_bmp() -> bytes:
    """A BMP whose header claims 0 bits per pixel."""
    data = bytearray(_photo("BMP"))
    data[28:30] = b"\x00\x00"
    return bytes(data)


@payload("png-zero-size")
def png_zero_size() -> bytes:
    return _png(0, 0, 8, 2, b"")


# ---- decompression bombs and absurd headers: 413 ----


@payload("bomb-png")
def bomb_png() -> bytes:
    """900 megapixels (30000 x 30000) of 1-bit black in about 100 KB."""
    return images.decompression_bomb_png()


@payload("png-65535-header")
def png_65535_header() -> bytes:
    """A PNG header declaring 65535 x 65535 pixels, then one row of data."""
    return _png(65535, 65535, 8, 2, b"\x00" + bytes(65535 * 3))


@payload("png-1x100000")
def png_1x100000() -> bytes:
    """1 x 100 000 pixels: small, but a shortest-edge resize would make it billions of pixels."""
    return _png(1, 100_000, 8, 2, b"\x00\x00\x00\x00" * 100_000)


@payload("bomb-gif")
def bomb_gif() -> bytes:
    """A GIF whose logical screen and only frame are 65535 x 65535."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)  # global palette of 2 colours
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + b"\x00\x00\x00\xff\xff\xff" + frame + b"\x3b"


@payload("bomb-webp")
def bomb_webp() -> bytes:
    """An extended WebP (VP8X) declaring a 16384 x 16384 canvas around a tiny lossless image."""
    inner = _photo("WEBP", lossless=True)
    chunks = inner[12:]  # after RIFF....WEBP
    flags = b"\x00\x00\x00\x00"
    size = (16383).to_bytes(3, "little") * 2  # canvas width - 1, height - 1
    vp8x = b"VP8X" + struct.pack("<I", 10) + flags + size
    body = b"WEBP" + vp8x + chunks
    return b"RIFF" + struct.pack("<I", len(body)) + body


@payload("bomb-jpeg")
def bomb_jpeg() -> bytes:
    """A JPEG whose frame header says 65500 x 65500 pixels."""
    data = bytearray(_photo("JPEG", quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


@payload("bomb-bmp")
def bomb_bmp() -> bytes:
    """A BMP header declaring 50000 x 50000 pixels of 24 bits, with almost no pixel data."""
    header = struct.pack("<IiiHHIIiiII", 40, 50_000, 50_000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + header + bytes(16)


@payload("bomb-tiff")
def bomb_tiff() -> bytes:
    """A TIFF declaring 100000 x 100000 pixels (TIFF is not a format the server decodes at all: 415)."""
    entries = [
        (256, 4, 1, 100_000),  # ImageWidth, LONG
        (257, 4, 1, 100_000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 1, 8 + 2 + 12 * 7 + 4),  # StripOffsets
        (279, 4, 1, 64),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + zlib.compress(bytes(10_000_000))


@payload("tiff")
def tiff() -> bytes:
    return _photo("TIFF")


@payload("svg")
def svg() -> bytes:
    return b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>'


@payload("pdf")
def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# ---- JSON ----


@payload("json-nested-100000")
def json_nested() -> bytes:
    return b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@payload("json-huge")
def json_huge() -> bytes:
    """Over the 4 MB body cap the corpus servers run with."""
    return json.dumps({"inputs": "A" * (5 * 2**20)}).encode()


@payload("json-invalid-utf8")
def json_invalid_utf8() -> bytes:
    return b'{"inputs": "caf\xe9 \xff\xfe", "parameters": {}}'


@payload("prompt-1mb")
def prompt_1mb() -> bytes:
    return json.dumps({"inputs": "a fox in the snow, " * (2**20 // 19)}).encode()


@payload("openai-prompt-1mb")
def openai_prompt_1mb() -> bytes:
    return json.dumps({"prompt": "a fox in the snow, " * (2**20 // 19), "size": "32x32"}).encode()


@payload("oip-nested-data")
def oip_nested_data() -> bytes:
    """A tensor whose `data` is nested 900 deep (inside Python's JSON nesting limit)."""
    data = "[" * 900 + '"aGk="' + "]" * 900
    return (
        '{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ' + data + "}]}"
    ).encode()


@payload("oip-10000-elements")
def oip_many_elements() -> bytes:
    tensor = {"name": "image", "shape": [10_000], "datatype": "BYTES", "data": ["aGk="] * 10_000}
    return json.dumps({"inputs": [tensor]}).encode()


# ---- multipart ----

BOUNDARY = "hostile-boundary-7MA4YWxkTrZu0gW"


@payload("multipart-1000-fields")
def multipart_fields() -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="field{i}"\r\n\r\n{i}\r\n' for i in range(999)
    ]
    image = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + _photo("JPEG")
        + b"\r\n"
    )
    return "".join(parts).encode() + image + f"--{BOUNDARY}--\r\n".encode()


@payload("multipart-1000-files")
def multipart_files() -> bytes:
    return (
        "".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"; filename="{i}.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n{'x' * 100}\r\n"
            for i in range(1000)
        )
        + f"--{BOUNDARY}--\r\n"
    ).encode()


@payload("multipart-unterminated")
def multipart_unterminated() -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    ).encode() + _photo("JPEG")[:500]


# ---- HTTP-level bodies ----


@payload("header-100k")
def header_100k() -> bytes:
    """A request whose one header holds 100 KiB."""
    return b"X-Padding: " + b"a" * (100 * 1024)


@payload("headers-10000")
def headers_10000() -> bytes:
    """A request with 10 000 small headers (about 130 KiB)."""
    return b"\r\n".join(b"X-H%d: v" % i for i in range(10_000))


@payload("url-100k")
def url_100k() -> bytes:
    return b"/predict?top_k=" + b"9" * (100 * 1024)


def write_all(directory: Path) -> list[Path]:
    """Write every payload into `directory` (one file each, named after it); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(PAYLOADS):
        path = directory / name
        path.write_bytes(get(name))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.hostile.payloads DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.hostile.payloads DIR", file=sys.stderr)
        return 2
    for path in write_all(Path(args[0])):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
