"""The Hugging Face Inference API: `POST /predict` and `POST /`, so `InferenceClient(model=URL)` works
unchanged.

Image classification takes the image as raw bytes (any or no Content-Type: the format is sniffed),
`multipart/form-data` (one file field, preferably `image`) or JSON `{"inputs": "<base64 or data: URL>",
"parameters": {...}}`, and answers `[{"label", "score"}, ...]`, best first.

Text-to-image takes JSON `{"inputs": "<prompt>", "parameters": {...}}` and answers, by `Accept`:
- `image/png` (the default), `image/jpeg`, `image/webp`: the image's bytes; the seed in `X-Seed`;
- `application/json`: `{"images": [base64 PNG, ...], "media_type", "seed", "timings"}`;
- `text/event-stream`: one `progress` event per denoising step, one `image` event per image
  (`{"index", "image", "media_type", "seed"}`), then `done` (see `serve.streaming`).

Answers that ran on the device say how they were batched (the playground shows it): `X-Batch-Size` (the
requests in the batch), `X-Queue-Time-Ms` (this request's wait for the device) and `X-Inference-Time-Ms`
(the batch's device time); a progress stream starts before its batch and carries none of them.

Errors are `{"error": "<message>"}` with the status of the `RequestError`; this is also the error shape of
the routes no protocol owns.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serve import streaming
from serve.accept import preferred_media_type
from serve.batcher import BatchReport
from serve.contract import routes
from serve.contract.tasks import IMAGE_CLASSIFICATION, TEXT_TO_IMAGE
from serve.errors import InvalidParameters, RequestError
from serve.http import read_body, until_disconnected
from serve.image_encoding import ENCODINGS, encode_image
from serve.payload import StrictModel, binary_request, parse_json, validate
from serve.protocols.base import Protocol, model_schema
from serve.runtime import Runtime
from serve.tasks import TASKS
from serve.tasks.text_to_image import Generated

JSON = "application/json"
IMAGE_MEDIA_TYPES = (*ENCODINGS, JSON, streaming.MEDIA_TYPE)
"""What a text-to-image request may ask for in `Accept`; the first is the default."""


class TextRequest(StrictModel):
    """A text-input request body."""

    inputs: Annotated[str, Field(min_length=1)]
    """The prompt."""
    parameters: dict[str, Any] | None = None


def error_response(error: RequestError) -> Response:
    """`{"error": message}` with the error's status and headers."""
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


def add_routes(app: FastAPI, runtime: Runtime) -> None:
    """Mount the Inference API's prediction routes on `app`."""

    async def predict(request: Request) -> Response:
        deadline = runtime.deadline()
        task = runtime.ready_task()
        data = await read_body(request, runtime.settings.max_body_bytes, deadline=deadline)
        inputs: bytes | str
        if task.text_input:
            body = validate(TextRequest, parse_json(data))
            inputs, document = body.inputs, body.parameters
        else:
            inputs, document = binary_request(
                data, request.headers.get("content-type", ""), request.query_params.multi_items()
            )
        params = runtime.parameters(document)
        if task.name == TEXT_TO_IMAGE:
            return await _text_to_image(runtime, request, inputs, params, deadline)
        report = BatchReport()
        result = await until_disconnected(
            request, runtime.predict(inputs, params, deadline=deadline, report=report)
        )
        return JSONResponse(result, headers=batch_headers(report))

    for path in routes.PREDICT_PATHS:
        app.add_api_route(
            path,
            predict,
            methods=["POST"],
            summary="Run the model on one input (Hugging Face Inference API)",
            operation_id="predict" if path == routes.PREDICT else "predict_root",
        )


def batch_headers(report: BatchReport) -> dict[str, str]:
    """How a request was batched, as response headers."""
    return {
        "X-Batch-Size": str(report.batch_size),
        "X-Queue-Time-Ms": f"{report.queue_s * 1000:.1f}",
        "X-Inference-Time-Ms": f"{report.inference_s * 1000:.1f}",
    }


def document(schema: dict[str, Any], task: str) -> None:
    """Describe the request and response of the prediction routes in `schema` for the served `task`."""
    for path in routes.PREDICT_PATHS:
        operation = schema["paths"][path]["post"]
        operation["requestBody"] = _REQUESTS[task]()
        operation["responses"]["200"] = _RESPONSES[task]


