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
        return JSONResponse(
            await until_disconnected(request, runtime.predict(inputs, params, deadline=deadline))
        )

    for path in routes.PREDICT_PATHS:
        app.add_api_route(
            path,
            predict,
            methods=["POST"],
            summary="Run the model on one input (Hugging Face Inference API)",
            operation_id="predict" if path == routes.PREDICT else "predict_root",
        )


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
    generated: Generated = await until_disconnected(request, runtime.run(prepared, deadline=deadline))
    return await runtime.offload(_image_response, generated, media_type)


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
    return {
        "required": True,
        "content": {
            "image/*": binary,
            "application/octet-stream": binary,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **parameters["properties"],
                    },
                    "required": ["image"],
                }
            },
            JSON: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "string", "description": "base64 image bytes or a data: URL"},
                        "parameters": parameters,
                    },
                }
            },
        },
    }


def _text_to_image_request() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "string", "minLength": 1, "description": "The prompt"},
                        "parameters": model_schema(TASKS[TEXT_TO_IMAGE].Parameters),
                    },
                }
            }
        },
    }


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "title": "Error",
}
_REQUESTS = {IMAGE_CLASSIFICATION: _classification_request, TEXT_TO_IMAGE: _text_to_image_request}
_RESPONSES: dict[str, dict[str, Any]] = {
    IMAGE_CLASSIFICATION: {
        "description": "Labels and scores, best first",
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
        "headers": {"X-Seed": {"description": "The seed of the image", "schema": {"type": "integer"}}},
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
