"""What every competitor does the standard way: decode a JSON/base64 request, run the processor, rank
labels."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification


def load(model_dir: Path) -> tuple[torch.nn.Module, object]:
    """The model in eval mode on the CPU, and its (PIL) image processor, as their docs show."""
    model = AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()
    processor = AutoImageProcessor.from_pretrained(str(model_dir))
    return model, processor


def decode(payload: dict, processor: object) -> torch.Tensor:
    """`{"inputs": "<base64>"}` -> the processor's pixel_values for one image (1, 3, H, W)."""
    image = Image.open(io.BytesIO(base64.b64decode(payload["inputs"]))).convert("RGB")
    return processor(images=image, return_tensors="pt")["pixel_values"]  # type: ignore[operator]


def top5(logits: torch.Tensor, labels: dict[int, str]) -> list[dict[str, object]]:
    """The five best labels of one row of logits, as the Inference API answers."""
    scores = logits.softmax(-1)
    values, indices = scores.topk(min(5, scores.shape[-1]))
    return [{"label": labels[int(i)], "score": float(v)} for v, i in zip(values, indices)]
