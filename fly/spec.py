"""What bake knows about an image, as Fly needs it, and the numbers derived from it.

`FlyServiceSpec` is the one input of this package: fly.toml (module `fly.toml`) and the Machines API config
(`fly.machines.machine_config`) are both rendered from it through the pure functions below, so the two
deploy paths ask Fly for the same thing.

How the numbers are chosen:

- Concurrency (`concurrency_limits`): counted in requests, soft limit = one full batch, hard limit =
  batch + queue bound. See the function's docstring for why.
- Machine size (`vm_size`): memory = 2 x the weights + 1 GiB for Python, torch and activations, rounded up
  to Fly's 256 MB step, on the smallest CPU preset whose memory range holds it (shared-cpu first: up to
  2 GB per shared CPU; then performance: 2 to 8 GB per CPU).
- Health check (`check_grace_period_s`): `/ready` answers only after the warm-up, so its grace period is
  the measured warm-up x 1.5 + 10 s.
- Shutdown (`kill_timeout_s`): Fly sends SIGTERM, which the server answers by draining for
  `BAKE_DRAIN_TIMEOUT_S`; Fly waits the drain + 5 s before SIGKILL, at most 300 s (Fly's limit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fly.errors import FlyConfigError, FlyGpuUnsupported
from serve.contract.errors import require
from serve.contract.settings import BUILD_DEVICES, OFFLINE_ENV

AUTO_STOP_CHOICES = ("off", "stop", "suspend")
CPU_KINDS = ("shared", "performance")
CPU_COUNTS: Mapping[str, tuple[int, ...]] = {"shared": (1, 2, 4, 8), "performance": (1, 2, 4, 8, 16)}
"""The CPU counts of Fly's presets (`shared-cpu-1x` ... `performance-16x`), as fly.schema.json lists them."""
MEMORY_PER_CPU_MB: Mapping[str, tuple[int, int]] = {"shared": (256, 2048), "performance": (2048, 8192)}
"""Fly's memory range per CPU, (min, max) in MB."""
MEMORY_STEP_MB = 256
"""Fly Machine memory is a multiple of 256 MB."""
WEIGHTS_FACTOR = 2.0
"""Peak resident memory per byte of weights: the parameters, plus a second copy while loading and while
TorchScript freezes the traced forward pass."""
RUNTIME_HEADROOM_MB = 1024
"""Python, torch, the HTTP server, the preprocessing pool and activations."""
SUSPEND_MAX_MEMORY_MB = 2048
"""Fly can suspend (rather than stop) only Machines with at most 2 GB of memory."""

KILL_SIGNAL = "SIGTERM"
"""The signal the server drains on (Fly's default, SIGINT, is not it)."""
KILL_MARGIN_S = 5
KILL_TIMEOUT_MAX_S = 300
GRACE_FACTOR = 1.5
GRACE_MARGIN_S = 10
CHECK_INTERVAL = "15s"
CHECK_TIMEOUT = "5s"

GPU_END_DATE = "2026-08-01"
GPU_TARGETS_FIX = (
    "serve it on a GPU host instead: `bake launch --target local` on this machine, "
    "`bake launch --target docker --host ssh://gpu-box` on a remote Docker engine, or "
    "`bake launch --target kubernetes`; or rebuild with `--device cpu` to deploy on Fly"
)

APP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
"""Fly app names (the app answers at https://<name>.fly.dev)."""
_REGION = re.compile(r"^[a-z]{3}$")


