"""Replicate Cog's HTTP API, as Cog's server (coglet) answers it, so Cog clients and Replicate-style code
work.

- `GET /health-check`: `{"status": STARTING|READY|BUSY|SETUP_FAILED, "setup": {...}, "version": {...}}`,
  always 200.
- `GET /`: Cog's discovery document (the routes below).
- `POST /predictions` with `{"input": {...}, "id"?, "webhook"?, "webhook_events_filter"?}`: the prediction,
  `{"id", "status": "succeeded", "output", "metrics": {"predict_time"}, "logs": ""}`. With
  `Prefer: respond-async`: 202 `{"id", "status": "starting"}` at once, and the prediction goes to `webhook`
  at the events asked for (`start`, `output`, `logs`, `completed`; `completed` retried with backoff).
- `PUT /predictions/{id}`: the same, idempotent: while a prediction of that id runs, 202 with its state.
- `POST /predictions/{id}/cancel`: 200 `{}` and the prediction ends `canceled` (text-to-image stops at its
  next denoising step), or 404 `{}`.

Inputs: image classification `{"image": <data URL | base64 | http(s) URL when BAKE_REMOTE_INPUT_HOSTS allows
it>, "top_k", "function_to_apply"}`; text-to-image `{"prompt", <the Hugging Face parameters>}`. Unknown input
fields are dropped, as Cog does. Outputs: labels and scores; images as PNG data URLs (Cog's file outputs).
Errors as coglet gives them: invalid input 422 `{"detail": [{"loc", "msg", "type"}]}`; a prediction that fails
`{"status": "failed", "error"}` (200 when the model failed, 422 when its input did); not ready or full 503
`{"error", "status": "failed"}`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import platform
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve import __version__, outbound
from serve.contract import routes
from serve.contract.tasks import IMAGE_CLASSIFICATION, TEXT_TO_IMAGE
from serve.errors import ClientDisconnected, InferenceFailed, InvalidParameters, Overloaded, RequestError
from serve.http import read_body, until_disconnected
from serve.image_encoding import encode_image
from serve.payload import parse_json
from serve.protocols.base import Protocol, binary_input, model_schema
from serve.runtime import Runtime, State
from serve.tasks.text_to_image import Generated

logger = logging.getLogger("serve")

EVENTS = ("start", "output", "logs", "completed")
INPUT_FIELD = {IMAGE_CLASSIFICATION: "image", TEXT_TO_IMAGE: "prompt"}
"""The input field that holds the task's input; every other input field is one of its parameters."""
_INVALID_INPUT = frozenset({400, 413, 415, 422})
"""Statuses of failures caused by the input: Cog answers all of them 422."""
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_RETRIES = 5
"""Attempts at the `completed` webhook while the receiver answers 429, 5xx or nothing (backoff 0.1 s x
2^n)."""


class PredictionRequest(BaseModel):
    """Cog's prediction request body (unknown top-level fields are ignored, as Cog's server does)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    input: dict[str, Any] = {}
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] = list(EVENTS)


@dataclass
class Prediction:
    """One prediction and its state, as Cog reports it."""

    id: str
    input: dict[str, Any]
    status: str = "starting"
    output: Any = None
    error: str | None = None
    created_at: str = field(default_factory=lambda: _now())
    started_at: str | None = None
    completed_at: str | None = None
    predict_time: float | None = None
    job: asyncio.Task[Any] | None = None
    failure: RequestError | None = None
    """Why it failed, when it did (decides the HTTP status of a synchronous answer)."""

    def snapshot(self) -> dict[str, Any]:
        """The prediction as Cog's responses and webhooks carry it."""
        body: dict[str, Any] = {"id": self.id, "input": self.input, "status": self.status, "logs": ""}
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        body["metrics"] = {"predict_time": self.predict_time} if self.predict_time is not None else {}
        body |= {
            key: value
            for key in ("created_at", "started_at", "completed_at")
            if (value := getattr(self, key))
        }
        return body


