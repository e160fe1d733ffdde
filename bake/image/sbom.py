"""Write the software bill of materials of an image: CycloneDX 1.5 JSON, made inside the build.

The build runs this with the image's own interpreter (the runtime's virtualenv, which also sees the base
image's packages), so it lists exactly what the image holds: every Python distribution that interpreter can
import (name, version, license, PyPI package URL), every Debian package dpkg has installed, and bake's own
runtime (`serve`, copied as source). Standard library only: it imports nothing from bake.

    python sbom.py --name MODEL --version COMMIT --bake-version V --out /opt/bake/sbom.cdx.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

DPKG_STATUS = Path("/var/lib/dpkg/status")
SPEC_VERSION = "1.5"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="what the image serves (the model id)")
    parser.add_argument("--version", required=True, help="its version (the model's commit)")
    parser.add_argument("--bake-version", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    bom = document(args.name, args.version, args.bake_version)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(bom, indent=1, sort_keys=True))
    print(f"sbom: {len(bom['components'])} components in {args.out}")
    return 0


def document(name: str, version: str, bake_version: str) -> dict[str, Any]:
    """The CycloneDX document of this interpreter's and this system's packages."""
    runtime = {
        "type": "library",
        "bom-ref": "bake-serve",
        "name": "bake-serve",
        "version": bake_version,
        "description": "bake's model server (source in /opt/bake/app/serve)",
    }
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "bake", "version": bake_version}]},
            "component": {"type": "container", "bom-ref": "image", "name": name, "version": version},
        },
        "components": [runtime, *python_components(), *debian_components(DPKG_STATUS)],
    }


def python_components() -> list[dict[str, Any]]:
    """One component per Python distribution the interpreter sees (the first of each name on sys.path)."""
    seen: set[str] = set()
    components = []
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if not name:
            continue
        canonical = re.sub(r"[-_.]+", "-", name).lower()
        if canonical in seen:
            continue
        seen.add(canonical)
        purl = f"pkg:pypi/{canonical}@{quote(distribution.version, safe='.-_~')}"
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": distribution.version,
            "purl": purl,
        }
        license_ = _license(distribution.metadata)
        if license_:
            component["licenses"] = [license_]
        components.append(component)
    return sorted(components, key=lambda item: item["bom-ref"])


def debian_components(status: Path) -> list[dict[str, Any]]:
    """One component per package dpkg lists as installed (none where there is no dpkg)."""
    if not status.is_file():
        return []
    components = []
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "installed" not in fields.get("Status", "").split() or "Package" not in fields:
            continue
        name, version, arch = fields["Package"], fields.get("Version", ""), fields.get("Architecture", "all")
        purl = f"pkg:deb/debian/{name}@{quote(version, safe='.-_~')}?arch={arch}"
        components.append(
            {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
        )
    return sorted(components, key=lambda item: item["bom-ref"])


def _license(metadata: Any) -> dict[str, Any] | None:
    expression = metadata.get("License-Expression")
    if expression:
        return {"expression": expression}
    text = (metadata.get("License") or "").strip()
    if text and len(text) <= 100 and "\n" not in text:
        return {"license": {"name": text}}
    classifiers = [
        c.split(" :: ")[-1] for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    return {"license": {"name": classifiers[0]}} if classifiers else None


if __name__ == "__main__":
    sys.exit(main())
