"""Turning decoded images into model inputs exactly as the model's own image processor does.

The work is split in two halves so that each runs where it is cheapest:

- `prepare(image)` runs per image on a CPU worker thread: resize and crop, producing uint8 pixels
  (a quarter of the bytes of float32: cheaper to queue, pin and copy to the GPU).
- `collate(arrays, batch_size)` runs per batch on the device thread: stack into a (pinned, reused)
  host buffer, one non-blocking copy to the device, then rescale and normalize there in one pass.

The fast path reads the processor's own normalised settings (size, crop, resample, mean/std, ...)
from the transformers PIL processor and applies the same operations on uint8 data (bilinear resizes with
torch's SIMD port of Pillow's resampler): pixels stay within one uint8 step of the processor's and scores
match `pipeline("image-classification")`.
Processors whose pipeline differs from the standard resize -> crop -> rescale -> normalize fall back to
running the processor itself (correct, slower), see `build_image_transform`.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, ConvNextImageProcessorPil, PilBackend

from serve.device import Placement
from serve.errors import ModelLoadError

# ConvNeXt's processor resizes the short side to size/crop_pct then crops, below this size (it warps above).
_CONVNEXT_CROP_BELOW = 384
# Resampling filters for which torch's uint8 antialiased kernel stays within one step of Pillow's.
_TORCH_MODES = {int(Image.Resampling.BILINEAR): "bilinear"}
# Decoded images are read-only buffers; torch only reads them, so its warning about that is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
EXAMPLE_INPUT_SIZE = (640, 480)
"""(width, height) of the input image that warm-up and trace-checking examples are made from."""
# The base-class methods a processor must not override for the standard fast path to be exact.
_STANDARD_METHODS = ("preprocess", "_preprocess", "resize", "center_crop", "rescale", "normalize")


class ImageTransform(ABC):
    """Per-image preparation (CPU worker) and per-batch collation (device thread) of model inputs."""

    min_decode_size: tuple[int, int] | None = None
    """(width, height) that decoded images must keep if the decoder may downscale them (None: full size)."""

    @abstractmethod
    def prepare(self, image: Image.Image) -> np.ndarray:
        """Turn one RGB image into the array that `collate` batches."""

    @abstractmethod
    def collate(self, arrays: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
        """Stack `arrays` (padded to `batch_size` rows) into the model's `pixel_values` on the device."""

    @abstractmethod
    def example(self) -> np.ndarray:
        """An array of the shape `prepare` produces, for warming up."""


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

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize and crop `image` as the processor does; returns HWC uint8."""
        pixels = np.asarray(image)
        if self._resize is not None:
            kind, target = self._resize
            if kind == "shortest_edge":
                target = _shortest_edge_size(image.height, image.width, target[0])
            if target != (image.height, image.width):
                pixels = self._resize_pixels(image, pixels, target)
        if self._crop is not None:
            pixels = center_crop(pixels, *self._crop)
        return np.ascontiguousarray(pixels)

    def _resize_pixels(self, image: Image.Image, pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Antialiased resize to (height, width): torch's SIMD uint8 kernel for bilinear (a port of
        Pillow-SIMD's resampler, within one uint8 step of Pillow and ~8x faster on a 1600x1200 photo),
        Pillow itself for every other filter (torch's bicubic clips differently and can differ by many
        steps on noisy images)."""
        mode = _TORCH_MODES.get(self._resample)
        if mode is None:
            return np.asarray(image.resize((size[1], size[0]), resample=self._resample))
        batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # channels-last NCHW, no copy
        resized = torch.nn.functional.interpolate(
            batch, size=size, mode=mode, antialias=True, align_corners=False
        )
        return resized[0].permute(1, 2, 0).numpy()

    def collate(self, arrays: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
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
        return pixels.to(self._placement.dtype)

    def example(self) -> np.ndarray:
        """A mid-grey image of the output size (or of a 640x480 input when the size depends on the input)."""
        if self.output_size is not None:
            return np.full((*self.output_size, 3), 128, dtype=np.uint8)
        return self.prepare(Image.new("RGB", EXAMPLE_INPUT_SIZE, (128, 128, 128)))


class ProcessorImageTransform(ImageTransform):
    """Runs the model's own (PIL) image processor per image: exact for any processor, but slower."""

    def __init__(self, processor: object, placement: Placement) -> None:
        self._processor = processor
        self._placement = placement

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The processor's `pixel_values` for one image (float32 CHW)."""
        return self._processor(images=image, return_tensors="np")["pixel_values"][0]  # type: ignore[operator]

    def collate(self, arrays: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
        """Stack, pad with zeros to `batch_size`, move to the device in the compute dtype."""
        batch = np.zeros((batch_size, *arrays[0].shape), dtype=np.float32)
        batch[: len(arrays)] = np.stack(arrays)
        tensor = torch.from_numpy(batch)
        if self._placement.is_cuda:
            tensor = tensor.pin_memory().to(self._placement.device, non_blocking=True)
        return tensor.to(self._placement.dtype)

    def example(self) -> np.ndarray:
        """The processor's output for a mid-grey 640x480 image."""
        return self.prepare(Image.new("RGB", EXAMPLE_INPUT_SIZE, (128, 128, 128)))


def build_image_transform(model_dir: Path, placement: Placement) -> ImageTransform:
    """Build the fastest exact transform for the image processor saved in `model_dir`."""
    try:
        processor = AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as error:  # malformed configs surface as any
        raise ModelLoadError(f"no usable image processor config in {model_dir}: {error}") from error
    fast = _fast_transform_for(processor, placement)
    return fast if fast is not None else ProcessorImageTransform(processor, placement)


def _fast_transform_for(processor: object, placement: Placement) -> FastImageTransform | None:
    """A `FastImageTransform` equivalent to `processor`, or None when its pipeline is non-standard."""
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
