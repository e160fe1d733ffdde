"""Unit tests for `serve.transforms`: parity with the model's own (PIL) image processor.

Each processor is configured like a real Hub repo's, saved with `save_pretrained` and loaded back through
`build_image_transform`, as the runtime does. The fast path must give the processor's `pixel_values` (to
float32 rounding) for every image shape, including images smaller than the crop (zero padding) and 1xN
strips; processors it cannot reproduce must fall back to running the processor itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BitImageProcessorPil,
    CLIPImageProcessorPil,
    ConvNextImageProcessorPil,
    DeiTImageProcessorPil,
    EfficientNetImageProcessorPil,
    ViTImageProcessorPil,
)
from transformers.image_processing_backends import PilBackend
from transformers.image_transforms import center_crop as reference_center_crop

from serve.device import Placement, choose_placement
from serve.errors import ModelLoadError
from serve.transforms import (
    FastImageTransform,
    ImageTransform,
    ProcessorImageTransform,
    _fast_transform_for,
    build_image_transform,
    center_crop,
)
from tests.fixtures.images import photo_image
from tests.fixtures.models import IMAGENET_MEAN, IMAGENET_STD

CPU = choose_placement("cpu", "float32")

Factory = Callable[[], PilBackend]

FAST_PROCESSORS: dict[str, Factory] = {
    # microsoft/resnet-50 and facebook/convnext-tiny-224: resize the short side to 224/0.875, crop 224.
    "resnet-50": lambda: ConvNextImageProcessorPil(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    ),
    "convnext-tiny-224": lambda: ConvNextImageProcessorPil(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    ),
    # facebook/convnext-base-384: at 384 and above ConvNeXt warps to a square, no crop.
    "convnext-384": lambda: ConvNextImageProcessorPil(size={"shortest_edge": 384}, crop_pct=None, resample=3),
    "convnext-384-then-crop": lambda: ConvNextImageProcessorPil(
        size={"shortest_edge": 384}, do_center_crop=True, crop_size={"height": 300, "width": 300}
    ),
    "convnext-odd": lambda: ConvNextImageProcessorPil(size={"shortest_edge": 61}, crop_pct=0.9),
    # google/vit-base-patch16-224: warp to 224x224, bilinear, mean = std = 0.5.
    "vit-224": lambda: ViTImageProcessorPil(
        size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ),
    "vit-rectangular": lambda: ViTImageProcessorPil(size={"height": 50, "width": 70}),
    # facebook/deit-base-distilled-patch16-224: warp to 256x256, crop 224.
    "deit": lambda: DeiTImageProcessorPil(
        size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224}, resample=3
    ),
    # google/bit-50 and openai/clip-vit-base-patch32: short side 224, crop 224, CLIP mean/std.
    "bit": lambda: BitImageProcessorPil(),
    "clip": lambda: CLIPImageProcessorPil(),
    "clip-odd": lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 61}, crop_size={"height": 37, "width": 37}
    ),
    # A crop larger than the resized image: the crop zero-pads.
    "crop-pads": lambda: BitImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 48, "width": 40}
    ),
    "crop-only": lambda: CLIPImageProcessorPil(do_resize=False, crop_size={"height": 24, "width": 18}),
    "no-normalize": lambda: ViTImageProcessorPil(size={"height": 32, "width": 32}, do_normalize=False),
    "no-rescale": lambda: ViTImageProcessorPil(size={"height": 32, "width": 32}, do_rescale=False),
    "scalar-mean-std": lambda: ViTImageProcessorPil(
        size={"height": 30, "width": 34}, image_mean=0.5, image_std=0.25
    ),
    "nearest": lambda: BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 33, "width": 33}, resample=0
    ),
    "lanczos": lambda: BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 33, "width": 33}, resample=1
    ),
    "box": lambda: BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 33, "width": 33}, resample=4
    ),
    "hamming": lambda: BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 33, "width": 33}, resample=5
    ),
}

IMAGE_SIZES: list[tuple[int, int]] = [
    (320, 240),  # landscape
    (240, 320),  # portrait
    (200, 200),  # square
    (224, 224),  # already the crop size
    (256, 256),  # already the resize size
    (257, 129),  # odd, 2:1
    (61, 37),  # odd, small
    (12, 30),  # smaller than every crop
    (7, 5),  # tiny
    (1, 1),  # a single pixel
    (1, 12),  # vertical strip
    (12, 1),  # horizontal strip
    (3, 17),  # narrow
]
"""(width, height) of the test images."""

EXPECTED_MIN_DECODE_SIZE: dict[str, tuple[int, int] | None] = {
    "resnet-50": (512, 512),  # 2 * int(224 / 0.875)
    "convnext-tiny-224": (512, 512),
    "convnext-384": (768, 768),
    "convnext-384-then-crop": (768, 768),
    "convnext-odd": (134, 134),  # 2 * int(61 / 0.9)
    "vit-224": (448, 448),
    "vit-rectangular": (140, 140),  # the larger side of the warp
    "deit": (512, 512),  # the 256 resize, not the 224 crop
    "bit": (448, 448),
    "clip": (448, 448),
    "clip-odd": (122, 122),
    "crop-pads": (64, 64),
    "crop-only": None,  # no resize: nothing to draft towards
    "no-normalize": (64, 64),
    "no-rescale": (64, 64),
    "scalar-mean-std": (68, 68),
    "nearest": (80, 80),
    "lanczos": (80, 80),
    "box": (80, 80),
    "hamming": (80, 80),
}


class Built:
    """Processors saved to disk and the transforms `build_image_transform` makes of them, built once."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._cache: dict[str, tuple[PilBackend, ImageTransform]] = {}
        self._references: dict[tuple[str, tuple[int, int]], torch.Tensor] = {}

    def get(self, name: str, factory: Factory | None = None) -> tuple[PilBackend, ImageTransform]:
        if name not in self._cache:
            processor = (factory or FAST_PROCESSORS[name])()
            folder = self._root / name
            processor.save_pretrained(folder)
            self._cache[name] = (processor, build_image_transform(folder, CPU))
        return self._cache[name]

    def reference(self, name: str, size: tuple[int, int]) -> torch.Tensor:
        """The processor's `pixel_values` for `image_of(size)`, computed once."""
        key = (name, size)
        if key not in self._references:
            self._references[key] = processor_pixels(self.get(name)[0], image_of(size))
        return self._references[key]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("processors"))


