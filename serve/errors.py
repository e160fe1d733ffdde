"""Exception types of the runtime.

`RequestError` subclasses carry the HTTP status they map to; each protocol turns any of them into its own
error shape with that status (the Hugging Face routes: `{"error": "<message>"}`). Everything else is a
start-up error. Settings errors are the contract's (`serve.contract.errors.SettingsError`), shared with bake.
"""

from __future__ import annotations


class ServeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelLoadError(ServeError):
    """The model cannot be found, read or loaded for the configured task."""


class RequestError(ServeError):
    """A request cannot be answered; `status` is the HTTP status to answer with."""

    status: int = 400
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RequestError):
    """The body is empty, malformed or not a decodable input (400)."""

    status = 400


class Unauthorized(RequestError):
    """The bearer key is missing or wrong (401)."""

    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class RequestTimeout(RequestError):
    """The request's body did not arrive in time (408); the connection is closed after the answer."""

    status = 408
    headers = {"Connection": "close"}


class PayloadTooLarge(RequestError):
    """The body or the image it holds is larger than the configured caps (413)."""

    status = 413


class UnsupportedMediaType(RequestError):
    """The body is of a type this endpoint does not take (415)."""

    status = 415


class InvalidParameters(RequestError):
    """The JSON is well-formed but its fields or values are not acceptable (422).

    `fields` holds one (location, message, kind) per bad field when they are known, for protocols that report
    them one by one (Cog's `detail` list, OpenAI's `param`).
    """

    status = 422

    def __init__(self, message: str, fields: list[tuple[tuple[str, ...], str, str]] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


class Overloaded(RequestError):
    """The batch queue is full or the server is shutting down (503, with Retry-After)."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after_s))}


class DeadlineExceeded(RequestError):
    """The request was not answered within its deadline (504)."""

    status = 504


class StatusError(RequestError):
    """An error whose status is decided where it happens (routing errors, unexpected failures)."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ClientDisconnected(ServeError):
    """The client went away before its answer was ready; nobody is left to answer."""


class InferenceFailed(RequestError):
    """The model failed on this request's input even when run alone (500)."""

    status = 500
