"""What every benchmark records next to its numbers: the machine, and the JSON report file."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def rotated(items: list[T], index: int) -> list[T]:
    """`items` rotated left by `index` places: the order of round `index`, so that no contender always runs
    first or last on a machine whose speed drifts."""
    shift = index % len(items)
    return items[shift:] + items[:shift]


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write `report` as indented JSON to `path` (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")
