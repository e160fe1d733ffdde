"""Merging flags > environment > bake.toml > defaults into one immutable configuration, once.

Every value and every combination is checked here, before any command does any work (as LitServe's server
checks its arguments in its constructor): the dataclasses' `__post_init__` checks what each part says on its
own, `check_build` what a build needs of the machine (files that must exist). Errors are `ConfigError` or
the contract's `SettingsError` (both exit 2), naming the flag, variable or key at fault.

Relative paths in bake.toml are relative to the file; relative paths from flags and the environment are
relative to the working directory.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from bake.env import Environment
from bake.errors import ConfigError, ModelNotFound
from bake.launch.names import check_name
from bake.options import OPTIONS, Option, options_for
from serve.contract.errors import SettingsError, require
from serve.contract.settings import ServeSettings, parse_flag

CONFIG_FILE = "bake.toml"
ServeSpec = ServeSettings
"""The runtime's settings baked into the image: the contract's own type, read back from an image's labels
by `bake.labels.ImageFacts` with the same parser."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model, at which revision, for which task."""

    id: str
    revision: str
    task: str | None

    @property
    def local_dir(self) -> Path | None:
        """The model directory when `id` names one, else None (a hub id)."""
        path = Path(self.id).expanduser()
        return path if path.is_dir() else None


@dataclass(frozen=True)
class BuildSpec:
    """How the image is built."""

    device: str
    base_image: str
    tag: str
    platform: str
    ca_cert: Path | None
    pip_index_url: str
    pip_extra_index_urls: tuple[str, ...]
    pip_find_links: Path | None
    torch_version: str
    torch_index_url: str
    installer: str
    keep_build_tools: bool
    compile: bool
    """Compile the forward pass in a build stage (where the model and device allow it)."""
    push: bool

    def __post_init__(self) -> None:
        require(
            ConfigError,
            self.tag != "" or not self.push,
            "--push needs to know where to push",
            "pass --tag REGISTRY/NAME:TAG",
        )


@dataclass(frozen=True)
class LaunchSpec:
    """Where and how `bake launch` runs the image."""

    target: str
    name: str
    host_port: int
    docker_host: str
    registry: str
    ready_timeout_s: float
    fly_region: str
    fly_api_url: str

    def __post_init__(self) -> None:
        require(
            ConfigError,
            0 < self.host_port < 65536,
            f"--host-port {self.host_port} is not a TCP port",
            "use a port between 1 and 65535",
        )
        require(
            ConfigError,
            len(self.fly_region) == 3 and self.fly_region.isalpha() and self.fly_region.islower(),
            f"invalid Fly region {self.fly_region!r}",
            "use a three-letter region code such as iad, ams or sin",
        )
        if self.name:
            check_name(self.name, self.target)


@dataclass(frozen=True)
class Config:
    """Everything bake was told, merged and validated."""

    model: ModelSpec
    build: BuildSpec
    serve: ServeSpec
    launch: LaunchSpec
    file: Path | None
    """The bake.toml that was read, if any."""


def load_config(flags: Mapping[str, Any], env: Environment, config_file: Path | None = None) -> Config:
    """Merge `flags` (None means not given) over `env` over the bake.toml over defaults.

    `config_file` None means ./bake.toml if it exists. Raises `ConfigError` naming the setting at fault.
    """
    path = config_file if config_file is not None else Path(CONFIG_FILE)
    if config_file is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "create it with `bake init` or fix the path")
    table = _read_toml(path) if path.is_file() else {}
    base_dir = path.resolve().parent if path.is_file() else Path.cwd()
    values: dict[str, dict[str, Any]] = {}
    try:
        for option in OPTIONS:
            value, origin = _pick(option, flags, env, table)
            value = _convert(option, value, origin)
            if origin == "file" and value and option.name in _PATHS_IN_FILE:
                value = _relative_to(base_dir, value, must_be_dir=option.name == "model.id")
            values.setdefault(option.section, {})[option.key] = value
        return _build(values, path if path.is_file() else None)
    except SettingsError as error:  # the runtime's own checks of a [serve] value: a bad setting all the same
        raise ConfigError(error.message, error.fix) from None


_PATHS_IN_FILE = {"build.ca_cert", "build.pip_find_links", "model.id"}
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_PROBE_BYTES = 1 << 20
"""How much of a CA bundle is searched for its first certificate (bundles start with comments, at most)."""


