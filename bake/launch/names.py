"""Names of what bake launches (containers, Fly apps, Knative and KServe services) and of the images it
builds.

A model id such as `Falconsai/nsfw_image_detection` is no valid name on most targets. The default name is
made valid on all of them at once: `bake-<the model's name, lower-case, runs of other characters as one
dash>-<6 hex digits of the sha256 of the full model id>`, at most `MAX_LENGTH` characters. It is stable (the
same model gets the same name, so launching again replaces the earlier one) and two models of the same
name in different namespaces (or directories) do not collide. A name the user gives is checked against the
rules of the target it is for, before anything runs.
"""

from __future__ import annotations

import hashlib
import re

from bake.errors import ConfigError
from fly.spec import APP_NAME
from serve.contract.errors import require
from serve.contract.names import model_name

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""Kubernetes Service names (what Knative and KServe create under the name given)."""
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
"""Docker container names."""
KSERVE_PREDICTOR_SUFFIX = "-predictor"
"""KServe names the predictor's Knative Service `<name>-predictor`, itself a 63-character DNS label."""
MAX_LENGTH = 63 - len(KSERVE_PREDICTOR_SUFFIX)
"""Longest default name: a DNS label (63) with room for KServe's suffix."""
_HASH_LENGTH = 6
_PREFIX = "bake-"


def default_name(model: str) -> str:
    """The default container / app / service name for `model` (see the module docstring)."""
    digest = hashlib.sha256(model.encode()).hexdigest()[:_HASH_LENGTH]
    room = MAX_LENGTH - len(_PREFIX) - len(digest) - 1
    return f"{_PREFIX}{model_name(model)[:room].rstrip('-')}-{digest}"


def check_name(name: str, target: str) -> None:
    """Raise `ConfigError` unless `name` is valid for `target` (local, docker, fly or kubernetes)."""
    if target in ("local", "docker"):
        require(
            ConfigError,
            DOCKER_NAME.match(name) is not None,
            f"invalid container name {name!r}",
            "use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    elif target == "fly":
        require(
            ConfigError,
            APP_NAME.match(name) is not None,
            f"invalid Fly app name {name!r}",
            "use 1-63 lowercase letters, digits and dashes, starting and ending with a letter or digit",
        )
    elif target == "kubernetes":
        require(
            ConfigError,
            len(name) <= 63 and DNS_1035_LABEL.match(name) is not None,
            f"invalid Kubernetes name {name!r}",
            "use at most 63 lowercase letters, digits and dashes, starting with a letter and ending with a "
            "letter or digit",
        )