class Predictions:
    """The predictions in flight, by id, and how each one runs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.running: dict[str, Prediction] = {}
        self._webhooks = outbound.webhooks(runtime.settings)

    async def run(self, prediction: Prediction, request: PredictionRequest) -> None:
        """Predict, recording the outcome on `prediction` and telling the webhook; cancellation ends it as
        `canceled`, any request error as `failed`."""
        runtime = self.runtime
        events = set(request.webhook_events_filter)
        started = time.perf_counter()
        prediction.status, prediction.started_at = "processing", _now()
        await self._notify(request, prediction, "start", events)
        try:
            inputs, params = await _arguments(runtime, prediction.input)
            result = await runtime.predict(inputs, params)
            prediction.output = await runtime.offload(_render_output, runtime.ready_task().name, result)
            prediction.status = "succeeded"
        except asyncio.CancelledError:
            prediction.status = "canceled"
        except RequestError as error:
            prediction.status, prediction.error, prediction.failure = "failed", error.message, error
        finally:
            prediction.predict_time = time.perf_counter() - started
            prediction.completed_at = _now()
            self.running.pop(prediction.id, None)
        if prediction.status == "succeeded":
            await self._notify(request, prediction, "output", events)
        await self._notify(request, prediction, "completed", events)

    async def _notify(
        self, request: PredictionRequest, prediction: Prediction, event: str, events: set[str]
    ) -> None:
        if request.webhook is None or event not in events:
            return
        url, payload = request.webhook, prediction.snapshot()
        attempts = WEBHOOK_RETRIES if event == "completed" else 1
        for attempt in range(attempts):
            try:
                status = await self.runtime.offload(
                    lambda: outbound.post_json(url, payload, self._webhooks, timeout_s=WEBHOOK_TIMEOUT_S)
                )
            except RequestError as error:  # the policy refused the URL: said once, in the log
                logger.warning("webhook of prediction %r not sent: %s", prediction.id, error.message)
                return
            if status and status != 429 and status < 500:
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(0.1 * 2**attempt)
        logger.warning("webhook %s of prediction %r failed (last status %s)", event, prediction.id, status)


def add_routes(app: FastAPI, runtime: Runtime) -> None:
    """Mount Cog's routes on `app`."""
    predictions = Predictions(runtime)

    @app.get(routes.COG_HEALTH, summary="Cog: health and setup status", tags=["cog"])
    async def health_check() -> dict[str, Any]:
        return _health(runtime)

    @app.get(routes.ROOT, summary="Cog: the routes of this API", tags=["cog"], include_in_schema=False)
    async def discovery() -> dict[str, Any]:
        return {
            "cog_version": f"bake {__version__}",
            "docs_url": routes.DOCS,
            "openapi_url": routes.OPENAPI,
            "healthcheck_url": routes.COG_HEALTH,
            "predictions_url": routes.COG_PREDICTIONS,
            "predictions_idempotent_url": routes.COG_PREDICTION,
            "predictions_cancel_url": routes.COG_CANCEL,
        }

    async def create(request: Request, prediction_id: str | None) -> Response:
        body = await read_body(request, runtime.settings.max_body_bytes, deadline=runtime.deadline())
        try:
            cog_request = PredictionRequest.model_validate(parse_json(body))
        except ValidationError as error:
            return _detail(error.errors(include_url=False), prefix=("body",))
        if prediction_id is not None and cog_request.id not in (None, prediction_id):
            return _detail(
                [
                    {
                        "loc": ("id",),
                        "msg": "prediction ID must match the ID supplied in the URL",
                        "type": "value_error",
                    }
                ],
                prefix=("body",),
            )
        identifier = prediction_id or cog_request.id or _new_id()
        if (running := predictions.running.get(identifier)) is not None:
            return JSONResponse(running.snapshot(), status_code=202)
        runtime.ready_task()  # 503 while loading, before anything is accepted
        prediction = Prediction(id=identifier, input=cog_request.input)
        predictions.running[identifier] = prediction
        job = asyncio.ensure_future(predictions.run(prediction, cog_request))
        prediction.job = job
        if "respond-async" in request.headers.get("prefer", ""):
            return JSONResponse({"id": identifier, "status": "starting"}, status_code=202)
        try:
            await until_disconnected(request, asyncio.shield(job))
        except ClientDisconnected:
            job.cancel()
            raise
        return _outcome(prediction)

    @app.post(routes.COG_PREDICTIONS, summary="Cog: make a prediction", tags=["cog"])
    async def post_prediction(request: Request) -> Response:
        return await create(request, None)

    @app.put(routes.COG_PREDICTION, summary="Cog: make a prediction, idempotently", tags=["cog"])
    async def put_prediction(request: Request, prediction_id: str) -> Response:
        return await create(request, prediction_id)

    @app.post(routes.COG_CANCEL, summary="Cog: cancel a prediction", tags=["cog"])
    async def cancel(prediction_id: str) -> Response:
        prediction = predictions.running.get(prediction_id)
        if prediction is None or prediction.job is None:
            return JSONResponse({}, status_code=404)
        prediction.job.cancel()
        return JSONResponse({})


