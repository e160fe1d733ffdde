"""Optional bearer-key authentication for every route but the health probes."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.contract.routes import OPEN_PATHS
from serve.errors import Unauthorized


class BearerAuthMiddleware:
    """Answers 401 unless `Authorization: Bearer <key>` matches, compared in constant time.

    The key is never echoed: not in responses, not in logs, not in /info.
    """

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        error = Unauthorized(
            "missing bearer key: send 'Authorization: Bearer <key>'"
            if not given
            else "the bearer key is not valid"
        )
        body = json.dumps({"error": error.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
