"""What bake remembers between commands in a project directory: the image the last build produced.

So `bake build` then `bake launch` (no argument) launches what was just built. Kept in `.bake/state.json`
next to bake.toml (or in the working directory).
"""

from __future__ import annotations

import json
from pathlib import Path

STATE_FILE = Path(".bake") / "state.json"


def record_build(directory: Path, tag: str, model: str) -> None:
    """Remember `tag` as the last image built in `directory`."""
    path = directory / STATE_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"last_build": {"tag": tag, "model": model}}, indent=2) + "\n")


def last_built_tag(directory: Path) -> str | None:
    """The tag of the last image built in `directory`, if any."""
    path = directory / STATE_FILE
    try:
        return json.loads(path.read_text())["last_build"]["tag"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