@functools.cache
def image_of(size: tuple[int, int]) -> Image.Image:
    width, height = size
    return photo_image(width, height, seed=width * 1000 + height)


def processor_pixels(processor: PilBackend, images: Image.Image | list[Image.Image]) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]


def pixels(transform: ImageTransform, samples: list[Any], batch_size: int) -> torch.Tensor:
    """The `pixel_values` that `transform.collate` gives the model."""
    return transform.collate(samples, batch_size)["pixel_values"]


def assert_close(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    """Same shape and every element within `atol` (cheaper than `torch.testing.assert_close`)."""
    assert got.shape == expected.shape
    difference = (got.float() - expected.float()).abs().max().item()
    assert difference <= atol, f"max difference {difference} > {atol}"


def to_uint8(processor: PilBackend, pixel_values: torch.Tensor) -> np.ndarray:
    """Undo the processor's rescale and normalize: CHW floats back to HWC uint8."""
    values = pixel_values.double().numpy()
    if processor.do_normalize:
        mean = np.broadcast_to(np.asarray(processor.image_mean, dtype=np.float64), (3,)).reshape(3, 1, 1)
        std = np.broadcast_to(np.asarray(processor.image_std, dtype=np.float64), (3,)).reshape(3, 1, 1)
        values = values * std + mean
    if processor.do_rescale:
        values = values / processor.rescale_factor
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(1, 2, 0)


# -- the fast path: parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAST_PROCESSORS)
def test_standard_processors_get_the_fast_path(built: Built, name: str) -> None:
    _, transform = built.get(name)
    assert isinstance(transform, FastImageTransform)


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=[f"{w}x{h}" for w, h in IMAGE_SIZES])
@pytest.mark.parametrize("name", FAST_PROCESSORS)
def test_fast_path_matches_the_processor(built: Built, name: str, size: tuple[int, int]) -> None:
    _, transform = built.get(name)
    image = image_of(size)
    expected = built.reference(name, size)
    got = pixels(transform, [transform.prepare(image)], 1)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    assert_close(got, expected, atol=1e-5)  # float32 rounding only: the pixels are the processor's


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=[f"{w}x{h}" for w, h in IMAGE_SIZES])
@pytest.mark.parametrize("name", FAST_PROCESSORS)
def test_fast_path_pixels_equal_the_processor(built: Built, name: str, size: tuple[int, int]) -> None:
    processor, transform = built.get(name)
    image = image_of(size)
    prepared = transform.prepare(image)
    assert prepared.dtype == np.uint8
    assert prepared.ndim == 3 and prepared.shape[2] == 3
    assert prepared.flags.c_contiguous
    reconstructed = to_uint8(processor, built.reference(name, size)[0])
    assert reconstructed.shape == prepared.shape
    np.testing.assert_array_equal(prepared, reconstructed)


