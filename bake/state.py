"""What bake remembers between commands in a project directory: the image the last build produced and the
endpoint the last launch started.

So `bake build` then `bake launch` (no argument) launches what was just built, and `bake bench` (no
argument) measures what was just launched. Kept in `.bake/state.json` next to bake.toml (or in the working
directory); each command updates its own entry and keeps the others.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

STATE_FILE = Path(".bake") / "state.json"
logger = logging.getLogger("bake")


def record_build(directory: Path, tag: str, model: str) -> None:
    """Remember `tag` as the last image built in `directory`."""
    _update(directory, "last_build", {"tag": tag, "model": model})


def last_built_tag(directory: Path) -> str | None:
    """The tag of the last image built in `directory`, if any."""
    return _read(directory, "last_build", "tag")


def record_launch(directory: Path, url: str, target: str) -> None:
    """Remember `url` as the endpoint the last `bake launch` in `directory` started (on `target`)."""
    _update(directory, "last_launch", {"url": url, "target": target})


def last_launch_url(directory: Path) -> str | None:
    """The URL of the endpoint the last `bake launch` in `directory` started, if any."""
    return _read(directory, "last_launch", "url")


def _load(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _update(directory: Path, entry: str, value: dict[str, str]) -> None:
    """Record `value`; a directory bake cannot write to only costs the memory, with a warning."""
    state = _load(directory)
    state[entry] = value
    path = directory / STATE_FILE
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(state, indent=2) + "\n")
    except OSError as error:
        logger.warning(
            "cannot remember the %s in %s (%s): name it on the next command instead",
            entry.replace("_", " "),
            path,
            error.strerror or error,
        )


def _read(directory: Path, entry: str, key: str) -> str | None:
    value = _load(directory).get(entry)
    found = value.get(key) if isinstance(value, dict) else None
    return found if isinstance(found, str) and found else None
