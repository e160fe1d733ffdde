"""Optional bearer-key authentication for every route but the health probes and the playground's page and
assets (which hold no model data), in every protocol.

`BAKE_API_KEY` may hold several keys separated by commas, so a key can be rotated without downtime: add the
new one, move the clients over, drop the old one.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.contract.routes import OPEN_PATHS, OPEN_PREFIXES
from serve.contract.settings import api_keys
from serve.errors import RequestError, Unauthorized
from serve.playground import wants_page


class BearerAuthMiddleware:
    """Answers 401 unless `Authorization: Bearer <key>` matches, compared in constant time.

    The key is never echoed: not in responses, not in logs, not in /info. The 401 comes in the shape of the
    protocol the path belongs to (`render(path, error)`).
    """

    def __init__(
        self, app: ASGIApp, *, api_key: str, render: Callable[[str, RequestError], Response]
    ) -> None:
        self.app = app
        self._expected = [f"Bearer {key}".encode() for key in api_keys(api_key)]
        self._render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        # Compared with every key (no early exit), so the time taken says nothing about which key matched.
        if any([hmac.compare_digest(given, expected) for expected in self._expected]):
            await self.app(scope, receive, send)
            return
        error = Unauthorized(
            "missing bearer key: send 'Authorization: Bearer <key>'"
            if not given
            else "the bearer key is not valid"
        )
        await self._render(scope["path"], error)(scope, receive, send)


def _is_open(scope: Scope) -> bool:
    path = scope["path"]
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or wants_page(scope)