@pytest.mark.parametrize(
    ("name", "size"),
    [("crop-pads", (320, 240)), ("crop-pads", (12, 1)), ("crop-only", (7, 5)), ("crop-only", (12, 30))],
)
def test_small_images_are_zero_padded_like_the_processor(
    built: Built, name: str, size: tuple[int, int]
) -> None:
    processor, transform = built.get(name)
    image = image_of(size)
    prepared = transform.prepare(image)
    assert (prepared[0, 0] == 0).all() or (prepared[-1, -1] == 0).all()  # the padding is really exercised
    expected = processor_pixels(processor, image)
    assert_close(pixels(transform, [prepared], 1), expected, atol=1e-5)


@pytest.mark.parametrize("name", FAST_PROCESSORS)
def test_example_has_the_prepared_shape(built: Built, name: str) -> None:
    _, transform = built.get(name)
    example = transform.example()
    assert example.dtype == np.uint8
    assert example.shape == transform.prepare(image_of((97, 61))).shape
    assert transform.batch_key(example) == example.shape
    assert pixels(transform, [example], 2).shape[0] == 2


@pytest.mark.parametrize("name", FAST_PROCESSORS)
def test_min_decode_size_is_twice_the_resize_target(built: Built, name: str) -> None:
    _, transform = built.get(name)
    assert transform.min_decode_size == EXPECTED_MIN_DECODE_SIZE[name]


# -- collate -------------------------------------------------------------------------------------------------


BATCH_IMAGES = [(320, 240), (240, 320), (61, 37), (1, 12), (200, 200)]


