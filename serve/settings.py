"""The runtime's configuration: the one place in `serve` that reads the environment.

Every knob is an environment variable so that an image carries its settings as `ENV` lines and a
container host can override them without rebuilding. `Settings.from_env()` validates everything at
startup and raises `SettingsError` with the variable name and the accepted values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from serve.errors import SettingsError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Validated runtime settings. Field docs name the environment variable that sets each one."""

    model: str
    """`BAKE_MODEL`: a Hugging Face model id (resolved in the HF cache) or a local directory."""
    revision: str = "main"
    """`BAKE_REVISION`: branch, tag or commit sha of the model."""
    task: str | None = None
    """`BAKE_TASK`: the serving task; default: detected from the model's config."""
    device: str = "auto"
    """`BAKE_DEVICE`: auto | cpu | cuda | cuda:N."""
    dtype: str = "auto"
    """`BAKE_DTYPE`: auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16."""
    max_batch_size: int = 8
    """`BAKE_MAX_BATCH_SIZE`: the largest batch the device runs."""
    max_wait_ms: float = 10.0
    """`BAKE_MAX_WAIT_MS`: how long the first queued request waits for batch-mates."""
    max_queue: int = 256
    """`BAKE_MAX_QUEUE`: requests waiting for the device beyond this are refused with 503."""
    timeout_s: float = 30.0
    """`BAKE_TIMEOUT_S`: per-request deadline (504 past it)."""
    idle_timeout_s: float = 0.0
    """`BAKE_IDLE_TIMEOUT_S`: exit 0 after this many seconds without requests (0: never)."""
    drain_timeout_s: float = 30.0
    """`BAKE_DRAIN_TIMEOUT_S`: on SIGTERM, how long in-flight requests get to finish."""
    api_key: str | None = field(default=None, repr=False)
    """`BAKE_API_KEY`: when set, every route but /health and /ready needs `Authorization: Bearer <key>`."""
    host: str = "0.0.0.0"
    """`BAKE_HOST`: the address to bind."""
    port: int = 8080
    """`PORT`: the port to bind."""
    max_body_bytes: int = 20 * 1024 * 1024
    """`BAKE_MAX_BODY_BYTES`: larger request bodies get 413."""
    max_image_pixels: int = 40_000_000
    """`BAKE_MAX_IMAGE_PIXELS`: images declaring more pixels are refused (decompression bombs)."""
    workers: int = field(default_factory=lambda: 2 * max(1, os.cpu_count() or 1))
    """`BAKE_WORKERS`: CPU preprocessing threads; twice the cores keeps them busy while some wait for the GIL
    (2 cores, tiny ResNet, 640x480 JPEGs: 134 req/s with 4 workers, 114 with 2)."""
    jpeg_draft: bool = False
    """`BAKE_JPEG_DRAFT`: let the JPEG decoder downscale (by 2, 4 or 8) big photos while decoding, never
    below twice the size the model's resize step needs. 2.3-3.8x faster preprocessing of 2-12 MP photos,
    but pixels may differ from the model's own processor by up to 2 uint8 steps (scores by ~3e-4), so it
    is off by default: the default path matches the processor within one step."""
    torchscript: bool = True
    """`BAKE_TORCHSCRIPT`: run a traced, frozen forward pass once it matched the eager one at every batch size."""
    cpu_threads: int = 0
    """`BAKE_CPU_THREADS`: torch threads for the forward pass on the CPU; 0 picks at warm-up (see serve.threads)."""
    offline: bool = False
    """`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`: never touch the network to find the model."""
    log_level: str = "info"
    """`BAKE_LOG_LEVEL`: debug | info | warning | error."""
    attention_slicing: bool = False
    """`BAKE_ATTENTION_SLICING` (text-to-image): trade speed for memory in attention layers."""
    vae_tiling: bool = False
    """`BAKE_VAE_TILING` (text-to-image): decode large images tile by tile."""
    max_steps: int = 100
    """`BAKE_MAX_STEPS` (text-to-image): the most denoising steps a request may ask for."""
    max_image_area: int = 1024 * 1024
    """`BAKE_MAX_IMAGE_AREA` (text-to-image): the largest width x height, in pixels, a request may ask for."""
    max_images_per_prompt: int = 4
    """`BAKE_MAX_IMAGES_PER_PROMPT` (text-to-image): the most images one request may ask for (never more than
    `BAKE_MAX_BATCH_SIZE`: a request's images share its batch)."""
    default_steps: int = 0
    """`BAKE_DEFAULT_STEPS` (text-to-image): steps when a request names none; 0: the pipeline's own default (50
    for Stable Diffusion; few-step models such as sd-turbo want 1 to 4)."""
    default_guidance: float | None = None
    """`BAKE_DEFAULT_GUIDANCE` (text-to-image): guidance scale when a request names none; unset: the pipeline's
    own default (7.5 for SD 1.5, 5 for SDXL; distilled models such as sd-turbo want 0)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `os.environ`), validating every value."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        model = env.get("BAKE_MODEL", "").strip()
        if not model:
            raise SettingsError("BAKE_MODEL is not set: give a Hugging Face model id or a local model directory")
        defaults = cls(model=model)
        settings = cls(
            model=model,
            revision=env.get("BAKE_REVISION", "").strip() or defaults.revision,
            task=env.get("BAKE_TASK", "").strip() or None,
            device=reader.choice("BAKE_DEVICE", defaults.device, DEVICES, allow_cuda_index=True),
            dtype=reader.choice("BAKE_DTYPE", defaults.dtype, DTYPES),
            max_batch_size=reader.integer("BAKE_MAX_BATCH_SIZE", defaults.max_batch_size, minimum=1),
            max_wait_ms=reader.number("BAKE_MAX_WAIT_MS", defaults.max_wait_ms, minimum=0),
            max_queue=reader.integer("BAKE_MAX_QUEUE", defaults.max_queue, minimum=1),
            timeout_s=reader.number("BAKE_TIMEOUT_S", defaults.timeout_s, minimum=0.001),
            idle_timeout_s=reader.number("BAKE_IDLE_TIMEOUT_S", defaults.idle_timeout_s, minimum=0),
            drain_timeout_s=reader.number("BAKE_DRAIN_TIMEOUT_S", defaults.drain_timeout_s, minimum=0),
            api_key=env.get("BAKE_API_KEY") or None,
            host=env.get("BAKE_HOST", "").strip() or defaults.host,
            port=reader.integer("PORT", defaults.port, minimum=1, maximum=65535),
            max_body_bytes=reader.integer("BAKE_MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1),
            max_image_pixels=reader.integer("BAKE_MAX_IMAGE_PIXELS", defaults.max_image_pixels, minimum=1),
            workers=reader.integer("BAKE_WORKERS", defaults.workers, minimum=1),
            jpeg_draft=reader.flag("BAKE_JPEG_DRAFT", defaults.jpeg_draft),
            torchscript=reader.flag("BAKE_TORCHSCRIPT", defaults.torchscript),
            cpu_threads=reader.integer("BAKE_CPU_THREADS", defaults.cpu_threads, minimum=0),
            offline=reader.flag("HF_HUB_OFFLINE", False) or reader.flag("TRANSFORMERS_OFFLINE", False),
            log_level=reader.choice("BAKE_LOG_LEVEL", defaults.log_level, ("debug", "info", "warning", "error")),
            attention_slicing=reader.flag("BAKE_ATTENTION_SLICING", defaults.attention_slicing),
            vae_tiling=reader.flag("BAKE_VAE_TILING", defaults.vae_tiling),
            max_steps=reader.integer("BAKE_MAX_STEPS", defaults.max_steps, minimum=1),
            max_image_area=reader.integer("BAKE_MAX_IMAGE_AREA", defaults.max_image_area, minimum=64),
            max_images_per_prompt=reader.integer(
                "BAKE_MAX_IMAGES_PER_PROMPT", defaults.max_images_per_prompt, minimum=1
            ),
            default_steps=reader.integer("BAKE_DEFAULT_STEPS", defaults.default_steps, minimum=0),
            default_guidance=reader.optional_number("BAKE_DEFAULT_GUIDANCE", minimum=0),
        )
        if settings.default_steps > settings.max_steps:
            raise SettingsError(
                f"BAKE_DEFAULT_STEPS={settings.default_steps} is above BAKE_MAX_STEPS={settings.max_steps}"
            )
        return settings

    def public(self) -> dict[str, Any]:
        """The settings as a JSON-able dict, secrets left out (for /info and logs)."""
        data = asdict(self)
        data.pop("api_key")
        data["auth"] = self.api_key is not None
        return data


class _Reader:
    """Parses typed values out of an environment mapping, naming the variable in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not an integer") from None
        self._check_range(name, value, minimum, maximum)
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name}={raw!r} is not a finite number")
        self._check_range(name, value, minimum, None)
        return value

    def optional_number(self, name: str, *, minimum: float) -> float | None:
        if self._raw(name) is None:
            return None
        return self.number(name, 0.0, minimum=minimum)

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off")

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, allow_cuda_index: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in choices:
            return lowered
        if allow_cuda_index and lowered.startswith("cuda:") and lowered[5:].isdigit():
            return lowered
        accepted = ", ".join(choices) + (", cuda:N" if allow_cuda_index else "")
        raise SettingsError(f"{name}={raw!r} is not one of: {accepted}")

    @staticmethod
    def _check_range(name: str, value: float, minimum: float, maximum: float | None) -> None:
        if value < minimum:
            raise SettingsError(f"{name}={value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name}={value} is above the maximum {maximum}")
