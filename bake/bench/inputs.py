"""The request every client sends: an image for image tasks (default: a generated photo), a prompt for
text-to-image, chosen from the task the server reports at `GET /info`."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from bake.bench.loadgen import Target
from bake.errors import ConfigError

DEFAULT_PROMPT = "a watercolor painting of a lighthouse on a cliff at dawn"
PHOTO_SIZE = (640, 480)
"""The generated photo: VGA, the size of a typical upload after a phone app's own downscale."""
IMAGE_TASKS = ("image-classification",)
PROMPT_TASKS = ("text-to-image",)


def generated_photo(width: int = PHOTO_SIZE[0], height: int = PHOTO_SIZE[1], seed: int = 0) -> bytes:
    """A photo-like JPEG (quality 85): smooth gradients, soft shapes and sensor noise.

    Flat synthetic images compress to almost nothing and decode unrealistically fast; this one compresses
    like a photograph (about 0.1-0.3 bytes per pixel), so the server's decode and resize cost what they
    would for a real upload.
    """
    shapes = random.Random(seed)
    gradient = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    base = Image.merge("RGB", (gradient, radial, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(base)
    for _ in range(12):
        x0, y0 = shapes.randrange(width), shapes.randrange(height)
        box = (
            x0,
            y0,
            x0 + shapes.randrange(1, max(2, width // 3)),
            y0 + shapes.randrange(1, max(2, height // 3)),
        )
        color = tuple(shapes.randrange(256) for _ in range(3))
        (draw.ellipse if shapes.random() < 0.5 else draw.rectangle)(box, fill=color)
    smooth = base.filter(ImageFilter.GaussianBlur(radius=max(1, min(width, height) // 100)))
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 12) for _ in range(3)])
    photo = ImageChops.add(smooth, noise, scale=1.0, offset=-128)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def request_for(
    task: str,
    url: str,
    *,
    image: Path | None,
    prompt: str | None,
    parameters: dict[str, Any],
    headers: dict[str, str],
) -> tuple[Target, str]:
    """The request to send for `task`, and a short description of it for the report."""
    if task in IMAGE_TASKS:
        if prompt is not None:
            raise ConfigError(
                f"the server runs {task}: it takes an image, not a prompt", "pass --input IMAGE"
            )
        body = image.read_bytes() if image is not None else generated_photo()
        what = (
            f"{image.name} ({len(body) / 1024:.0f} KiB)"
            if image
            else (f"a generated {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG photo ({len(body) / 1024:.0f} KiB)")
        )
        query = "?" + urlencode(parameters) if parameters else ""
        return Target(
            f"{url}/predict{query}", body, {**headers, "Content-Type": "application/octet-stream"}
        ), what
    if task in PROMPT_TASKS:
        if image is not None:
            raise ConfigError(
                f"the server runs {task}: it takes a prompt, not an image", "pass --prompt TEXT"
            )
        text = prompt or DEFAULT_PROMPT
        document: dict[str, Any] = {"inputs": text, **({"parameters": parameters} if parameters else {})}
        what = f"the prompt {text!r}" + (f" with {json.dumps(parameters)}" if parameters else "")
        return Target(
            f"{url}/predict", json.dumps(document).encode(), {**headers, "Content-Type": "application/json"}
        ), what
    raise ConfigError(
        f"bake bench does not know how to load a {task!r} server", "bench an image or prompt task"
    )
