"""Every setting bake has, described once: its bake.toml key, its CLI flag, its environment variable.

The CLI's options, `bake init`'s commented bake.toml and the precedence merge (flags > environment >
bake.toml > defaults, in `bake.config`) are all generated from `OPTIONS`, so a setting cannot exist in
one place and be missing in another. The `[serve]` table is the image's runtime settings, generated from
`serve.contract.settings` (names, defaults, accepted values, help): a host variable such as
BAKE_MAX_BATCH_SIZE means the same thing as inside the image. Where a name would mean something else on the
host, the host reads another one: BAKE_PORT (not the generic PORT) for the image's port, BAKE_BUILD_DEVICE
(cpu or cuda) for what the image is built for (the image's own BAKE_DEVICE also takes auto and cuda:N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from serve.contract.settings import BUILD_DEVICES, ServeSettings, Spec, specs
from serve.contract.tasks import TASKS

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
    spec: Spec | None = None
    """For `[serve]` settings: the runtime's own description, which also checks values."""

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


_MODEL_AND_BUILD: tuple[Option, ...] = (
    # [model]
    Option(
        "model",
        "id",
        "str",
        "",
        "Hugging Face model id (org/name) or a local model directory.",
        env="BAKE_MODEL",
        flag="--model",
    ),
    Option(
        "model",
        "revision",
        "str",
        "main",
        "Branch, tag or commit sha; resolved to a commit sha before building.",
        env="BAKE_REVISION",
    ),
    Option(
        "model",
        "task",
        "str",
        "",
        "Serving task; empty: detected from the model's config.",
        choices=("", *TASKS),
        env="BAKE_TASK",
    ),
    # [build]
    Option(
        "build",
        "device",
        "str",
        "cpu",
        "Device the image is built for: cpu (slim base, CPU torch) or cuda.",
        choices=BUILD_DEVICES,
        env="BAKE_BUILD_DEVICE",
    ),
    Option(
        "build",
        "base_image",
        "str",
        "",
        "Base image with python3 >= 3.10 and venv/pip; empty: the device default.",
        env="BAKE_BASE_IMAGE",
    ),
    Option(
        "build",
        "tag",
        "str",
        "",
        "Image reference to tag; empty: bake/<model name>:<short sha>.",
        env="BAKE_TAG",
    ),
    Option(
        "build",
        "platform",
        "str",
        "",
        "Target platform, e.g. linux/amd64; empty: the engine's.",
        env="BAKE_PLATFORM",
    ),
    Option(
        "build",
        "ca_cert",
        "str",
        "",
        "PEM bundle trusted by the install and download steps (not kept in the image).",
        env="BAKE_CA_CERT",
    ),
    Option(
        "build",
        "pip_index_url",
        "str",
        "",
        "Python package index for the image's packages (a mirror).",
        env="BAKE_PIP_INDEX_URL",
    ),
    Option(
        "build",
        "pip_extra_index_url",
        "list",
        [],
        "Extra package indexes, searched after the main one.",
        env="BAKE_PIP_EXTRA_INDEX_URL",
    ),
    Option(
        "build",
        "pip_find_links",
        "str",
        "",
        "Local directory of wheels, mounted into the dependency stage only.",
        env="BAKE_PIP_FIND_LINKS",
    ),
    Option(
        "build",
        "torch_version",
        "str",
        "",
        "torch version for the image, e.g. 2.13.0; empty: the tested one (CPU) or the base image's own torch"
        " (CUDA).",
        env="BAKE_TORCH_VERSION",
    ),
    Option(
        "build",
        "torch_index_url",
        "str",
        "",
        "Index of PyTorch's CPU wheels (a mirror of download.pytorch.org/whl/cpu) for a CPU image's torch;"
        " a torch wheel in --pip-find-links wins.",
        env="BAKE_TORCH_INDEX_URL",
    ),
    Option(
        "build",
        "installer",
        "str",
        "uv",
        "Installer of the image's packages: uv, or pip for an index without uv.",
        choices=("uv", "pip"),
        env="BAKE_INSTALLER",
    ),
    Option(
        "build",
        "keep_build_tools",
        "bool",
        False,
        "Keep pip, setuptools, torch's headers and tests in the image (not slimmed).",
        env="BAKE_KEEP_BUILD_TOOLS",
    ),
    Option(
        "build",
        "compile",
        "bool",
        True,
        "Compile the forward pass at build time (TorchScript; CPU image classification), so the image "
        "starts without transformers; --no-compile loads the model with transformers at start.",
        env="BAKE_COMPILE",
    ),
    Option("build", "push", "bool", False, "Push the image to its registry after building.", env="BAKE_PUSH"),
)
_SERVE: tuple[Option, ...] = tuple(
    Option(
        "serve",
        spec.key,
        spec.kind,
        spec.default,
        spec.help,
        choices=spec.choices,
        env=spec.host_variable,
        spec=spec,
    )
    for spec in specs(ServeSettings)
)
"""The `[serve]` table: every setting an image carries, as the runtime describes it."""
_LAUNCH: tuple[Option, ...] = (
    # [launch]
    Option(
        "launch",
        "target",
        "str",
        "local",
        "Where `bake launch` runs the image.",
        choices=("local", "docker", "fly", "kubernetes"),
        env="BAKE_TARGET",
    ),
    Option(
        "launch", "name", "str", "", "Container / app name; empty: derived from the model.", env="BAKE_NAME"
    ),
    Option("launch", "host_port", "int", 8080, "Port published on the container host.", env="BAKE_HOST_PORT"),
    Option(
        "launch",
        "docker_host",
        "str",
        "",
        "Remote Docker engine for the docker target (ssh://user@box, tcp://...).",
        flag="--host",
    ),
    Option(
        "launch",
        "registry",
        "str",
        "",
        "Registry to push to before a remote launch; empty: stream the image.",
        env="BAKE_REGISTRY",
    ),
    Option(
        "launch",
        "ready_timeout_s",
        "float",
        600.0,
        "How long launch waits for /ready.",
        env="BAKE_READY_TIMEOUT_S",
    ),
    Option("launch", "fly_region", "str", "iad", "Fly.io primary region.", env="BAKE_FLY_REGION"),
    Option(
        "launch",
        "fly_api_url",
        "str",
        "https://api.machines.dev/v1",
        "Fly Machines API endpoint (inside Fly's network: http://_api.internal:4280/v1).",
        env="BAKE_FLY_API_URL",
    ),
)


OPTIONS: tuple[Option, ...] = _MODEL_AND_BUILD + _SERVE + _LAUNCH


def options_for(section: str) -> tuple[Option, ...]:
    """The options of one bake.toml table."""
    return tuple(option for option in OPTIONS if option.section == section)


def find(name: str) -> Option:
    """The option called `section.key`."""
    return next(option for option in OPTIONS if option.name == name)
