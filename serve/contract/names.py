"""How a model id becomes a name: of an image, a container, an app, a service, a model in a protocol's URL."""

from __future__ import annotations

import re


def slug(text: str) -> str:
    """`text` lower-case with every run of characters other than a-z and 0-9 turned into one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def model_name(model: str) -> str:
    """The last part of a model id or directory path, as a slug ("model" when nothing is left)."""
    return slug(model.rstrip("/").rsplit("/", 1)[-1]) or "model"
