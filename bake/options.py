"""Every setting bake has, described once: its bake.toml key, its CLI flag, its environment variable.

The CLI's options, `bake init`'s commented bake.toml and the precedence merge (flags > environment >
bake.toml > defaults, in `bake.config`) are all generated from `OPTIONS`, so a setting cannot exist in
one place and be missing in another. Serve settings use the runtime's own variable names (BAKE_MAX_BATCH_SIZE,
...), so a variable means the same thing on the host and inside the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "int", "float", "bool", "list"]


@dataclass(frozen=True)
class Option:
    """One setting."""

    section: str
    """The bake.toml table: model, build, serve or launch."""
    key: str
    """The key inside the table."""
    kind: Kind
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    env: str | None = None
    """The environment variable that sets it (None: not settable from the environment)."""
    flag: str | None = None
    """The CLI flag (None: derived from the key, e.g. base_image -> --base-image)."""

    @property
    def name(self) -> str:
        """`section.key`, how errors refer to the setting."""
        return f"{self.section}.{self.key}"

    @property
    def cli_flag(self) -> str:
        """The command-line flag."""
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def dest(self) -> str:
        """The click parameter name."""
        return self.cli_flag.removeprefix("--").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    # [model]
    Option("model", "id", "str", "", "Hugging Face model id (org/name) or a local model directory.",
           env="BAKE_MODEL", flag="--model"),
    Option("model", "revision", "str", "main", "Branch, tag or commit sha; resolved to a commit sha before building.",
           env="BAKE_REVISION"),
    Option("model", "task", "str", "", "Serving task; empty: detected from the model's config.",
           choices=("", "image-classification", "text-to-image"), env="BAKE_TASK"),
    # [build]
    Option("build", "device", "str", "cpu", "Device the image is built for: cpu (slim base, CPU torch) or cuda.",
           choices=("cpu", "cuda"), env="BAKE_DEVICE"),
    Option("build", "base_image", "str", "", "Base image with python3 >= 3.10 and venv/pip; empty: the device default.",
           env="BAKE_BASE_IMAGE"),
    Option("build", "tag", "str", "", "Image reference to tag; empty: bake/<model name>:<short sha>.", env="BAKE_TAG"),
    Option("build", "platform", "str", "", "Target platform, e.g. linux/amd64; empty: the engine's.",
           env="BAKE_PLATFORM"),
    Option("build", "ca_cert", "str", "", "PEM bundle trusted by the install and download steps (not kept "
           "in the image).", env="BAKE_CA_CERT"),
    Option("build", "pip_index_url", "str", "", "Python package index for the image's packages (a mirror).",
           env="BAKE_PIP_INDEX_URL"),
    Option("build", "pip_extra_index_url", "list", [], "Extra package indexes, searched after the main one.",
           env="BAKE_PIP_EXTRA_INDEX_URL"),
    Option("build", "pip_find_links", "str", "", "Local directory of wheels, mounted into the dependency stage only.",
           env="BAKE_PIP_FIND_LINKS"),
    Option("build", "torch_version", "str", "", "torch version for the image, e.g. 2.13.0; empty: the "
           "tested one (CPU) or the base image's own torch (CUDA).", env="BAKE_TORCH_VERSION"),
    Option("build", "torch_index_url", "str", "", "Index of PyTorch's CPU wheels (a mirror of "
           "download.pytorch.org/whl/cpu) for a CPU image's torch; a torch wheel in --pip-find-links wins.",
           env="BAKE_TORCH_INDEX_URL"),
    Option("build", "installer", "str", "uv", "Installer of the image's packages: uv, or pip for an index "
           "without uv.", choices=("uv", "pip"), env="BAKE_INSTALLER"),
    Option("build", "keep_build_tools", "bool", False, "Keep pip, setuptools, torch's headers and tests "
           "in the image (not slimmed).", env="BAKE_KEEP_BUILD_TOOLS"),
    Option("build", "push", "bool", False, "Push the image to its registry after building.", env="BAKE_PUSH"),
    # [serve]
    Option("serve", "dtype", "str", "auto", "Compute dtype: auto (float16 on CUDA, float32 on CPU), float32, "
           "float16 or bfloat16.", choices=("auto", "float32", "float16", "bfloat16"), env="BAKE_DTYPE"),
    Option("serve", "max_batch_size", "int", 8, "Largest batch run on the device.", env="BAKE_MAX_BATCH_SIZE"),
    Option("serve", "max_wait_ms", "float", 10.0, "How long the first queued request waits for batch-mates.",
           env="BAKE_MAX_WAIT_MS"),
    Option("serve", "max_queue", "int", 256, "Requests waiting beyond this are refused with 503.",
           env="BAKE_MAX_QUEUE"),
    Option("serve", "timeout_s", "float", 30.0, "Per-request deadline in seconds (504 past it).", env="BAKE_TIMEOUT_S"),
    Option("serve", "idle_timeout_s", "float", 0.0, "Exit after this many idle seconds (0: never); the host "
           "restarts it on demand.", env="BAKE_IDLE_TIMEOUT_S"),
    Option("serve", "drain_timeout_s", "float", 30.0, "On SIGTERM, seconds in-flight requests get to finish.",
           env="BAKE_DRAIN_TIMEOUT_S"),
    Option("serve", "port", "int", 8080, "Port the server listens on inside the container.", env="PORT"),
    Option("serve", "jpeg_draft", "bool", False, "Decode big JPEGs at reduced size (faster; pixels within 2 steps).",
           env="BAKE_JPEG_DRAFT"),
    # [launch]
    Option("launch", "target", "str", "local", "Where `bake launch` runs the image.",
           choices=("local", "docker", "fly", "kubernetes"), env="BAKE_TARGET"),
    Option("launch", "name", "str", "", "Container / app name; empty: derived from the model.", env="BAKE_NAME"),
    Option("launch", "host_port", "int", 8080, "Port published on the container host.", env="BAKE_HOST_PORT"),
    Option("launch", "docker_host", "str", "", "Remote Docker engine for the docker target (ssh://user@box, tcp://...).",
           flag="--host"),
    Option("launch", "registry", "str", "", "Registry to push to before a remote launch; empty: stream the image.",
           env="BAKE_REGISTRY"),
    Option("launch", "ready_timeout_s", "float", 600.0, "How long launch waits for /ready.",
           env="BAKE_READY_TIMEOUT_S"),
    Option("launch", "fly_region", "str", "iad", "Fly.io primary region.", env="BAKE_FLY_REGION"),
    Option("launch", "fly_api_url", "str", "https://api.machines.dev/v1", "Fly Machines API endpoint (inside Fly's "
           "network: http://_api.internal:4280/v1).", env="BAKE_FLY_API_URL"),
)


def options_for(section: str) -> tuple[Option, ...]:
    """The options of one bake.toml table."""
    return tuple(option for option in OPTIONS if option.section == section)


def find(name: str) -> Option:
    """The option called `section.key`."""
    return next(option for option in OPTIONS if option.name == name)
