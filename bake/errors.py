"""Exception types of the bake CLI. Every one carries the fix, and prints as one line."""

from __future__ import annotations


class BakeError(Exception):
    """An error the user can act on: `message` says what is wrong, `fix` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.message}: {self.fix}" if self.fix else self.message
        return " ".join(text.split())  # always one line, whatever a library's message held


class ConfigError(BakeError):
    """A flag, environment variable or bake.toml key has an unusable value."""

    exit_code = 2


class ModelNotFound(BakeError):
    """The model id or directory does not exist (or is private and no token was given)."""


class RevisionNotFound(BakeError):
    """The model exists but not at that branch, tag or commit."""


class GatedModel(BakeError):
    """The model needs an accepted license and a token."""


class AccessDenied(BakeError):
    """The Hub refused the token (invalid, expired, or without access to the model)."""


class UnsupportedModel(BakeError):
    """bake cannot serve this model for the requested (or detected) task."""


class HubUnreachable(BakeError):
    """The Hugging Face Hub (or the HF_ENDPOINT mirror) cannot be reached."""


class DockerUnavailable(BakeError):
    """No Docker engine answers, or it lacks buildx."""


class BuildFailed(BakeError):
    """The image build failed; the message says at which step and why."""


class LaunchFailed(BakeError):
    """The container could not be started or did not become ready."""


class BenchFailed(BakeError):
    """`bake bench` cannot measure: no server answers, it is not ready, or it refuses the requests."""