def _relative_to(base_dir: Path, value: str, *, must_be_dir: bool) -> str:
    """A bake.toml path made absolute against the file's directory (a model id only if that is a
    directory)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return value
    candidate = base_dir / path
    if must_be_dir and not candidate.is_dir():
        return value
    return str(candidate.resolve())


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    except OSError as error:
        raise ConfigError(
            f"cannot read {path}: {error.strerror or error}", "check the path and its permissions"
        ) from None
    except (TOMLKitError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"cannot read {path}: {error}", "fix the TOML syntax or regenerate it with `bake init`"
        ) from None
    known = sorted({option.section for option in OPTIONS})
    for section, content in document.items():
        if section not in known:
            raise ConfigError(f"{path}: unknown table [{section}]", _did_you_mean(section, known))
        if not isinstance(content, dict):
            raise ConfigError(
                f"{path}: {section} = {content!r} is not a table", f"write its settings under [{section}]"
            )
        keys = sorted(option.key for option in options_for(section))
        for key in content:
            if key not in keys:
                raise ConfigError(f"{path}: unknown key {section}.{key}", _did_you_mean(key, keys))
    return document


def _did_you_mean(word: str, known: list[str]) -> str:
    """ "did you mean X?" when a known word is close (difflib), else the list of known words."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return f"use one of {', '.join(known)}"


def _pick(
    option: Option, flags: Mapping[str, Any], env: Environment, table: Mapping[str, Any]
) -> tuple[Any, str]:
    flag = flags.get(option.dest)
    if flag is not None and flag != () and flag != []:
        return flag, "flag"
    if option.env and env.variables.get(option.env, "").strip():
        return env.variables[option.env].strip(), "env"
    section = table.get(option.section, {})
    if option.key in section:
        return section[option.key], "file"
    return option.default, "default"


def _convert(option: Option, value: Any, origin: str) -> Any:
    where = {"flag": option.cli_flag, "env": option.env, "file": option.name, "default": option.name}[origin]
    if option.spec is not None:
        return option.spec.parse(value, where) if isinstance(value, str) else option.spec.check(value, where)
    try:
        converted = _as_kind(option, value, from_text=origin == "env")
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={value!r} is not a valid {option.kind}", option.help) from None
    if option.choices and converted not in option.choices:
        raise ConfigError(
            f"{where}={converted!r} is not one of: {', '.join(c or '(empty)' for c in option.choices)}"
        )
    if option.kind in ("int", "float") and converted < 0:
        raise ConfigError(f"{where}={converted} must not be negative")
    return converted


def _as_kind(option: Option, value: Any, *, from_text: bool) -> Any:
    kind = option.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_flag(value, option.name)
        raise ValueError(value)
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not from_text):
            raise TypeError(value)
        return int(value)
    if kind == "float":
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    if kind == "list":
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise TypeError(value)
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _build(values: dict[str, dict[str, Any]], file: Path | None) -> Config:
    model, build, serve, launch = (values[name] for name in ("model", "build", "serve", "launch"))
    return Config(
        model=ModelSpec(id=model["id"], revision=model["revision"] or "main", task=model["task"] or None),
        build=BuildSpec(
            device=build["device"],
            base_image=build["base_image"],
            tag=build["tag"],
            platform=build["platform"],
            ca_cert=Path(build["ca_cert"]).expanduser() if build["ca_cert"] else None,
            pip_index_url=build["pip_index_url"],
            pip_extra_index_urls=build["pip_extra_index_url"],
            pip_find_links=Path(build["pip_find_links"]).expanduser() if build["pip_find_links"] else None,
            torch_version=build["torch_version"],
            torch_index_url=build["torch_index_url"],
            installer=build["installer"],
            keep_build_tools=build["keep_build_tools"],
            compile=build["compile"],
            push=build["push"],
        ),
        serve=ServeSettings(**serve),
        launch=LaunchSpec(**launch),
        file=file,
    )


def check_build(config: Config) -> None:
    """What `bake build` needs beyond valid settings: a model, and the files the settings name."""
    build = config.build
    require(
        ModelNotFound,
        config.model.id != "",
        "no model given",
        "pass --model ORG/NAME (or a directory), or set model.id in bake.toml",
    )
    require(
        ConfigError,
        config.model.local_dir is not None or not config.model.id.startswith((".", "/", "~")),
        f"--model {config.model.id} is not a directory",
        "pass the directory of a saved model, or a Hub id ORG/NAME",
    )
    if build.ca_cert is not None:
        _check_ca_bundle(build.ca_cert)
    require(
        ConfigError,
        build.pip_find_links is None or build.pip_find_links.is_dir(),
        f"--pip-find-links {build.pip_find_links} is not a directory",
        "pass a directory of wheels",
    )


def _check_ca_bundle(path: Path) -> None:
    """`ConfigError` unless `path` is a readable file holding at least one PEM certificate."""
    require(ConfigError, path.is_file(), f"--ca-cert {path} is not a file", "pass a PEM bundle")
    try:
        with path.open("rb") as handle:
            head = handle.read(_PEM_PROBE_BYTES)
    except OSError as error:
        raise ConfigError(
            f"--ca-cert {path} cannot be read: {error.strerror or error}",
            "make it readable by this user, or pass another PEM bundle",
        ) from None
    require(
        ConfigError,
        _PEM_CERTIFICATE in head,
        f"--ca-cert {path} holds no PEM certificate",
        "pass a bundle of '-----BEGIN CERTIFICATE-----' blocks (e.g. /etc/ssl/certs/ca-certificates.crt)",
    )
