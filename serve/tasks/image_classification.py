"""Image classification, answering like `transformers.pipeline("image-classification")`.

Every model type of transformers' image-classification mapping is described in `serve.contract.models`: the
load refuses the types bake cannot serve and checks that the packages a type needs are installed.

The forward pass is decided at warm-up (`optimize`), per model, and shown in /info:
- scores that are not finite numbers on a warm-up image refuse the model (a load error);
- the traced forward is served when the type can be traced, the inputs have one shape whatever the image,
  tracing and checking it fits the warm-up budget (`WARMUP_BUDGET_S`), and it matches the eager forward;
  otherwise the eager forward, with the reason logged.
A request whose scores are not finite numbers gets a 500 with the reason (`InferenceFailed`), never NaN.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from serve.compiled import NotCompiled, load_compiled
from serve.contract import packages
from serve.contract.compiled import Rewrite
from serve.contract.models import ModelType, image_classifier
from serve.contract.tasks import IMAGE_CLASSIFICATION
from serve.errors import InferenceFailed, ModelLoadError, PayloadTooLarge
from serve.imaging import decode_image
from serve.payload import StrictModel
from serve.tasks.base import Prepared, Task, TaskInfo
from serve.tracing import eager_forward, traced_forward
from serve.transforms import EXAMPLE_INPUT_SIZE, ImageTransform, build_image_transform

logger = logging.getLogger("serve")

WARMUP_BUDGET_S = 4.0
"""The most that tracing, checking and warming up may be expected to cost, from the measured time of one
forward pass. A process takes about this long to import torch and transformers here, so a warm-up within it
keeps start-up within 2x of the model's own load and first forward pass. A model slower than that (a
random-weight EfficientNet-B7 at 600 pixels: 5 s a forward pass on 2 cores, and 40 s to trace) is served
eagerly, and warmed up at the batch sizes that fit."""

RETIME_BELOW_S = 1.0
"""A first forward pass too slow for the budget but faster than this is timed again (`RETIMES` times, the
fastest counts) before it decides: the first pass of a process carries a one-time set-up cost (oneDNN, the
allocator: 0.1-0.3 s measured here), and a busy machine can stall any one pass, which would otherwise keep
small models eager."""

RETIMES = 2


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
    kind: ModelType
    _traced = False
    _eager_reason: str | None = None
    _compiled = False
    _compile_note = ""

    def load(self) -> None:
        """Check the model type against the registry; serve the forward pass compiled at build time when the
        image holds one for this model and device (torch alone, no transformers import); else load the
        weights onto the device in the compute dtype, and the matching image transform."""
        self.kind = _model_type(self.source.read_json("config.json") or {})
        if self._load_compiled():
            return
        from transformers import AutoModelForImageClassification

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
        accepted = inspect.signature(model.forward).parameters
        self.transform = build_image_transform(
            self.source.path, self.placement, accepts=accepted.__contains__
        )
        self._min_decode_size = self.transform.min_decode_size if self.settings.jpeg_draft else None

    def _load_compiled(self) -> bool:
        """Use the compiled forward pass (`serve.compiled`) if it fits; else False, with the reason noted."""
        try:
            compiled = load_compiled(self.source, self.settings, self.placement, self.name)
        except NotCompiled as reason:
            self._compile_note = str(reason)
            logger.info("loading with transformers: %s", reason)
            return False
        manifest = compiled.manifest
        self._forward = compiled.forward
        self._labels = list(manifest.labels)
        self._default_function = _default_function(
            SimpleNamespace(problem_type=manifest.problem_type, num_labels=len(manifest.labels))
        )
        self.transform = compiled.transform
        self._min_decode_size = self.transform.min_decode_size if self.settings.jpeg_draft else None
        self._compiled = self._traced = True
        rewritten = "" if manifest.rewrite is Rewrite.NONE else f", rewritten: {manifest.rewrite}"
        self._compile_note = (
            f"torchscript, compiled at build time{rewritten} (score difference {manifest.parity:.1e})"
        )
        return True

    @torch.inference_mode()
    def optimize(self, batch_sizes: Sequence[int]) -> bool:
        """Check the scores at warm-up, choose the traced or the eager forward pass, and warm it up.

        A landscape and a portrait noise image go through the serving path's own `prepare` and `collate` (same
        shapes, layout and strides as requests). One forward pass on the first is timed and must give finite
        scores (else `ModelLoadError`). The traced forward replaces the eager one when it matches it at every
        batch size (its checked runs are its warm-up); otherwise the eager forward is warmed up at the batch
        sizes whose expected cost fits `WARMUP_BUDGET_S`. Returns True: no separate warm-up is needed. A
        forward pass compiled at build time was checked there: the runtime only warms it up (returns False).
        """
        if self._compiled:
            return False
        rows = self._check_rows()
        per_sample = self._time_one(rows[0])
        if _tracing_cost(per_sample, rows, batch_sizes) > WARMUP_BUDGET_S and per_sample < RETIME_BELOW_S:
            per_sample = min(self._time_one(rows[0]) for _ in range(RETIMES))
        self._eager_reason = self._why_eager(rows, per_sample, batch_sizes)
        if self._eager_reason is None:
            distinct = self.transform.collate(rows, len(rows))
            tolerance = 1e-4 if self.placement.dtype == torch.float32 else 2e-2
            traced = traced_forward(self.model, distinct, batch_sizes, rtol=tolerance, atol=tolerance)
            if traced is not None:
                self._forward, self._traced = traced, True
                return True
            self._eager_reason = "the traced forward pass differs from the eager one (see the warning above)"
        logger.info("serving the eager forward pass of this %s model: %s", self.kind.name, self._eager_reason)
        spent = per_sample  # batch size 1 has just run
        for size in sorted(set(batch_sizes) - {1}):
            spent += per_sample * size
            if spent > WARMUP_BUDGET_S:
                break
            self.run_batch(rows[:1] * size, size)
        return True

    def _time_one(self, sample: Any) -> float:
        """Seconds one eager forward pass costs on `sample`, whose logits must be finite (`ModelLoadError`).

        The smaller of the wall-clock and the process's CPU time: a busy machine stretches the first (waiting
        for a core), a pass spread over several cores the second, so neither alone measures the model."""
        started, started_cpu = time.perf_counter(), time.process_time()
        logits = self._forward(self.transform.collate([sample], 1))
        finite = bool(torch.isfinite(logits).all())
        seconds = min(time.perf_counter() - started, time.process_time() - started_cpu)
        if not finite:
            raise ModelLoadError(
                "the model's logits on a warm-up image are not finite numbers "
                f"({logits.flatten()[:4].tolist()}...): its weights are broken or overflow in this dtype"
            )
        return seconds

    def _check_rows(self) -> list[Any]:
        """A landscape and a portrait noise image, prepared as requests are."""
        generator = np.random.default_rng(0)
        width, height = EXAMPLE_INPUT_SIZE
        shapes = ((height, width, 3), (width, height, 3))
        noise = [Image.fromarray(generator.integers(0, 256, shape, dtype=np.uint8)) for shape in shapes]
        return [self.transform.prepare(image) for image in noise]

    def _why_eager(self, rows: list[Any], per_sample: float, batch_sizes: Sequence[int]) -> str | None:
        """Why the forward pass must stay eager, or None if tracing is worth trying."""
        if not self.settings.torchscript:
            return "BAKE_TORCHSCRIPT=0"
        if not self.kind.traceable:
            return f"{self.kind.name} models cannot be traced: {self.kind.notes}"
        if len({self.transform.batch_key(row) for row in rows}) > 1:
            return "the input shape depends on the image, and a trace is checked at one shape only"
        expected = _tracing_cost(per_sample, rows, batch_sizes)
        if expected > WARMUP_BUDGET_S:
            return (
                f"one forward pass takes {per_sample:.2f} s: tracing and checking it would take about "
                f"{expected:.0f} s of start-up (budget {WARMUP_BUDGET_S:.0f} s)"
            )
        return None

    def prepare(self, inputs: bytes, params: ClassificationParameters) -> Prepared:
        """Decode and preprocess the image; the batch key is the shape of its inputs."""
        limit = self.settings.max_image_pixels
        image = decode_image(inputs, max_pixels=limit, min_size=self._min_decode_size)
        working = self.transform.working_pixels(*image.size)
        if working > limit:
            raise PayloadTooLarge(
                f"the image is {image.width}x{image.height}: resized for the model it would be {working} "
                f"pixels, over the limit of {limit} (BAKE_MAX_IMAGE_PIXELS); crop it to a less extreme "
                "aspect ratio"
            )
        sample = self.transform.prepare(image)
        return Prepared(sample=sample, params=params, batch_key=self.transform.batch_key(sample))

    @torch.inference_mode()
    def run_batch(self, samples: Sequence[Any], batch_size: int) -> list[np.ndarray]:
        """Logits (float32, on the CPU) for each sample. Raises `InferenceFailed` when a sample's logits are
        not finite numbers (the batcher then runs each sample alone, so only that request fails)."""
        logits = self._forward(self.transform.collate(samples, batch_size))[: len(samples)]
        outputs = logits.float().cpu().numpy()
        if not np.isfinite(outputs).all():
            raise InferenceFailed(
                "the model's logits for this image are not finite numbers (NaN or infinity), so it has no "
                "scores to give"
            )
        return list(outputs)

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
        """One mid-grey image at the model's input size.

        Each bucket runs it once before /ready. TorchScript profiles a batch shape's first run and optimizes
        on its second, so the first request of each size pays that once: a few milliseconds for a plain or
        `optimize_for_inference` archive, and 0.05-0.15 s for a fused one (`Rewrite.ONEDNN_FUSION`, which
        compiles its kernels then and runs at its full speed from a shape's third or fourth run). Warming
        each bucket until then would delay /ready by 1.4 s for ResNet-50 on 2 cores (docs/benchmarks.md)."""
        sample = self.transform.example()
        key = self.transform.batch_key(sample)
        return [Prepared(sample=sample, params=ClassificationParameters(), batch_key=key)]

    def info(self) -> TaskInfo:
        """Model type, labels, scoring function, preprocessing, inputs, and the forward pass chosen at
        warm-up (traced, or eager and why)."""
        return TaskInfo(
            task=self.name,
            details={
                "model_type": self.kind.name,
                "num_labels": len(self._labels),
                "function_to_apply": self._default_function,
                "preprocessing": type(self.transform).__name__,
                "inputs": list(self.transform.input_names),
                "torchscript": self._traced,
                "eager_reason": self._eager_reason,
                "load_path": "compiled" if self._compiled else "transformers",
                "compiled": self._compile_note,
            },
        )


def _tracing_cost(per_sample: float, rows: Sequence[Any], batch_sizes: Sequence[int]) -> float:
    """Expected seconds to trace and check a forward pass: the eager rows, then every batch size traced."""
    return per_sample * (len(rows) + sum(set(batch_sizes)))


def _model_type(config: dict[str, Any]) -> ModelType:
    """The registry entry of the model (`UnsupportedModel` for a type bake does not serve), once the packages
    it needs are importable (`ModelLoadError` naming them otherwise)."""
    kind = image_classifier(config)
    missing = packages.missing(kind.packages)
    if missing:
        raise ModelLoadError(packages.missing_message(f"a {kind.name} model", missing))
    return kind


def _default_function(config: Any) -> str:
    """The scoring function `pipeline("image-classification")` picks for this config."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"