@dataclass(frozen=True)
class FlyServiceSpec:
    """A built image and how it serves, as bake knows it; every Fly setting is derived from this.

    Overrides (`auto_stop`, `auto_start`, `min_machines_running`, `cpu_kind`, `cpus`, `memory_mb`) replace
    what would be derived; `None` means "derive it". Invalid values raise `FlyConfigError` here, except a
    GPU request, which is a valid spec that `check_no_gpu` refuses for Fly.
    """

    app: str
    """Fly app name; the service answers at https://<app>.fly.dev."""
    image: str
    """Full image reference, e.g. `bake/resnet-50:3f2a...` or `registry.fly.io/<app>:<tag>`."""
    max_batch_size: int
    """`BAKE_MAX_BATCH_SIZE` of the image."""
    max_queue: int
    """`BAKE_MAX_QUEUE` of the image."""
    warmup_seconds: float
    """Measured time from container start to `/ready` answering 200."""
    drain_seconds: float
    """`BAKE_DRAIN_TIMEOUT_S` of the image: how long the server drains after SIGTERM."""
    weights_bytes: int
    """Size of the weights baked into the image."""
    device: str = "cpu"
    """`cpu` or `cuda`: what the image was built for."""
    primary_region: str = "iad"
    org: str = "personal"
    """Fly organization slug the app is created in when it does not exist yet."""
    internal_port: int = 8080
    env: Mapping[str, str] = field(default_factory=dict)
    """Runtime settings for the Machine; the offline flags and PORT are always added."""
    gpu_kind: str | None = None
    auto_stop: str = "stop"
    auto_start: bool = True
    min_machines_running: int = 0
    cpu_kind: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        require(
            FlyConfigError,
            APP_NAME.match(self.app) is not None,
            f"invalid Fly app name {self.app!r}",
            "use 1-63 lowercase letters, digits and dashes, starting and ending with a letter or digit",
        )
        require(
            FlyConfigError,
            bool(self.image.strip()),
            "the image reference is empty",
            "pass the image bake built",
        )
        require(
            FlyConfigError,
            _REGION.match(self.primary_region) is not None,
            f"invalid Fly region {self.primary_region!r}",
            "use a three-letter region code such as iad, ams or sin (fly platform regions)",
        )
        require(
            FlyConfigError,
            bool(self.org.strip()),
            "the Fly organization slug is empty",
            "use 'personal' or your org's slug",
        )
        require(
            FlyConfigError,
            1 <= self.internal_port <= 65535,
            f"internal_port {self.internal_port} is not a TCP port",
            "use a port between 1 and 65535",
        )
        require(
            FlyConfigError,
            self.max_batch_size >= 1,
            f"max_batch_size is {self.max_batch_size}",
            "use 1 or more",
        )
        require(FlyConfigError, self.max_queue >= 1, f"max_queue is {self.max_queue}", "use 1 or more")
        require(
            FlyConfigError,
            self.warmup_seconds >= 0,
            f"warmup_seconds is {self.warmup_seconds}",
            "use 0 or more",
        )
        require(
            FlyConfigError, self.drain_seconds >= 0, f"drain_seconds is {self.drain_seconds}", "use 0 or more"
        )
        require(
            FlyConfigError, self.weights_bytes >= 0, f"weights_bytes is {self.weights_bytes}", "use 0 or more"
        )
        require(
            FlyConfigError,
            self.device in BUILD_DEVICES,
            f"device {self.device!r} is not one of {', '.join(BUILD_DEVICES)}",
            "build the image for cpu or cuda",
        )
        require(
            FlyConfigError,
            self.auto_stop in AUTO_STOP_CHOICES,
            f"auto_stop {self.auto_stop!r} is not one of {', '.join(AUTO_STOP_CHOICES)}",
            "use off, stop or suspend",
        )
        require(
            FlyConfigError,
            self.min_machines_running >= 0,
            f"min_machines_running is {self.min_machines_running}",
            "use 0 or more",
        )
        require(
            FlyConfigError,
            self.cpu_kind is None or self.cpu_kind in CPU_KINDS,
            f"cpu_kind {self.cpu_kind!r} is not one of {', '.join(CPU_KINDS)}",
            "use shared or performance",
        )
        require(
            FlyConfigError,
            self.cpus is None or self.cpus in CPU_COUNTS["performance"],
            f"cpus {self.cpus} is not a Fly CPU count",
            "use 1, 2, 4, 8 or 16",
        )
        require(
            FlyConfigError,
            self.memory_mb is None or (self.memory_mb > 0 and self.memory_mb % MEMORY_STEP_MB == 0),
            f"memory_mb {self.memory_mb} is not a multiple of {MEMORY_STEP_MB}",
            f"round it up to a multiple of {MEMORY_STEP_MB} MB",
        )
        for key, value in self.env.items():
            require(
                FlyConfigError,
                isinstance(key, str) and isinstance(value, str),
                f"env {key!r} is not a string pair",
                "give environment variables as strings",
            )
        for key, value in OFFLINE_ENV.items():
            require(
                FlyConfigError,
                self.env.get(key, value) == value,
                f"env sets {key}={self.env.get(key)!r}",
                f"leave {key} out: a bake image always runs with {key}={value}",
            )
        require(
            FlyConfigError,
            self.env.get("PORT", str(self.internal_port)) == str(self.internal_port),
            f"env sets PORT={self.env.get('PORT')!r} but internal_port is {self.internal_port}",
            "set internal_port instead of PORT",
        )


@dataclass(frozen=True)
class Concurrency:
    """Fly Proxy load limits of one Machine, in concurrent requests."""

    soft_limit: int
    hard_limit: int


@dataclass(frozen=True)
class VmSize:
    """A Fly Machine size: a CPU preset and its memory."""

    cpu_kind: str
    cpus: int
    memory_mb: int

    @property
    def preset(self) -> str:
        """The `[[vm]] size` name, e.g. `shared-cpu-2x` or `performance-4x`."""
        prefix = "shared-cpu" if self.cpu_kind == "shared" else "performance"
        return f"{prefix}-{self.cpus}x"


def check_no_gpu(spec: FlyServiceSpec) -> None:
    """Raise `FlyGpuUnsupported` when `spec` is a CUDA image or asks for a GPU: Fly has none any more."""
    if spec.gpu_kind is not None:
        raise gpu_unsupported(f"this deploy asks for a {spec.gpu_kind} GPU")
    if spec.device == "cuda":
        raise gpu_unsupported(f"{spec.image} is a CUDA image")


def gpu_unsupported(what: str) -> FlyGpuUnsupported:
    """The error for any GPU request headed for Fly; `what` says where the request came from."""
    return FlyGpuUnsupported(f"Fly.io ended GPU Machines on {GPU_END_DATE} and {what}", GPU_TARGETS_FIX)


