"""`bake init`: a commented bake.toml with every setting, its default, its flag and its variable."""

from __future__ import annotations

from pathlib import Path

import tomlkit

from bake.errors import ConfigError
from bake.options import OPTIONS, Option

_HEADER = """\
# bake.toml: settings for `bake build` and `bake launch`.
# Precedence: command-line flags > environment variables > this file > defaults.
# Every setting is listed with its default, commented out; uncomment a line to change it.
"""

_SECTION_HELP = {
    "model": "Which model to bake.",
    "build": "How the image is built (BuildKit, multi-stage: deps -> weights -> runtime).",
    "serve": "Runtime settings, baked into the image as environment variables (override them at launch).",
    "launch": "Where `bake launch` runs the image.",
}


def render_config(values: dict[str, object] | None = None) -> str:
    """The text of a commented bake.toml; `values` ("section.key" -> value) are written uncommented."""
    values = values or {}
    lines = [_HEADER.rstrip("\n")]
    section = None
    for option in OPTIONS:
        if option.section != section:
            section = option.section
            lines += ["", f"[{section}]", f"# {_SECTION_HELP[section]}"]
        lines.append(f"# {option.help} ({_origin(option)})")
        if option.name in values:
            lines.append(f"{option.key} = {_toml_value(values[option.name])}")
        else:
            lines.append(f"# {option.key} = {_toml_value(option.default)}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, values: dict[str, object] | None = None, *, force: bool = False) -> None:
    """Write `render_config(values)` to `path`, refusing to overwrite unless `force`."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", "edit it, or pass --force to overwrite it")
    try:
        path.write_text(render_config(values), encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"cannot write {path} ({error.strerror})", "pass --path with a writable place"
        ) from None


def _origin(option: Option) -> str:
    parts = [f"flag {option.cli_flag}"]
    if option.env:
        parts.append(f"env {option.env}")
    if option.choices:
        parts.append("one of " + " | ".join(choice or '""' for choice in option.choices))
    return "; ".join(parts)


def _toml_value(value: object) -> str:
    if value is None:
        return '""'  # an optional setting left unset: the empty string reads as "not set"
    return tomlkit.item(list(value) if isinstance(value, tuple) else value).as_string()
