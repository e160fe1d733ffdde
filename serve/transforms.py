"""Turning decoded images into model inputs exactly as the model's own image processor does.

The work is split in two halves so that each runs where it is cheapest:

- `prepare(image)` runs per image on a CPU worker thread: resize and crop, producing uint8 pixels
  (a quarter of the bytes of float32: cheaper to queue, pin and copy to the GPU).
- `collate(samples, batch_size)` runs per batch on the device thread and returns the model's keyword
  inputs: stack into a (pinned, reused) host buffer, one non-blocking copy to the device, then rescale and
  normalize there in one pass.

The fast path reads the processor's own normalised settings (size, crop, resample, mean/std, ...)
from the transformers PIL processor and applies the same operations on uint8 data, resizing with Pillow
itself: pixels equal the processor's and scores match `pipeline("image-classification")`. (torch's SIMD
uint8 bilinear kernel is 5x faster on a 1600x1200 photo but rounds 1 pixel in 7 one step differently on a
portrait photo, which moved a tiny ViT's scores by 7e-3: more than the 1e-4 parity the runtime promises.)
Processors whose pipeline differs from the standard resize -> crop -> rescale -> normalize fall back to
running the processor itself (correct, slower), and so do processors with more outputs than `pixel_values`
(SigLIP 2's patches, attention mask and spatial shapes; ImageGPT's colour-cluster `input_ids`): every output
the model's forward pass takes is carried to it. See `build_image_transform`.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from serve.contract.compiled import Preprocessing
from serve.device import Placement
from serve.errors import ModelLoadError

# ConvNeXt's processor resizes the short side to size/crop_pct then crops, below this size (it warps above).
_CONVNEXT_CROP_BELOW = 384
# Decoded images are read-only buffers; torch only reads them, so its warning about that is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
EXAMPLE_INPUT_SIZE = (640, 480)
"""(width, height) of the input image that warm-up and trace-checking examples are made from; the trace
check also uses its portrait twin, so that inputs that depend on the aspect ratio differ between its rows."""
# The base-class methods a processor must not override for the standard fast path to be exact.
_STANDARD_METHODS = ("preprocess", "_preprocess", "resize", "center_crop", "rescale", "normalize")


ModelInputs = dict[str, torch.Tensor]
"""A batch as the model's forward pass takes it: keyword argument name -> tensor on the device."""


class ImageTransform(ABC):
    """Per-image preparation (CPU worker) and per-batch collation (device thread) of model inputs."""

    min_decode_size: tuple[int, int] | None = None
    """(width, height) that decoded images must keep if the decoder may downscale them (None: full size)."""
    input_names: tuple[str, ...] = ("pixel_values",)
    """The keyword inputs `collate` gives the model."""

    @abstractmethod
    def prepare(self, image: Image.Image) -> Any:
        """Turn one RGB image into the sample that `collate` batches."""

    @abstractmethod
    def collate(self, samples: Sequence[Any], batch_size: int) -> ModelInputs:
        """Stack `samples` (padded to `batch_size` rows) into the model's keyword inputs on the device."""

    @abstractmethod
    def batch_key(self, sample: Any) -> Hashable:
        """Samples with equal keys can share a batch (their arrays have the same shapes)."""

    @abstractmethod
    def example(self) -> Any:
        """A sample of the shape `prepare` produces for a 640x480 photo, for warming up."""

    def working_pixels(self, width: int, height: int) -> int:
        """The most pixels `prepare` holds for an image of this size (the image, or its resized copy).

        A sliver of 1 x 100000 pixels is small, but resized to a shortest edge of 224 it would be 224 x 22.4
        million: callers compare this with the pixel cap before preparing.
        """
        return width * height


