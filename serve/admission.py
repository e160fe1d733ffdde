"""Refusing predictions the queue has no room for before anything else is spent on them.

Under overload the batch queue is full, so most requests arriving will be refused (503). The sooner that is
decided, the less each refusal costs: this middleware answers before routing, before the body is read or
parsed, before the request is validated or decoded, so that at several times its capacity the server still
refuses the excess within milliseconds and keeps its CPU for the requests it accepted. The queue itself stays
the authority (`serve.batcher.Batcher.check_room`); requests still being preprocessed count against it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.contract.routes import runs_the_model
from serve.errors import Overloaded, RequestError
from serve.runtime import Runtime


class AdmissionMiddleware:
    """Answers 503 (with Retry-After, in the protocol's error shape) to a prediction the queue cannot take."""

    def __init__(
        self, app: ASGIApp, *, runtime: Runtime, render: Callable[[str, RequestError], Response]
    ) -> None:
        self.app = app
        self._runtime = runtime
        self._render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and runs_the_model(scope["method"], scope["path"]):
            try:
                self._runtime.admit()
            except Overloaded as error:
                await self._render(scope["path"], error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
