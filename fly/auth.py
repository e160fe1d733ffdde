"""The Fly API token: the one place `fly` reads the environment, and the checks it goes through.

The token is a secret. It travels only in the `Authorization` header, on `docker login`'s stdin and in
flyctl's environment; it is never logged, printed, put on a command line or into an exception message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fly.errors import FlyAuthError

TOKEN_ENV = "FLY_API_TOKEN"
TOKEN_FIX = f"set {TOKEN_ENV} to a Fly token (fly tokens create deploy -a <app>, or fly tokens create org)"


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The token in `FLY_API_TOKEN` (of `environ`, default `os.environ`), or None when unset or blank."""
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return value or None


def require_token(token: str | None) -> str:
    """`token` without surrounding whitespace; `FlyAuthError` when there is none."""
    if token is None or not token.strip():
        raise FlyAuthError(f"{TOKEN_ENV} is not set, and deploying to Fly needs an API token", TOKEN_FIX)
    return token.strip()


def authorization_header(token: str) -> str:
    """The `Authorization` header value the Machines API documents: `Bearer <token>`."""
    return f"Bearer {token}"
