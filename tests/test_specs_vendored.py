"""The specs the tests validate against are exactly the published ones (hashes from their SOURCES.md)."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests.fixtures.fly_api import SPECS_DIR

SOURCES = (SPECS_DIR / "SOURCES.md").read_text()


@pytest.mark.parametrize("name", ["fly.schema.json", "fly-machines-openapi.json"])
def test_vendored_spec_matches_its_published_hash(name: str) -> None:
    section = SOURCES.split(f"## {name}", 1)[1]
    expected = re.search(r"sha256 ([0-9a-f]{64})", section)
    assert expected is not None
    assert hashlib.sha256((SPECS_DIR / name).read_bytes()).hexdigest() == expected.group(1)