def error_response(error: RequestError) -> Response:
    """Invalid input as `{"detail": [...]}` (422), anything else as `{"error", "status": "failed"}`."""
    if isinstance(error, InvalidParameters) and error.fields:
        return _detail(
            [{"loc": loc, "msg": msg, "type": kind} for loc, msg, kind in error.fields],
            prefix=("body", "input"),
        )
    return JSONResponse(
        {"error": error.message, "status": "failed"}, status_code=error.status, headers=error.headers
    )


async def _arguments(runtime: Runtime, document: dict[str, Any]) -> tuple[bytes | str, BaseModel]:
    """The task's input and validated parameters from a Cog `input` (unknown fields dropped, as Cog does)."""
    task = runtime.ready_task()
    name = INPUT_FIELD.get(task.name, "input")
    if name not in document:
        raise InvalidParameters(f"input.{name}: Field required", [((name,), "Field required", "missing")])
    value = document[name]
    if not isinstance(value, str):
        raise InvalidParameters(
            f"input.{name}: must be a string", [((name,), "Input should be a string", "string_type")]
        )
    known = set(task.Parameters.model_fields)
    dropped = sorted(set(document) - known - {name})
    if dropped:
        logger.info("dropping unknown Cog input fields: %s", ", ".join(map(repr, dropped)))  # repr: one line
    params = runtime.parameters({key: document[key] for key in document if key in known}, where="input")
    inputs = value if task.text_input else await binary_input(runtime, value)
    return inputs, params


def _render_output(task: str, result: Any) -> Any:
    """The task's result as a Cog output: generated images become PNG data URLs, like Cog's file outputs."""
    if isinstance(result, Generated):
        return [
            "data:image/png;base64," + base64.b64encode(encode_image(image, "image/png")).decode("ascii")
            for image in result.images
        ]
    return result


def _outcome(prediction: Prediction) -> Response:
    """The HTTP answer to a synchronous prediction, with coglet's status codes."""
    failure = prediction.failure
    if failure is None or isinstance(failure, InferenceFailed):
        return JSONResponse(prediction.snapshot())  # a model failure is data, not an HTTP error (as Cog)
    if isinstance(failure, InvalidParameters) and failure.fields:
        return error_response(failure)
    if isinstance(failure, Overloaded):
        return JSONResponse(
            {"error": failure.message, "status": "failed"}, status_code=503, headers=failure.headers
        )
    # An input the model cannot take (undecodable, too large, not an image) is Cog's InvalidInput: 422.
    status = 422 if failure.status in _INVALID_INPUT else failure.status
    return JSONResponse(prediction.snapshot(), status_code=status, headers=failure.headers)


def _health(runtime: Runtime) -> dict[str, Any]:
    started = datetime.fromtimestamp(runtime.started_at, timezone.utc).isoformat()
    setup: dict[str, Any] = {"started_at": started, "status": "starting"}
    if runtime.state is State.LOADING:
        status = "STARTING"
    elif runtime.state is State.FAILED:
        status = "SETUP_FAILED"
        setup |= {"status": "failed", "logs": runtime.error or ""}
    else:
        status = "BUSY" if runtime.batcher.depth >= runtime.settings.max_queue else "READY"
        completed = runtime.started_at + (runtime.load_seconds or 0.0)
        setup |= {
            "status": "succeeded",
            "completed_at": datetime.fromtimestamp(completed, timezone.utc).isoformat(),
            "logs": "",
        }
    return {
        "status": status,
        "setup": setup,
        "version": {"bake": __version__, "python": platform.python_version()},
    }


