"""The image's labels: what `bake build` records and `bake launch` reads back, so nothing is said twice."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

PREFIX = "dev.bake."
MODEL = PREFIX + "model"
REVISION = PREFIX + "revision"
COMMIT = PREFIX + "commit-sha"
TASK = PREFIX + "task"
DEVICE = PREFIX + "device"
PORT = PREFIX + "port"
WEIGHTS = PREFIX + "weights"
WEIGHTS_BYTES = PREFIX + "weights-bytes"
SERVE = PREFIX + "serve"
VERSION = PREFIX + "version"


@dataclass(frozen=True)
class ImageFacts:
    """What an image built by bake says about itself."""

    model: str
    revision: str
    commit_sha: str
    task: str
    device: str
    port: int
    weights: Mapping[str, str]
    """Weight file -> sha256, as published by the Hub (LFS) or hashed from the local directory. Converted
    .bin weights are listed as downloaded; /opt/bake/manifest.json in the image hashes every baked file."""
    weights_bytes: int
    serve: Mapping[str, str]
    """The runtime's environment variables baked into the image (BAKE_MAX_BATCH_SIZE, ...)."""
    bake_version: str

    def to_labels(self, *, base_image: str, source: str | None) -> dict[str, str]:
        """OCI and bake labels for the image."""
        labels = {
            "org.opencontainers.image.title": f"{self.model} ({self.task})",
            "org.opencontainers.image.description": f"{self.model} served by bake: {self.task} on {self.device}",
            "org.opencontainers.image.created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "org.opencontainers.image.revision": self.commit_sha,
            "org.opencontainers.image.version": self.revision,
            "org.opencontainers.image.base.name": base_image,
            "org.opencontainers.image.vendor": "bake",
            MODEL: self.model,
            REVISION: self.revision,
            COMMIT: self.commit_sha,
            TASK: self.task,
            DEVICE: self.device,
            PORT: str(self.port),
            WEIGHTS: json.dumps(dict(self.weights), sort_keys=True),
            WEIGHTS_BYTES: str(self.weights_bytes),
            SERVE: json.dumps(dict(self.serve), sort_keys=True),
            VERSION: self.bake_version,
        }
        if source:
            labels["org.opencontainers.image.source"] = source
        return labels

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> ImageFacts:
        """Read the facts back; raises KeyError/ValueError when the image was not built by bake."""
        return cls(
            model=labels[MODEL],
            revision=labels[REVISION],
            commit_sha=labels[COMMIT],
            task=labels[TASK],
            device=labels[DEVICE],
            port=int(labels[PORT]),
            weights=_json(labels[WEIGHTS]),
            weights_bytes=int(labels[WEIGHTS_BYTES]),
            serve=_json(labels[SERVE]),
            bake_version=labels[VERSION],
        )


def is_bake_image(labels: Mapping[str, str] | None) -> bool:
    """Whether labels come from an image bake built."""
    return bool(labels) and MODEL in labels  # type: ignore[operator]


def _json(text: str) -> Any:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
