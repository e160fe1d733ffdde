"""Exception types of the bake CLI. Every one carries the fix and prints as one line, in the one format of
`serve.contract.errors.UserError`, whose exit-code rule they follow (2: a setting or flag, 130: interrupted,
1: anything else). Errors of the libraries bake drives (the Docker SDK, httpx, the file system) are turned
into these where they happen, so the message can say what bake was doing and what to do about it.
"""

from __future__ import annotations

from serve.contract.errors import INTERRUPTED_EXIT_CODE, USAGE_EXIT_CODE, UnsupportedModel, UserError

__all__ = [
    "AccessDenied",
    "BakeError",
    "BenchFailed",
    "BuildFailed",
    "ConfigError",
    "DockerFailed",
    "DockerUnavailable",
    "GatedModel",
    "HubUnreachable",
    "Interrupted",
    "LaunchFailed",
    "ModelNotFound",
    "PredictFailed",
    "RevisionNotFound",
    "UnsupportedModel",
]


class BakeError(UserError):
    """An error the user can act on: `message` says what is wrong, `fix` what to do about it."""


class ConfigError(BakeError):
    """A flag, environment variable or bake.toml key has an unusable value, or two of them do not fit."""

    exit_code = USAGE_EXIT_CODE


class ModelNotFound(BakeError):
    """The model id or directory does not exist (or is private and no token was given)."""


class RevisionNotFound(BakeError):
    """The model exists but not at that branch, tag or commit."""


class GatedModel(BakeError):
    """The model needs an accepted license and a token."""


class AccessDenied(BakeError):
    """The Hub refused the token (invalid, expired, or without access to the model)."""


class HubUnreachable(BakeError):
    """The Hugging Face Hub (or the HF_ENDPOINT mirror) cannot be reached."""


class DockerUnavailable(BakeError):
    """No Docker engine answers, or it lacks buildx."""


class DockerFailed(BakeError):
    """The Docker engine answers but refused or failed an operation on a container or an image."""


class BuildFailed(BakeError):
    """The image build failed; the message says at which step and why."""


class LaunchFailed(BakeError):
    """The container could not be started or did not become ready."""


class PredictFailed(BakeError):
    """`bake predict` got no answer from the server, or an error."""


class Interrupted(BakeError):
    """Ctrl-C stopped a wait; the message says what was left behind."""

    exit_code = INTERRUPTED_EXIT_CODE


class BenchFailed(BakeError):
    """`bake bench` cannot measure: no server answers, it is not ready, or it refuses the requests."""
