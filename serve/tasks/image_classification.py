"""Image classification, answering like `transformers.pipeline("image-classification")`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from transformers import AutoModelForImageClassification

from serve.contract.tasks import IMAGE_CLASSIFICATION
from serve.errors import ModelLoadError
from serve.imaging import decode_image
from serve.payload import StrictModel
from serve.tasks.base import Prepared, Task, TaskInfo
from serve.tracing import eager_forward, traced_forward
from serve.transforms import EXAMPLE_INPUT_SIZE, ImageTransform, build_image_transform


class ClassificationParameters(StrictModel):
    """The `parameters` of an image-classification request (Hugging Face Inference API)."""

    top_k: Annotated[int, Field(ge=1)] = 5
    """How many labels to return, best first; more than the model has returns them all."""
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None
    """Scores from logits: default as the pipeline does (softmax, or sigmoid for multi-label models)."""


class ImageClassification(Task):
    """An `AutoModelForImageClassification` model with its image processor."""

    name = IMAGE_CLASSIFICATION
    Parameters = ClassificationParameters

    model: torch.nn.Module
    transform: ImageTransform
    _traced = False

    def load(self) -> None:
        """Load the weights onto the device in the compute dtype, and the matching image transform."""
        try:
            model = AutoModelForImageClassification.from_pretrained(
                str(self.source.path), dtype=self.placement.dtype
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(
                f"cannot load an image classifier from {self.source.path}: {error}"
            ) from error
        self.model = model.to(self.placement.device).eval()
        self._forward = eager_forward(self.model)
        config = model.config
        self._labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        self._default_function = _default_function(config)
        self.transform = build_image_transform(self.source.path, self.placement)
        self._min_decode_size = self.transform.min_decode_size if self.settings.jpeg_draft else None

    def optimize(self, batch_sizes: Sequence[int]) -> bool:
        """Swap in a traced forward pass when it matches the eager one at every batch size.

        The check runs noise images through the serving path's own `prepare` and `collate` (same shape,
        layout and strides as requests), so a verified trace has also been warmed up at every batch size:
        returns True then.
        """
        if not self.settings.torchscript:
            return False
        generator = np.random.default_rng(0)
        rows = min(2, max(batch_sizes))
        width, height = EXAMPLE_INPUT_SIZE
        noise = [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(rows)]
        prepared = [self.transform.prepare(Image.fromarray(pixels)) for pixels in noise]
        distinct = self.transform.collate(prepared, rows)
        tolerance = 1e-4 if self.placement.dtype == torch.float32 else 2e-2
        traced = traced_forward(self.model, distinct, batch_sizes, rtol=tolerance, atol=tolerance)
        if traced is None:
            return False
        self._forward = traced
        self._traced = True
        return True

    def prepare(self, inputs: bytes, params: ClassificationParameters) -> Prepared:
        """Decode and preprocess the image; batch key is the pixel array's shape."""
        image = decode_image(
            inputs, max_pixels=self.settings.max_image_pixels, min_size=self._min_decode_size
        )
        pixels = self.transform.prepare(image)
        return Prepared(sample=pixels, params=params, batch_key=pixels.shape)

    @torch.inference_mode()
    def run_batch(self, samples: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
        """Logits (float32, on the CPU) for each sample."""
        pixel_values = self.transform.collate(samples, batch_size)
        logits = self._forward(pixel_values)[: len(samples)]
        return list(logits.float().cpu().numpy())

    def finish(self, logits: np.ndarray, params: ClassificationParameters) -> list[dict[str, Any]]:
        """`[{"label", "score"}, ...]`, the top-k best first, as the pipeline computes them from the
        logits."""
        function = params.function_to_apply or self._default_function
        if function == "softmax":
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            values = shifted / shifted.sum(axis=-1, keepdims=True)
        elif function == "sigmoid":
            values = 1.0 / (1.0 + np.exp(-logits))
        else:
            values = logits
        order = np.argsort(-values, kind="stable")[: params.top_k]
        return [{"label": self._labels[i], "score": float(values[i])} for i in order]

    def warmup_samples(self) -> list[Prepared]:
        """One mid-grey image at the model's input size."""
        pixels = self.transform.example()
        return [Prepared(sample=pixels, params=ClassificationParameters(), batch_key=pixels.shape)]

    def info(self) -> TaskInfo:
        """Number of labels and the default scoring function."""
        return TaskInfo(
            task=self.name,
            details={
                "num_labels": len(self._labels),
                "function_to_apply": self._default_function,
                "preprocessing": type(self.transform).__name__,
                "torchscript": self._traced,
            },
        )


def _default_function(config: Any) -> str:
    """The scoring function `pipeline("image-classification")` picks for this config."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"
