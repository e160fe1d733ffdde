"""The HTTP application: the protocols' routes, the operational routes, error bodies and middleware around a
`Runtime`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from serve import __version__
from serve.auth import BearerAuthMiddleware
from serve.contract import routes
from serve.errors import ClientDisconnected, RequestError
from serve.metrics import ObserveMiddleware
from serve.protocols import huggingface
from serve.runtime import Runtime, State

logger = logging.getLogger("serve")

CLIENT_CLOSED = 499
"""Status recorded (never delivered) for requests whose client went away, as nginx does."""


def create_app(runtime: Runtime) -> FastAPI:
    """Build the ASGI app serving `runtime`'s model."""
    app = FastAPI(
        title="bake model server",
        version=__version__,
        description=f"Serves {runtime.settings.model} with dynamic batching.",
        lifespan=runtime.lifespan,
        docs_url=routes.DOCS,
        redoc_url=None,
        openapi_url=routes.OPENAPI,
    )
    _add_error_handlers(app)
    _add_routes(app, runtime)
    if runtime.settings.api_key is not None:
        app.add_middleware(BearerAuthMiddleware, api_key=runtime.settings.api_key)
    app.add_middleware(ObserveMiddleware, metrics=runtime.metrics, activity=runtime.activity)
    return app


def _add_routes(app: FastAPI, runtime: Runtime) -> None:
    errors = {
        str(code): {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        for code, text in _ERROR_DESCRIPTIONS.items()
    }
    huggingface.add_routes(app, runtime, errors)
    app.openapi = _openapi_builder(app, runtime)  # type: ignore[method-assign]

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
        return runtime.info()

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
        huggingface.document(schema, task)
        app.openapi_schema = schema
        return schema

    return build


def _add_error_handlers(app: FastAPI) -> None:
    async def request_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestError)
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    async def http_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    async def validation_error(_request: Request, error: Exception) -> Response:
        return JSONResponse({"error": str(error)}, status_code=422)

    async def client_gone(_request: Request, _error: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    async def unexpected(_request: Request, error: Exception) -> Response:
        logger.exception("unexpected error", exc_info=error)
        return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnected, client_gone)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)


_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_ERROR_DESCRIPTIONS = {
    400: "Empty, malformed or undecodable input",
    401: "Missing or wrong bearer key (when BAKE_API_KEY is set)",
    413: "Body or image too large",
    415: "Not an input of a supported type",
    422: "Invalid parameters",
    503: "Queue full, loading or shutting down (see Retry-After)",
    504: "Deadline exceeded",
}
