"""The SBOM script the build runs inside the image (`bake/image/sbom.py`), run here by this interpreter on
this Debian machine as the build runs it: a CycloneDX 1.5 document that lists what the interpreter imports
and what dpkg installed, valid against CycloneDX's own schema. The image's SBOM is in test_build_e2e.py."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from tests.fixtures.servers import REPO_ROOT

SCRIPT = REPO_ROOT / "bake" / "image" / "sbom.py"
DPKG_STATUS = Path("/var/lib/dpkg/status")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sbom") / "deep" / "sbom.cdx.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--name", "org/model", "--version", "abc123", "--bake-version", "9.9"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    bom = json.loads(out.read_text())
    assert result.stdout.strip() == f"sbom: {len(bom['components'])} components in {out}"
    return bom


def test_the_document_is_valid_cyclonedx_1_5(document: dict) -> None:
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(document)) is None
    assert document["metadata"]["component"] == {
        "type": "container",
        "bom-ref": "image",
        "name": "org/model",
        "version": "abc123",
    }
    references = [component["bom-ref"] for component in document["components"]]
    assert len(references) == len(set(references)), "bom-refs are unique"


def test_every_python_distribution_is_listed_once_with_its_version(document: dict) -> None:
    listed = {
        component["purl"].split("@")[0].removeprefix("pkg:pypi/"): component["version"]
        for component in document["components"]
        if component.get("purl", "").startswith("pkg:pypi/")
    }
    assert listed["click"] == importlib.metadata.version("click")
    assert listed["cyclonedx-python-lib"] == importlib.metadata.version("cyclonedx-python-lib")
    assert listed["typing-extensions"] == importlib.metadata.version("typing_extensions"), "canonical names"
    jinja2 = next(c for c in document["components"] if c.get("purl", "").startswith("pkg:pypi/jinja2@"))
    assert jinja2["licenses"], "a license from the metadata's expression, field or classifiers"


@pytest.mark.skipif(not DPKG_STATUS.is_file(), reason="this test reads a Debian machine's dpkg database")
def test_every_installed_debian_package_is_listed(document: dict) -> None:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    expected = {tuple(line.split()[1:]) for line in installed if line.startswith("installed ")}
    listed = {
        (component["name"], component["version"])
        for component in document["components"]
        if component.get("purl", "").startswith("pkg:deb/debian/")
    }
    assert listed == expected and ("libc6", dict(expected)["libc6"]) in listed
