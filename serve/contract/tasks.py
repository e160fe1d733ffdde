"""The tasks a bake image serves, by their Hugging Face pipeline tag names."""

from __future__ import annotations

IMAGE_CLASSIFICATION = "image-classification"
TEXT_TO_IMAGE = "text-to-image"
TASKS = (IMAGE_CLASSIFICATION, TEXT_TO_IMAGE)