@pytest.mark.parametrize("name", ["resnet-50", "vit-224", "clip-odd"])
def test_collate_pads_to_the_batch_size(built: Built, name: str) -> None:
    processor, transform = built.get(name)
    images = [image_of(size) for size in BATCH_IMAGES[:3]]
    batch = pixels(transform, [transform.prepare(image) for image in images], 4)
    expected = processor_pixels(processor, images)
    assert batch.shape == (4, *expected.shape[1:])
    assert_close(batch[:3], expected, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet-50", "deit", "crop-pads"])
def test_batch_rows_equal_rows_computed_alone(built: Built, name: str) -> None:
    _, transform = built.get(name)
    arrays = [transform.prepare(image_of(size)) for size in BATCH_IMAGES]
    alone = [pixels(transform, [array], 1)[0] for array in arrays]
    full = pixels(transform, arrays, len(arrays))
    for row, expected in enumerate(alone):
        assert torch.equal(full[row], expected)
    # A smaller batch after a bigger one (the host buffer is reused) still has the right rows.
    partial = pixels(transform, arrays[3:], len(arrays))
    assert partial.shape[0] == len(arrays)
    assert torch.equal(partial[0], alone[3]) and torch.equal(partial[1], alone[4])


def test_collate_does_not_alias_between_batches(built: Built) -> None:
    """A returned batch must not change when the next batch is collated (the host buffer is reused)."""
    _, transform = built.get("vit-224")
    first_arrays = [transform.prepare(image_of(size)) for size in BATCH_IMAGES[:2]]
    first = pixels(transform, first_arrays, 2)
    snapshot = first.clone()
    pixels(transform, [transform.prepare(image_of(size)) for size in BATCH_IMAGES[2:4]], 2)
    assert torch.equal(first, snapshot)


@pytest.mark.parametrize("name", ["resnet-50", "vit-224"])
def test_collate_in_bfloat16(built: Built, name: str) -> None:
    processor, _ = built.get(name)
    transform = _fast_transform_for(processor, choose_placement("cpu", "bfloat16"))
    assert transform is not None
    image = image_of((320, 240))
    batch = pixels(transform, [transform.prepare(image)], 2)
    assert batch.dtype == torch.bfloat16
    assert batch.shape[0] == 2
    assert_close(batch[:1], processor_pixels(processor, image), atol=0.02)


# -- the fallback: ProcessorImageTransform -------------------------------------------------------------------


class ChannelFlipProcessor(ViTImageProcessorPil):
    """A processor with its own `_preprocess` (like MobileViT's BGR flip): the fast path cannot know it."""

    def _preprocess(self, images: list[np.ndarray], **kwargs: Any) -> Any:
        return super()._preprocess([image[::-1].copy() for image in images], **kwargs)


class OwnResizeProcessor(BitImageProcessorPil):
    """A processor overriding `resize`."""

    def resize(self, image: np.ndarray, size: Any, resample: Any = None, **kwargs: Any) -> np.ndarray:
        return super().resize(image, size, resample=Image.Resampling.NEAREST, **kwargs)


class OwnCropConvNext(ConvNextImageProcessorPil):
    """A ConvNeXt processor overriding `center_crop`."""

    def center_crop(self, image: np.ndarray, size: Any, **kwargs: Any) -> np.ndarray:
        return super().center_crop(image, size, **kwargs)[:, ::-1].copy()


class RenamedViT(ViTImageProcessorPil):
    """A subclass that changes nothing but defaults: still standard."""

    resample = Image.Resampling.BICUBIC


FALLBACK_PROCESSORS: dict[str, Factory] = {
    "do-pad": lambda: ViTImageProcessorPil(
        size={"height": 32, "width": 32}, do_pad=True, pad_size={"height": 40, "width": 36}
    ),
    "efficientnet": lambda: EfficientNetImageProcessorPil(size={"height": 40, "width": 40}),
    "efficientnet-offset": lambda: EfficientNetImageProcessorPil(
        size={"height": 41, "width": 39}, rescale_offset=True, include_top=False
    ),
    "convnext-with-extra-crop": lambda: ConvNextImageProcessorPil(
        size={"shortest_edge": 64}, do_center_crop=True, crop_size={"height": 48, "width": 48}
    ),
    "longest-edge": lambda: BitImageProcessorPil(
        size={"shortest_edge": 32, "longest_edge": 48}, do_center_crop=False
    ),
}


@pytest.mark.parametrize("name", FALLBACK_PROCESSORS)
def test_non_standard_processors_fall_back(built: Built, name: str) -> None:
    processor, transform = built.get(name, FALLBACK_PROCESSORS[name])
    assert isinstance(transform, ProcessorImageTransform)
    assert transform.min_decode_size is None
    for size in [(320, 240), (61, 37), (7, 5), (1, 12)]:
        image = image_of(size)
        assert torch.equal(
            pixels(transform, [transform.prepare(image)], 1), processor_pixels(processor, image)
        )


def test_efficientnet_offset_is_really_applied(built: Built) -> None:
    """Why EfficientNet cannot take the fast path: pixels are rescaled to [-1, 1] before normalizing."""
    processor, transform = built.get("efficientnet-offset", FALLBACK_PROCESSORS["efficientnet-offset"])
    plain = ViTImageProcessorPil(
        size={"height": 41, "width": 39},
        resample=processor.resample,
        image_mean=processor.image_mean,
        image_std=processor.image_std,
    )
    image = image_of((320, 240))
    assert not torch.allclose(
        pixels(transform, [transform.prepare(image)], 1), processor_pixels(plain, image)
    )


@pytest.mark.parametrize(
    ("cls", "target"),
    [
        (ChannelFlipProcessor, {"height": 32, "width": 32}),
        (OwnResizeProcessor, {"shortest_edge": 40}),
        (OwnCropConvNext, {"shortest_edge": 40}),
    ],
)
def test_overriding_subclasses_are_not_fast(cls: type[PilBackend], target: dict[str, int]) -> None:
    processor = cls(size=target)
    assert _fast_transform_for(processor, CPU) is None
    transform = ProcessorImageTransform(processor, CPU)
    for size in [(320, 240), (1, 12)]:
        image = image_of(size)
        assert torch.equal(
            pixels(transform, [transform.prepare(image)], 1), processor_pixels(processor, image)
        )


def test_build_falls_back_for_a_custom_class(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As for a repo whose processor class comes with its own code: `build_image_transform` decides."""
    processor = ChannelFlipProcessor(size={"height": 32, "width": 32})
    loads: list[tuple[str, dict[str, Any]]] = []

    def from_pretrained(path: str, **kwargs: Any) -> PilBackend:
        loads.append((path, kwargs))
        return processor

    monkeypatch.setattr("transformers.AutoImageProcessor.from_pretrained", from_pretrained)
    transform = build_image_transform(tmp_path, CPU)
    assert loads == [(str(tmp_path), {"backend": "pil"})]
    assert isinstance(transform, ProcessorImageTransform)
    image = image_of((61, 37))
    flipped = pixels(transform, [transform.prepare(image)], 1)
    assert torch.equal(flipped, processor_pixels(processor, image))
    plain = processor_pixels(ViTImageProcessorPil(size={"height": 32, "width": 32}), image)
    assert torch.equal(flipped, plain.flip(1))  # the override really ran


def test_a_subclass_overriding_nothing_stays_fast() -> None:
    processor = RenamedViT(size={"height": 32, "width": 32})
    transform = _fast_transform_for(processor, CPU)
    assert isinstance(transform, FastImageTransform)
    image = image_of((61, 37))
    assert_close(
        pixels(transform, [transform.prepare(image)], 1), processor_pixels(processor, image), atol=1e-5
    )


def test_non_processor_is_not_fast() -> None:
    assert _fast_transform_for(object(), CPU) is None


def test_processor_collate_pads_with_the_first_sample(built: Built) -> None:
    """Padding rows copy a real input (an all-zero row is not a valid input of every model)."""
    processor, transform = built.get("efficientnet", FALLBACK_PROCESSORS["efficientnet"])
    images = [image_of(size) for size in BATCH_IMAGES[:3]]
    batch = pixels(transform, [transform.prepare(image) for image in images], 5)
    assert batch.shape == (5, 3, 40, 40)
    assert batch.dtype == torch.float32
    assert torch.equal(batch[:3], processor_pixels(processor, images))
    assert torch.equal(batch[3], batch[0]) and torch.equal(batch[4], batch[0])
    for row, image in enumerate(images):
        assert torch.equal(batch[row], pixels(transform, [transform.prepare(image)], 1)[0])


def test_processor_example(built: Built) -> None:
    processor, transform = built.get("efficientnet", FALLBACK_PROCESSORS["efficientnet"])
    example = transform.example()
    assert list(example) == ["pixel_values"]
    assert example["pixel_values"].shape == (3, 40, 40)
    assert example["pixel_values"].dtype == np.float32
    grey = Image.new("RGB", (640, 480), (128, 128, 128))
    np.testing.assert_array_equal(example["pixel_values"], processor_pixels(processor, grey)[0].numpy())
    assert transform.batch_key(example) == ((3, 40, 40),)


def test_processor_transform_in_bfloat16() -> None:
    processor = EfficientNetImageProcessorPil(size={"height": 24, "width": 24})
    transform = ProcessorImageTransform(processor, Placement(torch.device("cpu"), torch.bfloat16))
    assert pixels(transform, [transform.prepare(image_of((30, 20)))], 2).dtype == torch.bfloat16


# -- loading errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"config.json": json.dumps({"model_type": "resnet"})},
        {"preprocessor_config.json": "{not json"},
        {"preprocessor_config.json": json.dumps({"image_processor_type": "NoSuchImageProcessor"})},
        {"preprocessor_config.json": "{}"},
        {"preprocessor_config.json": "[]"},
    ],
    ids=["empty-folder", "no-processor", "bad-json", "unknown-class", "no-type", "not-an-object"],
)
def test_unusable_processor_config(tmp_path: Path, files: dict[str, str]) -> None:
    for filename, text in files.items():
        (tmp_path / filename).write_text(text)
    with pytest.raises(ModelLoadError, match="no usable image processor config"):
        build_image_transform(tmp_path, CPU)


def test_tiny_model_fixture_processors_are_fast(tiny_models: dict[str, Path]) -> None:
    for arch, folder in tiny_models.items():
        transform = build_image_transform(folder, CPU)
        assert isinstance(transform, FastImageTransform), arch
        assert transform.example().shape == (64, 64, 3)


# -- center_crop --------------------------------------------------------------------------------------------


CROP_CASES = [
    (10, 10, 4, 4),
    (10, 11, 4, 5),
    (11, 10, 5, 4),
    (11, 11, 4, 4),  # odd minus even: the extra pixel goes to the bottom/right
    (7, 9, 7, 9),  # the whole image
    (3, 3, 5, 5),  # smaller in both dimensions: padded all round
    (2, 9, 5, 4),  # smaller in height only
    (9, 2, 4, 5),  # smaller in width only
    (1, 1, 4, 3),
    (4, 4, 5, 4),  # one pixel of padding: it goes on the top
    (5, 6, 6, 5),
    (1, 40, 37, 37),
    (256, 341, 224, 224),
]


@pytest.mark.parametrize(("height", "width", "crop_h", "crop_w"), CROP_CASES)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_center_crop_matches_transformers(
    height: int, width: int, crop_h: int, crop_w: int, dtype: type[np.generic]
) -> None:
    rng = np.random.default_rng(height * 100 + width)
    pixels = (rng.integers(1, 256, size=(height, width, 3))).astype(dtype)
    got = center_crop(pixels, crop_h, crop_w)
    expected = reference_center_crop(
        pixels.transpose(2, 0, 1),
        (crop_h, crop_w),
        data_format="channels_first",
        input_data_format="channels_first",
    ).transpose(1, 2, 0)
    assert got.shape == (crop_h, crop_w, 3)
    assert got.dtype == pixels.dtype
    np.testing.assert_array_equal(got, expected)
    padded = crop_h > height or crop_w > width
    assert bool((got == 0).any()) == padded  # inputs are never 0, so zeros are padding
