"""The HTTP application: the protocols' routes, the operational routes, error bodies and middleware around a
`Runtime`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from serve import __version__, playground
from serve.auth import BearerAuthMiddleware
from serve.contract import routes
from serve.errors import ClientDisconnected, InvalidParameters, RequestError, StatusError
from serve.metrics import ObserveMiddleware
from serve.protocols import PROTOCOLS, for_path
from serve.runtime import Runtime, State

logger = logging.getLogger("serve")

CLIENT_CLOSED = 499
"""Status recorded (never delivered) for requests whose client went away, as nginx does."""


def create_app(runtime: Runtime) -> FastAPI:
    """Build the ASGI app serving `runtime`'s model.

    /docs is Swagger UI with its scripts served from the image (fastapi-offline's copy), never from a CDN:
    images run on networks that reach nothing else.
    """
    app = FastAPIOffline(
        title="bake model server",
        version=__version__,
        description=f"Serves {runtime.settings.model} with dynamic batching, over the Hugging Face "
        "Inference API, Replicate Cog's HTTP API, the Open Inference Protocol v2 (KServe, Triton) and the "
        "OpenAI images API.",
        lifespan=runtime.lifespan,
        docs_url=routes.DOCS,
        redoc_url=None,
        openapi_url=routes.OPENAPI,
        static_url=routes.DOCS_ASSETS,
        # Swagger UI would send the schema's URL to swagger.io's online validator and show its badge.
        swagger_ui_parameters={"validatorUrl": None},
    )
    _add_error_handlers(app)
    playground.add_routes(app)  # before the protocols: its `GET /` goes before Cog's
    for protocol in PROTOCOLS.values():
        protocol.add_routes(app, runtime)
    _add_operational_routes(app, runtime)
    app.openapi = _openapi_builder(app, runtime)  # type: ignore[method-assign]
    if runtime.settings.api_key is not None:
        app.add_middleware(BearerAuthMiddleware, api_key=runtime.settings.api_key, render=error_response)
    app.add_middleware(ObserveMiddleware, metrics=runtime.metrics, activity=runtime.activity)
    return app


def error_response(path: str, error: RequestError) -> Response:
    """`error` in the shape of the protocol that owns `path`."""
    return for_path(path).error_response(error)


def _add_operational_routes(app: FastAPI, runtime: Runtime) -> None:
    @app.get(routes.HEALTH, summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(routes.READY, summary="Readiness: the model is loaded and warmed up", responses={503: {}})
    async def ready() -> JSONResponse:
        if runtime.state is State.READY:
            return JSONResponse({"status": "ready"})
        body: dict[str, Any] = {"status": runtime.state.value}
        if runtime.error:
            body["error"] = runtime.error
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.get(routes.INFO, summary="What is served, and how")
    async def info() -> dict[str, Any]:
        return {
            **runtime.info(),
            "protocols": {name: list(protocol.routes) for name, protocol in PROTOCOLS.items()},
        }

    @app.get(routes.METRICS, summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _openapi_builder(app: FastAPI, runtime: Runtime) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema, with each protocol's requests and responses described for the served task.

    The task may only be known once the model is loaded, so the schema is cached only from then on.
    """

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        task = runtime.task.name if runtime.task is not None else runtime.settings.task
        if task is None:
            return schema
        for protocol in PROTOCOLS.values():
            protocol.document(schema, task)
        app.openapi_schema = schema
        return schema

    return build


def _add_error_handlers(app: FastAPI) -> None:
    async def request_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestError)
        return error_response(request.url.path, error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        failure = StatusError(str(error.detail), error.status_code, dict(error.headers or {}))
        return error_response(request.url.path, failure)

    async def validation_error(request: Request, error: Exception) -> Response:
        return error_response(request.url.path, InvalidParameters(str(error)))

    async def client_gone(_request: Request, _error: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    async def unexpected(request: Request, error: Exception) -> Response:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unexpected error (incident %s)", incident, exc_info=error)
        failure = StatusError(f"internal error {incident}: {type(error).__name__}", 500)
        return error_response(request.url.path, failure)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnected, client_gone)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