def app_url(app: str) -> str:
    """The public URL Fly gives an app's HTTP service."""
    return f"https://{app}.fly.dev"


def runtime_env(spec: FlyServiceSpec) -> dict[str, str]:
    """The Machine's environment: the offline flags, PORT = internal_port, then the spec's own settings."""
    return {**OFFLINE_ENV, "PORT": str(spec.internal_port), **spec.env}


def concurrency_limits(spec: FlyServiceSpec) -> Concurrency:
    """Fly Proxy limits, counted in requests (each one waits for a forward pass, so connections would lie).

    Soft limit = `max_batch_size`: a Machine with a full batch in flight runs at its best throughput; past
    it Fly Proxy prefers, and auto-starts, another Machine while this one keeps serving. Hard limit =
    `max_batch_size + max_queue`: the server holds one batch on the device and `max_queue` requests
    waiting, and would answer 503 to the next; Fly Proxy stops routing there first, so clients queue at
    the edge (or reach another Machine) instead of being refused.
    """
    return Concurrency(soft_limit=spec.max_batch_size, hard_limit=spec.max_batch_size + spec.max_queue)


def estimated_memory_mb(weights_bytes: int) -> int:
    """Memory the server peaks at for `weights_bytes` of weights, rounded up to Fly's 256 MB step."""
    return _round_up(weights_bytes * WEIGHTS_FACTOR / 2**20 + RUNTIME_HEADROOM_MB, MEMORY_STEP_MB)


def minimum_memory_mb(weights_bytes: int) -> int:
    """The least memory a Machine may have: the weights once plus the runtime headroom."""
    return _round_up(weights_bytes / 2**20 + RUNTIME_HEADROOM_MB, MEMORY_STEP_MB)


def vm_size(spec: FlyServiceSpec) -> VmSize:
    """The smallest Fly Machine that holds the model, honouring the spec's cpu_kind/cpus/memory_mb overrides.

    Shared CPUs are tried before performance ones, and fewer CPUs before more. A performance preset's
    minimum memory (2 GB per CPU) raises the memory to it. Raises `FlyConfigError` when an explicit
    `memory_mb` is below `minimum_memory_mb`, when no allowed preset holds the memory, or when
    `auto_stop = "suspend"` meets a Machine larger than Fly can suspend.
    """
    floor = minimum_memory_mb(spec.weights_bytes)
    if spec.memory_mb is not None and spec.memory_mb < floor:
        raise FlyConfigError(
            f"memory_mb {spec.memory_mb} is below the {floor} MB the weights and runtime need",
            f"use at least {floor} MB, or leave memory unset to derive it",
        )
    memory = spec.memory_mb if spec.memory_mb is not None else estimated_memory_mb(spec.weights_bytes)
    size = _smallest_preset(memory, spec.cpu_kind, spec.cpus)
    if spec.auto_stop == "suspend" and size.memory_mb > SUSPEND_MAX_MEMORY_MB:
        raise FlyConfigError(
            f"auto_stop 'suspend' needs a Machine of at most {SUSPEND_MAX_MEMORY_MB} MB, "
            f"this one has {size.memory_mb} MB",
            "use auto_stop 'stop'",
        )
    return size


def check_grace_period_s(spec: FlyServiceSpec) -> int:
    """Seconds Fly waits before the first `/ready` check: the measured warm-up x 1.5 + 10 s."""
    return math.ceil(spec.warmup_seconds * GRACE_FACTOR + GRACE_MARGIN_S)


def kill_timeout_s(spec: FlyServiceSpec) -> int:
    """Seconds Fly waits after SIGTERM before SIGKILL: the server's drain + 5 s, at most Fly's 300 s."""
    return min(KILL_TIMEOUT_MAX_S, math.ceil(spec.drain_seconds + KILL_MARGIN_S))


def duration(seconds: int) -> str:
    """A duration string fly.toml and the Machines API both read unambiguously (a bare integer means
    milliseconds in a check but seconds in kill_timeout)."""
    return f"{seconds}s"


def _smallest_preset(memory: int, cpu_kind: str | None, cpus: int | None) -> VmSize:
    kinds = (cpu_kind,) if cpu_kind else CPU_KINDS
    for kind in kinds:
        low, high = MEMORY_PER_CPU_MB[kind]
        for count in (cpus,) if cpus else CPU_COUNTS[kind]:
            if count in CPU_COUNTS[kind] and memory <= high * count:
                return VmSize(kind, count, max(memory, low * count))
    raise FlyConfigError(
        f"{memory} MB does not fit a Fly Machine (cpu_kind {cpu_kind or 'any'}, cpus {cpus or 'any'})",
        "Fly allows 2048 MB per shared CPU and 8192 MB per performance CPU (up to "
        "performance-16x): raise cpus, use cpu_kind performance, or lower memory_mb",
    )


def _round_up(value: float, step: int) -> int:
    return max(step, math.ceil(value / step) * step)
