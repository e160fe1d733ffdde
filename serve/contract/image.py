"""Where things are inside a bake image (the build writes them there; the runtime and launch rely on it)."""

from __future__ import annotations

HF_HOME = "/opt/bake/hf"
"""The Hugging Face cache of a Hub model's baked files (`HF_HOME`)."""
LOCAL_MODEL = "/opt/bake/model"
"""Where a model baked from a local directory lives (its `BAKE_MODEL`)."""
MANIFEST = "/opt/bake/manifest.json"
"""Path, size and sha256 of every baked file."""
SBOM = "/opt/bake/sbom.cdx.json"
"""The image's software bill of materials (CycloneDX JSON): its Python and Debian packages."""
COMPILED = "/opt/bake/compiled"
"""The forward pass compiled at build time, its manifest and the compile report (`contract.compiled`)."""
