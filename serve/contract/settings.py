"""Every runtime setting, described once: its environment variable, default, accepted values and parser.

The runtime is configured entirely by environment variables, so an image carries its settings as `ENV`
lines and a container host overrides them without rebuilding. Two groups:

- `ServeSettings`: what `bake build` bakes into an image (bake.toml's `[serve]` table, flags and host
  variables of the same names); `bake launch` reads them back from the image's labels with the same parser.
- `Settings`: all of the above plus what is decided per image or per container (the model, its task and
  device, the bind address, the API key, the offline flag). `python -m serve` reads it at start-up.

Values are read by `Spec.parse` (text: environment variables, flags) and checked by `Spec.check` (ranges,
choices), which raise `SettingsError` naming the variable and what it accepts. An empty or blank variable
means "not set", everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from serve.contract import image
from serve.contract.errors import SettingsError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEVICES = ("auto", "cpu", "cuda")
"""`BAKE_DEVICE` values; `cuda:N` names one GPU."""
BUILD_DEVICES = ("cpu", "cuda")
"""What an image is built for (`bake build --device`); the image's `BAKE_DEVICE` is set to it."""
DTYPES = ("auto", "float32", "float16", "bfloat16")
LOG_LEVELS = ("debug", "info", "warning", "error")
_KINDS = {"int": int, "float": float, "bool": bool, "str": str}
_SPEC_KEY = "bake.setting"

SettingsT = TypeVar("SettingsT", bound="ServeSettings")


