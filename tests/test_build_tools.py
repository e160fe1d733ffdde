"""The build's tools stage command (bake.installer.Installer.tools), run as the step runs it: in the base
image, with the package index and CA bundle as the step's secret files, from PyPI.

The base image's Python bundles a pip wheel for ensurepip (Debian's python3-pip-whl here), which runs in place
and installs uv, at the version bake/image/build-tools.txt pins, where the deps and fetcher stages run it,
without making a virtualenv. (A base without that wheel: tests/test_build_errors.py.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bake.installer import PACKAGE_INDEX_SECRET, TOOLS_DIR, Installer
from tests.fixtures.docker import HOST_CA_BUNDLE, ensure_base_image

pytestmark = [pytest.mark.docker]

BUILD_TOOLS = Path(__file__).resolve().parents[1] / "bake" / "image" / "build-tools.txt"


def run_tools_step(tmp_path: Path) -> str:
    """Run the tools stage's command in the base image; return what it printed, and the facts after it (uv's
    version, whether a virtualenv was made)."""
    index = tmp_path / "package_index"
    index.write_text("--index-url https://pypi.org/simple\n")
    script = (
        f"{Installer('uv').tools()} && {TOOLS_DIR}/bin/uv --version && "
        f"if [ -f {TOOLS_DIR}/pyvenv.cfg ]; then echo made a virtualenv; fi"
    )
    result = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "host",
            "-v", f"{index}:/run/secrets/{PACKAGE_INDEX_SECRET}:ro",
            "-v", f"{HOST_CA_BUNDLE}:/run/secrets/ca_cert:ro",
            "-v", f"{BUILD_TOOLS}:/opt/bake/build-tools.txt:ro",
            "-e", "PIP_CERT=/run/secrets/ca_cert", "-e", "PIP_NO_CACHE_DIR=1",
            ensure_base_image(), "bash", "-c", script,
        ],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def pinned_uv() -> str:
    match = re.search(r"^uv==([\d.]+)$", BUILD_TOOLS.read_text(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_the_base_images_bundled_pip_installs_uv_without_a_virtualenv(tmp_path: Path) -> None:
    output = run_tools_step(tmp_path)
    assert f"uv {pinned_uv()} " in output
    assert "made a virtualenv" not in output