class FastImageTransform(ImageTransform):
    """Resize/crop with PIL on uint8 pixels; rescale and normalize on the device, per batch."""

    def __init__(
        self,
        *,
        resize: tuple[str, tuple[int, int]] | None,
        crop: tuple[int, int] | None,
        resample: int,
        scale: float | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        placement: Placement,
    ) -> None:
        self._resize = resize
        self._crop = crop
        self._resample = resample
        self._placement = placement
        self.preprocessing = Preprocessing(resize, crop, resample, scale, _floats(mean), _floats(std))
        """The arguments but the placement: what a compiled model's manifest records to rebuild this."""
        self.output_size = crop or (resize[1] if resize and resize[0] == "exact" else None)
        if resize is not None:
            kind, (first, second) = resize
            need = first if kind == "shortest_edge" else max(first, second)
            self.min_decode_size = (2 * need, 2 * need)
        multiplier = np.ones(3, dtype=np.float64) * (scale if scale is not None else 1.0)
        offset = np.zeros(3, dtype=np.float64)
        if mean is not None and std is not None:
            mean_arr = np.broadcast_to(np.asarray(mean, dtype=np.float64), (3,))
            std_arr = np.broadcast_to(np.asarray(std, dtype=np.float64), (3,))
            multiplier = multiplier / std_arr
            offset = mean_arr / std_arr
        device = placement.device
        self._multiplier = torch.tensor(multiplier, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._offset = torch.tensor(offset, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def working_pixels(self, width: int, height: int) -> int:
        """The image's pixels, or its resized copy's when that is larger."""
        return max(width * height, _resized_pixels(self._resize, width, height))

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize and crop `image` as the processor does; returns HWC uint8."""
        pixels = np.asarray(image)
        if self._resize is not None:
            kind, target = self._resize
            if kind == "shortest_edge":
                target = _shortest_edge_size(image.height, image.width, target[0])
            if target != (image.height, image.width):
                pixels = np.asarray(image.resize((target[1], target[0]), resample=self._resample))
        if self._crop is not None:
            pixels = center_crop(pixels, *self._crop)
        return np.ascontiguousarray(pixels)

    def collate(self, arrays: Sequence[np.ndarray], batch_size: int) -> ModelInputs:
        """Copy uint8 HWC arrays into a reused host buffer, move once, normalize on the device."""
        shape = (batch_size, *arrays[0].shape)
        host = self._buffers.get(shape)
        if host is None:
            host = torch.zeros(shape, dtype=torch.uint8)
            if self._placement.is_cuda:
                host = host.pin_memory()
            self._buffers[shape] = host
        host_np = host.numpy()
        for row, array in enumerate(arrays):
            host_np[row] = array
        batch = host.to(self._placement.device, non_blocking=True) if self._placement.is_cuda else host
        pixels = batch.permute(0, 3, 1, 2).float()
        pixels = pixels.mul_(self._multiplier).sub_(self._offset)
        return {"pixel_values": pixels.to(self._placement.dtype)}

    def batch_key(self, sample: np.ndarray) -> Hashable:
        """The array's shape."""
        return sample.shape

    def example(self) -> np.ndarray:
        """A mid-grey image of the output size (or of a 640x480 input when the size depends on the input)."""
        if self.output_size is not None:
            return np.full((*self.output_size, 3), 128, dtype=np.uint8)
        return self.prepare(grey_example())


class ProcessorImageTransform(ImageTransform):
    """Runs the model's own image processor per image: exact for any processor, but slower.

    A sample holds every processor output the model takes (`input_names`). Batches are padded with copies of
    their first sample, not zeros: an all-zero row is not a valid input for every model (SigLIP 2 resizes its
    position embeddings to each row's spatial shape, which must not be 0x0).
    """

    def __init__(
        self, processor: Any, placement: Placement, input_names: Sequence[str] = ("pixel_values",)
    ) -> None:
        self._processor = processor
        self._placement = placement
        self.input_names = tuple(input_names)

    def working_pixels(self, width: int, height: int) -> int:
        """The image's pixels, or its copy resized by a shortest-edge processor's when that is larger."""
        size = getattr(self._processor, "size", None)
        edge = getattr(size, "shortest_edge", None)
        if not edge or getattr(size, "longest_edge", None):
            return width * height
        return max(width * height, _resized_pixels(("shortest_edge", (edge, 0)), width, height))

    def prepare(self, image: Image.Image) -> dict[str, np.ndarray]:
        """The processor's outputs for one image that the model takes (one row each)."""
        outputs = self._processor(images=image, return_tensors="np")
        return {name: np.asarray(outputs[name][0]) for name in self.input_names}

    def collate(self, samples: Sequence[dict[str, np.ndarray]], batch_size: int) -> ModelInputs:
        """Stack each input, pad to `batch_size` rows, move to the device; floats in the compute dtype."""
        inputs = {}
        for name in self.input_names:
            rows = [sample[name] for sample in samples]
            rows += [rows[0]] * (batch_size - len(rows))
            tensor = torch.from_numpy(np.stack(rows))
            if self._placement.is_cuda:
                tensor = tensor.pin_memory().to(self._placement.device, non_blocking=True)
            inputs[name] = tensor.to(self._placement.dtype) if tensor.is_floating_point() else tensor
        return inputs

    def batch_key(self, sample: dict[str, np.ndarray]) -> Hashable:
        """Every input's shape."""
        return tuple(sample[name].shape for name in self.input_names)

    def example(self) -> dict[str, np.ndarray]:
        """The processor's outputs for a mid-grey 640x480 image."""
        return self.prepare(grey_example())


def build_image_transform(
    model_dir: Path, placement: Placement, accepts: Callable[[str], bool] = "pixel_values".__eq__
) -> ImageTransform:
    """Build the fastest exact transform for the image processor saved in `model_dir`.

    `accepts(name)` says whether the model's forward pass takes keyword input `name`: the transform carries
    every processor output it accepts. The PIL backend is preferred (the pipeline's own where torchvision is
    absent); a processor that exists for the torchvision backend only is run as it is.
    """
    processor = _load_processor(model_dir)
    names = _accepted_outputs(processor, accepts, model_dir)
    fast = _fast_transform_for(processor, placement) if names == ("pixel_values",) else None
    return fast if fast is not None else ProcessorImageTransform(processor, placement, names)


def _load_processor(model_dir: Path) -> Any:
    """The model's image processor: its PIL version, else (a torchvision-only processor) its default one."""
    from transformers import AutoImageProcessor  # not at the top: the compiled path never imports it

    try:
        return AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # any, for malformed configs
        if "torchvision" not in str(error):
            raise ModelLoadError(f"no usable image processor config in {model_dir}: {error}") from error
    try:
        return AutoImageProcessor.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as error:
        raise ModelLoadError(
            f"no usable image processor config in {model_dir}: its processor needs torchvision: {error}"
        ) from error


def _accepted_outputs(processor: Any, accepts: Callable[[str], bool], model_dir: Path) -> tuple[str, ...]:
    """The names of the processor's outputs (for a grey example image) that the model takes."""
    try:
        outputs = processor(images=grey_example(), return_tensors="np")
    except (ValueError, TypeError, KeyError, AttributeError, ImportError) as error:
        raise ModelLoadError(f"the image processor of {model_dir} fails on an image: {error}") from error
    names = tuple(name for name in outputs if accepts(name))
    if not names:
        raise ModelLoadError(
            f"the image processor of {model_dir} gives {', '.join(outputs) or 'nothing'}, "
            "none of which the model takes"
        )
    return names


def _fast_transform_for(processor: object, placement: Placement) -> FastImageTransform | None:
    """A `FastImageTransform` equivalent to `processor`, or None when its pipeline is non-standard."""
    from transformers import ConvNextImageProcessorPil, PilBackend

    if not isinstance(processor, PilBackend) or getattr(processor, "do_pad", False):
        return None
    cls = type(processor)
    convnext = issubclass(cls, ConvNextImageProcessorPil)
    base = ConvNextImageProcessorPil if convnext else PilBackend
    if any(getattr(cls, name) is not getattr(base, name) for name in _STANDARD_METHODS):
        return None
    p = processor
    resize: tuple[str, tuple[int, int]] | None = None
    crop = (p.crop_size.height, p.crop_size.width) if p.do_center_crop and p.crop_size else None
    if p.do_resize:
        size = p.size
        if size.longest_edge or size.max_height or size.max_width:
            return None
        if convnext:
            edge = size.shortest_edge
            if edge < _CONVNEXT_CROP_BELOW:
                resize = ("shortest_edge", (int(edge / p.crop_pct), 0))
                if crop is not None:
                    return None  # a second crop after ConvNeXt's own: never seen in practice
                crop = (edge, edge)
            else:
                resize = ("exact", (edge, edge))
        elif size.shortest_edge:
            resize = ("shortest_edge", (size.shortest_edge, 0))
        elif size.height and size.width:
            resize = ("exact", (size.height, size.width))
        else:
            return None
    return FastImageTransform(
        resize=resize,
        crop=crop,
        resample=int(p.resample) if p.resample is not None else Image.Resampling.BILINEAR,
        scale=p.rescale_factor if p.do_rescale else None,
        mean=p.image_mean if p.do_normalize else None,
        std=p.image_std if p.do_normalize else None,
        placement=placement,
    )


def grey_example() -> Image.Image:
    """A mid-grey RGB image of `EXAMPLE_INPUT_SIZE`."""
    return Image.new("RGB", EXAMPLE_INPUT_SIZE, (128, 128, 128))


def _resized_pixels(resize: tuple[str, tuple[int, int]] | None, width: int, height: int) -> int:
    if resize is None:
        return 0
    kind, target = resize
    if kind == "shortest_edge":
        target = _shortest_edge_size(height, width, target[0])
    return target[0] * target[1]


def _floats(values: float | Sequence[float] | None) -> tuple[float, ...] | None:
    """Per-channel values (one value means the same for the three channels)."""
    if values is None:
        return None
    return tuple(float(value) for value in np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)))


def _shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """transformers' `get_resize_output_image_size(default_to_square=False)`: (height, width)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' `center_crop` on an HWC array, zero-padding images smaller than the crop."""
    orig_h, orig_w = pixels.shape[:2]
    top = (orig_h - height) // 2
    left = (orig_w - width) // 2
    if top >= 0 and left >= 0 and top + height <= orig_h and left + width <= orig_w:
        return pixels[top : top + height, left : left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    canvas = np.zeros((new_h, new_w, *pixels.shape[2:]), dtype=pixels.dtype)
    top_pad = math.ceil((new_h - orig_h) / 2)
    left_pad = math.ceil((new_w - orig_w) / 2)
    canvas[top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = pixels
    top += top_pad
    left += left_pad
    return canvas[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]