def _detail(errors: list[dict[str, Any]], *, prefix: tuple[str, ...]) -> Response:
    detail = [
        {"loc": [*prefix, *map(str, item["loc"])], "msg": item["msg"], "type": item["type"]}
        for item in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _new_id() -> str:
    """A 26-character id as Cog recommends (random base32, lower-case, no padding)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower().rstrip("=")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def document(schema: dict[str, Any], task: str) -> None:
    """Cog's schemas for the served task: Input, Output, PredictionRequest, PredictionResponse, Status, ..."""
    from serve.tasks import TASKS

    parameters = model_schema(TASKS[task].Parameters)
    name = INPUT_FIELD.get(task, "input")
    described = {
        "image": {
            "type": "string",
            "format": "uri",
            "description": "The image: a data URL, base64, or "
            "an http(s) URL when the server allows remote inputs",
        },
        "prompt": {"type": "string", "description": "The prompt"},
    }
    properties = {name: {**described.get(name, {"type": "string"}), "title": name.title(), "x-order": 0}}
    for order, (key, value) in enumerate(parameters.get("properties", {}).items(), start=1):
        properties[key] = {**value, "x-order": order}
    output = (
        {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}
        if task == TEXT_TO_IMAGE
        else {
            "type": "array",
            "title": "Output",
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
            },
        }
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components |= {
        "Input": {"type": "object", "title": "Input", "required": [name], "properties": properties},
        "Output": output,
        "Status": {
            "type": "string",
            "title": "Status",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        },
        "WebhookEvent": {"type": "string", "title": "WebhookEvent", "enum": list(EVENTS)},
        "PredictionRequest": {
            "type": "object",
            "title": "PredictionRequest",
            "properties": {
                "id": {"type": "string"},
                "input": {"$ref": "#/components/schemas/Input"},
                "webhook": {"type": "string", "format": "uri"},
                "webhook_events_filter": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/WebhookEvent"},
                    "default": list(EVENTS),
                },
            },
        },
        "PredictionResponse": {
            "type": "object",
            "title": "PredictionResponse",
            "properties": {
                "id": {"type": "string"},
                "input": {"$ref": "#/components/schemas/Input"},
                "output": {"$ref": "#/components/schemas/Output"},
                "error": {"type": "string"},
                "status": {"$ref": "#/components/schemas/Status"},
                "logs": {"type": "string"},
                "metrics": {"type": "object"},
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": {"type": "string", "format": "date-time"},
                "completed_at": {"type": "string", "format": "date-time"},
            },
        },
    }
    request_body = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}
    }
    response = {
        "description": "The prediction",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionResponse"}}},
    }
    for path, method in ((routes.COG_PREDICTIONS, "post"), (routes.COG_PREDICTION, "put")):
        operation = schema["paths"][path][method]
        operation["requestBody"] = request_body
        operation["responses"]["200"] = response


PROTOCOL = Protocol(
    name=routes.COG,
    add_routes=add_routes,
    error_response=error_response,
    document=document,
    routes=(routes.COG_HEALTH, routes.COG_PREDICTIONS, routes.COG_PREDICTION, routes.COG_CANCEL),
    error_schema={
        "title": "CogError",
        "anyOf": [
            {
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["loc", "msg", "type"],
                            "properties": {
                                "loc": {"type": "array", "items": {"type": "string"}},
                                "msg": {"type": "string"},
                                "type": {"type": "string"},
                            },
                        },
                    }
                },
            },
            {
                "type": "object",
                "required": ["error", "status"],
                "properties": {"error": {"type": "string"}, "status": {"const": "failed"}},
            },
            {"type": "object", "required": ["id", "status", "error"], "description": "A failed prediction"},
            {"type": "object", "maxProperties": 0, "description": "No such prediction"},
        ],
    },
)
