"""The playground: a page at `GET /` for people with a browser, in every image.

A browser asking for `/` (`Accept` ranks `text/html` above JSON) gets the page; any other `GET /` reaches
Cog's discovery document, and `POST /` stays the Hugging Face route. The page and its script and style
(`static/`, under `/playground/`) are the same files in every image: the page learns the model, its task and
its limits from `/info` and sends predictions to the Hugging Face route, as any client would. It fetches
nothing from anywhere but this server (its Content-Security-Policy forbids it), so it works on an air-gapped
network. It holds no model data, so it loads without the API key, and asks for the key when `/info` answers
401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Match, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from serve.accept import preferred_media_type
from serve.contract import routes

PAGE = Path(__file__).parent / "index.html"
ASSETS = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""The page may load and fetch from its own server only; images may also be the page's own blobs (the
preview) and data URLs (the generated images)."""

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Vary": "Accept",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_NEGOTIATED = ("application/json", "text/html")
"""What `GET /` can answer; a client that names neither (or `*/*` alone) gets the first: Cog's JSON."""


def wants_page(scope: Scope) -> bool:
    """Whether a request is a browser asking for the playground: `GET /` (or HEAD) preferring HTML."""
    if scope["type"] != "http" or scope["path"] != routes.PLAYGROUND:
        return False
    if scope["method"] not in ("GET", "HEAD"):
        return False
    accept = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"), "")
    return preferred_media_type(accept, _NEGOTIATED) == "text/html"


class _PageRoute(Route):
    """A route that matches only requests for the page, so that every other `GET /` falls through."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if not wants_page(scope):
            return Match.NONE, {}
        return super().matches(scope)


async def _page(_request: Request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html", headers=PAGE_HEADERS)


def add_routes(app: FastAPI) -> None:
    """Mount the page and its assets on `app`, before any other `GET /` route."""
    app.router.routes.append(_PageRoute(routes.PLAYGROUND, _page, methods=["GET"], include_in_schema=False))
    app.mount(routes.PLAYGROUND_ASSETS, StaticFiles(directory=ASSETS), name="playground")
