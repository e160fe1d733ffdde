"""The exceptions `fly` raises. Each one reads as a single line: what went wrong, then how to fix it, in
the one format of `serve.contract.errors.UserError` (which bake's errors share).

    FlyError                  base; `message` and `fix` are also kept as attributes
    ├── FlyConfigError        the spec or an existing fly.toml cannot describe a valid Fly app
    ├── FlyGpuUnsupported     a CUDA image or a GPU request: Fly ended GPU Machines on 2026-08-01
    ├── FlyAuthError          no token, or Fly (API or registry) refused it
    └── FlyApiError           the Machines API answered with an error status

No message ever contains the API token.
"""

from __future__ import annotations

from serve.contract.errors import UserError


class FlyError(UserError):
    """Something stopped a Fly deploy; `str(error)` is one line with the cause and the fix."""


class FlyConfigError(FlyError):
    """The spec or an existing fly.toml cannot describe a valid Fly app."""


class FlyGpuUnsupported(FlyError):
    """A CUDA image or a GPU request is headed for Fly, which no longer runs GPU Machines."""


class FlyAuthError(FlyError):
    """The Fly API token is missing, or Fly's API or registry refused it."""


class FlyApiError(FlyError):
    """The Machines API answered `status` with `{"error": ...}` (kept in `api_message`)."""

    def __init__(self, method: str, path: str, status: int, api_message: str, fix: str | None = None) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.api_message = api_message
        super().__init__(f"Fly Machines API {method} {path} answered {status}: {api_message}", fix)