@dataclass(frozen=True)
class Spec:
    """How one setting is named, parsed and checked."""

    key: str
    """The field name, and the key in bake.toml's `[serve]` table."""
    env: str
    """The variable the runtime reads."""
    kind: str
    """"int", "float", "bool" or "str"."""
    default: Any
    help: str
    optional: bool = False
    """None is a valid value ("not set": the runtime decides)."""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    cuda_index: bool = False
    """`cuda:N` is accepted beside the choices."""
    host_env: str | None = None
    """The variable `bake` reads on the host for this setting when it differs from `env` (a generic name
    such as PORT must not change what is baked into an image)."""

    @property
    def host_variable(self) -> str:
        """The variable bake reads on the host."""
        return self.host_env or self.env

    def parse(self, text: str, where: str | None = None) -> Any:
        """The value of `text` (stripped; blank means the default), checked; `where` names it in errors."""
        where = where or self.env
        raw = text.strip()
        if not raw:
            return self.default
        if self.kind == "bool":
            value: Any = parse_flag(raw, where)
        elif self.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{where}={raw!r} is not an integer") from None
        elif self.kind == "float":
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{where}={raw!r} is not a number") from None
        else:
            value = raw.lower() if self.choices else raw
        return self.check(value, where)

    def check(self, value: Any, where: str | None = None) -> Any:
        """`value` if it is of the right type and within range and choices, else `SettingsError`."""
        where = where or self.env
        if value is None and self.optional:
            return None
        expected = _KINDS[self.kind]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise SettingsError(f"{where}={value!r} is not a{'n' if self.kind == 'int' else ''} {self.kind}")
        if self.kind == "float" and not math.isfinite(value):
            raise SettingsError(f"{where}={value!r} is not a finite number")
        if self.minimum is not None and value < self.minimum:
            raise SettingsError(f"{where}={value} is below the minimum {_number(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise SettingsError(f"{where}={value} is above the maximum {_number(self.maximum)}")
        if self.choices and value not in self.choices and not (self.cuda_index and _is_cuda_index(value)):
            accepted = ", ".join(self.choices) + (", cuda:N" if self.cuda_index else "")
            raise SettingsError(f"{where}={value!r} is not one of: {accepted}")
        return value


def parse_flag(text: str, where: str) -> bool:
    """A yes/no value: 1/true/yes/on or 0/false/no/off, any case; anything else is a `SettingsError`."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise SettingsError(f"{where}={text!r} is not a boolean", "use 1/0, true/false, yes/no or on/off")


def setting(default: Any, env: str, help: str, **options: Any) -> Any:
    """A dataclass field that is a setting read from `env` (see `Spec` for `options`)."""
    return field(default=default, metadata={_SPEC_KEY: (env, help, options)})


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """The runtime settings an image carries (bake.toml `[serve]`), all with defaults."""

    dtype: str = setting(
        "auto",
        "BAKE_DTYPE",
        "Compute dtype: auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16.",
        choices=DTYPES,
    )
    max_batch_size: int = setting(8, "BAKE_MAX_BATCH_SIZE", "Largest batch run on the device.", minimum=1)
    max_wait_ms: float = setting(
        10.0,
        "BAKE_MAX_WAIT_MS",
        "How long the first queued request waits for batch-mates, in milliseconds.",
        minimum=0,
    )
    max_queue: int = setting(
        256, "BAKE_MAX_QUEUE", "Requests waiting beyond this are refused with 503 at once.", minimum=1
    )
    timeout_s: float = setting(
        30.0, "BAKE_TIMEOUT_S", "Per-request deadline in seconds (504 past it).", minimum=0.001
    )
    idle_timeout_s: float = setting(
        0.0,
        "BAKE_IDLE_TIMEOUT_S",
        "Exit 0 after this many seconds without requests (0: never); the host starts it again on demand.",
        minimum=0,
    )
    drain_timeout_s: float = setting(
        30.0, "BAKE_DRAIN_TIMEOUT_S", "On SIGTERM, seconds in-flight requests get to finish.", minimum=0
    )
    keep_alive_s: float = setting(
        75.0,
        "BAKE_KEEP_ALIVE_S",
        "Seconds an idle keep-alive connection stays open: longer than the idle timeouts of the proxies "
        "and client pools in front (nginx's upstream 60 s, httpx's 5 s), so the server never closes a "
        "connection a client is sending its next request on.",
        minimum=1,
    )
    port: int = setting(
        8080,
        "PORT",
        "Port the server listens on inside the container.",
        minimum=1,
        maximum=65535,
        host_env="BAKE_PORT",
    )
    max_body_bytes: int = setting(
        20 * 1024 * 1024, "BAKE_MAX_BODY_BYTES", "Larger request bodies get 413.", minimum=1
    )
    max_image_pixels: int = setting(
        40_000_000,
        "BAKE_MAX_IMAGE_PIXELS",
        "Images declaring more pixels are refused with 413 (decompression bombs).",
        minimum=1,
    )
    workers: int = setting(
        0,
        "BAKE_WORKERS",
        "CPU preprocessing threads; 0: twice the CPU count (some wait for "
        "the GIL while others decode: 2 cores, tiny ResNet, 640x480 JPEGs: 134 req/s with 4 "
        "workers, 114 with 2).",
        minimum=0,
    )
    jpeg_draft: bool = setting(
        False,
        "BAKE_JPEG_DRAFT",
        "Decode big JPEGs at reduced size (never below twice "
        "the model's input): 2-4x faster preprocessing of multi-megapixel photos, pixels "
        "within 2 uint8 steps of the model's processor instead of 1.",
    )
    torchscript: bool = setting(
        True,
        "BAKE_TORCHSCRIPT",
        "Serve a traced, frozen forward pass once it matched the eager one at every batch size.",
    )
    cpu_threads: int = setting(
        0,
        "BAKE_CPU_THREADS",
        "Torch threads for the forward pass on the CPU; 0 chooses "
        "at warm-up (every core for a forward pass of 50 ms per sample or more, else "
        "every core only if clearly faster than one).",
        minimum=0,
    )
    log_level: str = setting("info", "BAKE_LOG_LEVEL", "Server log level.", choices=LOG_LEVELS)
    attention_slicing: bool = setting(
        False, "BAKE_ATTENTION_SLICING", "Text-to-image: trade speed for memory in attention layers."
    )
    vae_tiling: bool = setting(False, "BAKE_VAE_TILING", "Text-to-image: decode large images tile by tile.")
    max_steps: int = setting(
        100,
        "BAKE_MAX_STEPS",
        "Text-to-image: the most denoising steps a request may ask for (422 above).",
        minimum=1,
    )
    max_image_area: int = setting(
        1024 * 1024,
        "BAKE_MAX_IMAGE_AREA",
        "Text-to-image: the largest width x height a request may ask for (422 above).",
        minimum=64,
    )
    max_images_per_prompt: int = setting(
        4,
        "BAKE_MAX_IMAGES_PER_PROMPT",
        "Text-to-image: the most images one request may ask for (never more than max_batch_size).",
        minimum=1,
    )
    default_steps: int = setting(
        0,
        "BAKE_DEFAULT_STEPS",
        "Text-to-image: steps when a request names none; 0: "
        "the pipeline's own default (sd-turbo wants 1 to 4).",
        minimum=0,
    )
    default_guidance: float | None = setting(
        None,
        "BAKE_DEFAULT_GUIDANCE",
        "Text-to-image: guidance scale "
        "when a request names none; unset: the pipeline's own default "
        "(sd-turbo wants 0).",
        minimum=0,
        optional=True,
    )

    model_name: str = setting(
        "",
        "BAKE_MODEL_NAME",
        "The model's name in the Open Inference Protocol (/v2/models/NAME) and the OpenAI API; empty: the "
        "model id's last part, lower-case.",
    )
    remote_input_hosts: str = setting(
        "",
        "BAKE_REMOTE_INPUT_HOSTS",
        "Hosts an http(s) image URL in a request may point at, comma-separated (an exact name, or *.domain "
        "for public addresses only); empty: URLs are refused.",
    )
    remote_input_timeout_s: float = setting(
        10.0,
        "BAKE_REMOTE_INPUT_TIMEOUT_S",
        "How long fetching a remote input may take, in seconds.",
        minimum=0.1,
    )
    webhook_hosts: str = setting(
        "",
        "BAKE_WEBHOOK_HOSTS",
        "Hosts Cog webhooks may go to, comma-separated; empty: any host with public addresses only.",
    )

    def __post_init__(self) -> None:
        for spec in specs(type(self)):
            spec.check(getattr(self, spec.key))
        if self.default_steps > self.max_steps:
            raise SettingsError(
                f"BAKE_DEFAULT_STEPS={self.default_steps} is above BAKE_MAX_STEPS={self.max_steps}",
                "lower the default or raise the maximum",
            )

    @property
    def worker_count(self) -> int:
        """Preprocessing threads: `workers`, or twice the CPU count when it is 0."""
        return self.workers or 2 * max(1, os.cpu_count() or 1)

    @classmethod
    def from_environment(cls: type[SettingsT], environ: Mapping[str, str], **values: Any) -> SettingsT:
        """Settings from the variables in `environ` (missing or blank: the default), over `values`."""
        read = {
            spec.key: spec.parse(environ.get(spec.env, "")) for spec in specs(cls) if spec.key not in values
        }
        return cls(**read, **values)

    def environment(self) -> dict[str, str]:
        """These settings as the runtime's variables (unset and empty ones left out)."""
        result = {}
        for spec in specs(ServeSettings):
            value = getattr(self, spec.key)
            if value is not None and value != "":
                result[spec.env] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return result


@dataclass(frozen=True, kw_only=True)
class Settings(ServeSettings):
    """Everything `python -m serve` is configured with. `Settings.from_env()` reads it at start-up."""

    model: str
    """`BAKE_MODEL`: a Hugging Face model id (resolved in the HF cache) or a local directory."""
    revision: str = setting("main", "BAKE_REVISION", "Branch, tag or commit sha of the model.")
    task: str | None = setting(
        None, "BAKE_TASK", "The serving task; unset: detected from the model's files.", optional=True
    )
    device: str = setting(
        "auto", "BAKE_DEVICE", "auto, cpu, cuda or cuda:N.", choices=DEVICES, cuda_index=True
    )
    api_key: str | None = field(default=None, repr=False)
    """`BAKE_API_KEY`: when set, every route but /health and /ready needs `Authorization: Bearer <key>`."""
    host: str = setting("0.0.0.0", "BAKE_HOST", "The address to bind.")
    compiled: str = setting(
        image.COMPILED,
        "BAKE_COMPILED",
        "Directory of the forward pass compiled at build time; served when it was made for this model, "
        "device and torch (else the model loads with transformers).",
    )
    offline: bool = False
    """`HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE`: never touch the network to find the model."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default: `os.environ`), every value validated."""
        env = os.environ if environ is None else environ
        model = env.get(MODEL_ENV, "").strip()
        if not model:
            raise SettingsError(
                f"{MODEL_ENV} is not set", "give a Hugging Face model id or a local model directory"
            )
        offline = any(parse_flag(env[name], name) for name in OFFLINE_ENV if env.get(name, "").strip())
        return cls.from_environment(env, model=model, api_key=env.get(API_KEY_ENV) or None, offline=offline)


MODEL_ENV = "BAKE_MODEL"
API_KEY_ENV = "BAKE_API_KEY"
OFFLINE_ENV: Mapping[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""Set in every image (and every Machine and Pod bake deploys): the runtime never reaches for the Hub."""


@functools.cache
def specs(cls: type[ServeSettings]) -> tuple[Spec, ...]:
    """The settings of `cls` that are read from a variable, in field order."""
    found = []
    for item in dataclasses.fields(cls):
        if _SPEC_KEY not in item.metadata:
            continue
        env, help_text, options = item.metadata[_SPEC_KEY]
        kind = str(item.type).removesuffix(" | None")
        found.append(Spec(key=item.name, env=env, kind=kind, default=item.default, help=help_text, **options))
    return tuple(found)


def api_keys(value: str | None) -> tuple[str, ...]:
    """The keys in a `BAKE_API_KEY` value: several may be given, separated by commas (key rotation)."""
    return tuple(key.strip() for key in (value or "").split(",") if key.strip())


def env_name(key: str) -> str:
    """The variable of the setting `key` (a field of `Settings`), e.g. "idle_timeout_s" ->
    BAKE_IDLE_TIMEOUT_S."""
    return next(spec.env for spec in specs(Settings) if spec.key == key)


def _is_cuda_index(value: str) -> bool:
    return value.startswith("cuda:") and value[5:].isdigit()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
