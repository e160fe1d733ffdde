"""The label keys of a bake image: what `bake build` records and `bake launch` reads back."""

from __future__ import annotations

PREFIX = "dev.bake."
MODEL = PREFIX + "model"
REVISION = PREFIX + "revision"
COMMIT = PREFIX + "commit-sha"
TASK = PREFIX + "task"
DEVICE = PREFIX + "device"
PORT = PREFIX + "port"
WEIGHTS = PREFIX + "weights"
"""JSON: weight file -> sha256."""
WEIGHTS_BYTES = PREFIX + "weights-bytes"
SERVE = PREFIX + "serve"
"""JSON: the runtime's variables baked into the image (`ServeSettings.environment()`)."""
VERSION = PREFIX + "version"
COMPILED = PREFIX + "compiled"
"""Which forward pass the image serves: "torchscript" (compiled at build time) or "eager: <reason>"."""