async def _text_to_image(
    runtime: Runtime, request: Request, prompt: str, params: Any, deadline: float
) -> Response:
    prepared = await until_disconnected(request, runtime.prepare(prompt, params, deadline=deadline))
    media_type = preferred_media_type(request.headers.get("accept", ""), IMAGE_MEDIA_TYPES)
    images = params.num_images_per_prompt
    if images > 1 and media_type in ENCODINGS:
        raise InvalidParameters(
            f"parameters.num_images_per_prompt: {media_type} holds one image; send "
            f"'Accept: {JSON}' or 'Accept: {streaming.MEDIA_TYPE}' to get {images}"
        )
    if media_type == streaming.MEDIA_TYPE:
        events = streaming.event_stream(
            lambda on_step: runtime.run(prepared, deadline=deadline, on_step=on_step),
            lambda generated: runtime.offload(_image_events, generated),
        )
        return StreamingResponse(events, media_type=streaming.MEDIA_TYPE, headers=streaming.HEADERS)
    report = BatchReport()
    generated: Generated = await until_disconnected(
        request, runtime.run(prepared, deadline=deadline, report=report)
    )
    response = await runtime.offload(_image_response, generated, media_type)
    response.headers.update(batch_headers(report))
    return response


def _image_response(generated: Generated, media_type: str) -> Response:
    """The image's bytes in the negotiated format, or JSON with every image in base64 PNG."""
    started = time.perf_counter()
    if media_type != JSON:
        data = encode_image(generated.images[0], media_type)
        return Response(data, media_type=media_type, headers={"X-Seed": str(generated.seed)})
    images = [_base64_png(image) for image in generated.images]
    timings = {
        "queue_s": generated.queue_s,
        "inference_s": generated.inference_s,
        "encode_s": time.perf_counter() - started,
    }
    return JSONResponse(
        {"images": images, "media_type": "image/png", "seed": generated.seed, "timings": timings}
    )


def _image_events(generated: Generated) -> list[tuple[str, Any]]:
    """One `image` event per image: base64 PNG, its index and the seed that makes it alone."""
    return [
        (
            "image",
            {
                "index": index,
                "image": _base64_png(image),
                "media_type": "image/png",
                "seed": generated.seed + index,
            },
        )
        for index, image in enumerate(generated.images)
    ]


def _base64_png(image: Any) -> str:
    return base64.b64encode(encode_image(image, "image/png")).decode("ascii")


def _classification_request() -> dict[str, Any]:
    parameters = model_schema(TASKS[IMAGE_CLASSIFICATION].Parameters)
    binary = {"schema": {"type": "string", "format": "binary"}}
    multipart = {"image": {"type": "string", "format": "binary"}, **parameters["properties"]}
    return {
        "required": True,
        "content": {
            "image/*": binary,
            "application/octet-stream": binary,
            "multipart/form-data": {
                "schema": {"type": "object", "properties": multipart, "required": ["image"]}
            },
            **_json_envelope(
                {"type": "string", "description": "base64 image bytes or a data: URL"}, parameters
            ),
        },
    }


def _text_to_image_request() -> dict[str, Any]:
    prompt = {"type": "string", "minLength": 1, "description": "The prompt"}
    parameters = model_schema(TASKS[TEXT_TO_IMAGE].Parameters)
    return {"required": True, "content": _json_envelope(prompt, parameters)}


def _json_envelope(inputs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The `{"inputs", "parameters"}` JSON body of the Inference API."""
    properties = {"inputs": inputs, "parameters": parameters}
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": properties,
    }
    return {JSON: {"schema": schema}}


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "title": "Error",
}
_REQUESTS = {IMAGE_CLASSIFICATION: _classification_request, TEXT_TO_IMAGE: _text_to_image_request}
_BATCH_HEADERS = {
    "X-Batch-Size": {"description": "Requests in the batch that served it", "schema": {"type": "integer"}},
    "X-Queue-Time-Ms": {"description": "Time it waited for the device", "schema": {"type": "number"}},
    "X-Inference-Time-Ms": {"description": "Device time of its batch", "schema": {"type": "number"}},
}
_RESPONSES: dict[str, dict[str, Any]] = {
    IMAGE_CLASSIFICATION: {
        "description": "Labels and scores, best first",
        "headers": _BATCH_HEADERS,
        "content": {
            JSON: {
                "schema": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["label", "score"],
                        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                    },
                }
            }
        },
    },
    TEXT_TO_IMAGE: {
        "description": "The image (by Accept: PNG by default, JPEG, WebP), JSON with base64 images, or a "
        "progress stream (text/event-stream)",
        "headers": {
            "X-Seed": {"description": "The seed of the image", "schema": {"type": "integer"}},
            **_BATCH_HEADERS,
        },
        "content": {
            **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in ENCODINGS},
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["images", "media_type", "seed", "timings"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                        "media_type": {"type": "string"},
                        "seed": {"type": "integer"},
                        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
                    },
                }
            },
            streaming.MEDIA_TYPE: {
                "schema": {"type": "string", "description": "Server-Sent Events: progress..., image..., done"}
            },
        },
    },
}

PROTOCOL = Protocol(
    name=routes.HUGGINGFACE,
    add_routes=add_routes,
    error_response=error_response,
    document=document,
    routes=routes.PREDICT_PATHS,
    error_schema=ERROR_SCHEMA,
)
