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
from serve.admission import AdmissionMiddleware
from serve.auth import BearerAuthMiddleware
from serve.contract import routes
from serve.errors import ClientDisconnected, InvalidParameters, RequestError, StatusError
from serve.metrics import ObserveMiddleware
from serve.protocols import PROTOCOLS, for_path
from serve.runtime import Runtime, State

logger = logging.getLogger("serve")

_STATE = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}, "error": {"type": "string"}},
        }
    }
}
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
    app.add_middleware(AdmissionMiddleware, runtime=runtime, render=error_response)
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

    @app.get(
        routes.READY,
        summary="Readiness: the model is loaded and warmed up",
        responses={503: {"description": "Loading, or the model failed to load", "content": _STATE}},
    )
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
        _document_errors(schema)
        app.openapi_schema = schema
        return schema

    return build


_ERRORS = {
    400: "Malformed request: empty, unparseable or undecodable input",
    401: "Missing or wrong bearer key (when BAKE_API_KEY is set)",
    404: "No such model, version or prediction",
    408: "The body did not arrive within the request's deadline",
    413: "Body, image or request too large",
    415: "Not an input of a supported type",
    422: "Invalid parameters",
    500: "The model failed on this input, or an unexpected error (the message names an incident id)",
    503: "Loading, queue full or shutting down (see Retry-After)",
    504: "Deadline exceeded",
}
_ANY_ROUTE_ERRORS = (401, 500, 503)
_FASTAPI_422 = "HTTPValidationError"
"""The schema FastAPI documents its own 422 with: the server answers it in the protocol's shape instead."""
_BODY_ERRORS = (400, 408, 413, 415, 422, 504)


def _document_errors(schema: dict[str, Any]) -> None:
    """Document every error status each operation can answer, in the shape of the protocol it belongs to
    (replacing FastAPI's own 422, whose shape only Cog shares)."""
    for path, operations in schema["paths"].items():
        if path in routes.OPEN_PATHS:
            continue
        error_schema = for_path(path).error_schema
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            statuses = set(_ANY_ROUTE_ERRORS)
            if "{" in path:
                statuses.add(404)
            if "requestBody" in operation or method in ("post", "put"):
                statuses.update(_BODY_ERRORS)
            if _FASTAPI_422 in responses.get("422", {}).get("content", {}).get("application/json", {}).get(
                "schema", {}
            ).get("$ref", ""):
                del responses["422"]
                statuses.add(422)
            for status in sorted(statuses):
                responses.setdefault(
                    str(status),
                    {
                        "description": _ERRORS[status],
                        "content": {"application/json": {"schema": error_schema}},
                    },
                )


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
