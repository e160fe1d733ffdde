"""The image's labels: what `bake build` records and `bake launch` reads back, so nothing is said twice.

The label keys are the image contract's (`serve.contract.labels`). The serve settings are read back once,
with the runtime's own parser, into the typed `ServeSettings` every launch target uses; labels that an older
bake did not write take their defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from serve.contract.labels import (
    COMMIT,
    DEVICE,
    MODEL,
    PORT,
    REVISION,
    SERVE,
    TASK,
    VERSION,
    WEIGHTS,
    WEIGHTS_BYTES,
)
from serve.contract.settings import ServeSettings


@dataclass(frozen=True)
class ImageFacts:
    """What an image built by bake says about itself."""

    model: str
    revision: str
    commit_sha: str
    task: str
    device: str
    weights: Mapping[str, str]
    """Weight file -> sha256, as published by the Hub (LFS) or hashed from the local directory. Converted
    .bin weights are listed as downloaded; /opt/bake/manifest.json in the image hashes every baked file."""
    weights_bytes: int
    serve: ServeSettings
    """The runtime's settings baked into the image."""
    bake_version: str

    @property
    def port(self) -> int:
        """The port the server listens on inside the container."""
        return self.serve.port

    def to_labels(self, *, base_image: str, source: str | None) -> dict[str, str]:
        """OCI and bake labels for the image."""
        labels = {
            "org.opencontainers.image.title": f"{self.model} ({self.task})",
            "org.opencontainers.image.description": (
                f"{self.model} served by bake: {self.task} on {self.device}"
            ),
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
            SERVE: json.dumps(self.serve.environment(), sort_keys=True),
            VERSION: self.bake_version,
        }
        if source:
            labels["org.opencontainers.image.source"] = source
        return labels

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> ImageFacts:
        """Read the facts back. Raises KeyError when a label every bake wrote is missing (not a bake image),
        ValueError (or the contract's SettingsError) when one is unreadable."""
        return cls(
            model=labels[MODEL],
            revision=labels.get(REVISION, "main"),
            commit_sha=labels.get(COMMIT, ""),
            task=labels[TASK],
            device=labels.get(DEVICE, "cpu"),
            weights=_json(labels.get(WEIGHTS, "{}")),
            weights_bytes=int(labels.get(WEIGHTS_BYTES, "0")),
            serve=ServeSettings.from_environment(_json(labels.get(SERVE, "{}"))),
            bake_version=labels.get(VERSION, "unknown"),
        )


def is_bake_image(labels: Mapping[str, str] | None) -> bool:
    """Whether labels come from an image bake built."""
    return bool(labels) and MODEL in labels  # type: ignore[operator]


def _json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
