"""The OpenAI images API for text-to-image models: `OpenAI(base_url=URL + "/v1").images.generate(...)` works.

- `POST /v1/images/generations` with `prompt`, `n` (images, each of seed + j), `size` ("512x512"; "auto": the
  model's own), `response_format` (`b64_json`, or `url`: a PNG data URL, since the server keeps no files),
  `output_format` (png, jpeg, webp), `model` (the served model's name or id, or none), and bake's extras
  `seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`, `scheduler`. Fields of OpenAI's API that
  choose among OpenAI's own models' behaviour (`quality`, `style`, `user`, `background`, `moderation`) are
  accepted and do nothing. Answers `{"created", "data": [{"b64_json"} | {"url"}], "output_format", "size"}`.
- `GET /v1/models`: the one served model.
- Errors: `{"error": {"message", "type", "param", "code"}}` with the status of the failure.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.contract import routes
from serve.contract.tasks import TEXT_TO_IMAGE
from serve.errors import InvalidParameters, RequestError, StatusError
from serve.http import read_body, until_disconnected
from serve.image_encoding import encode_image
from serve.payload import StrictModel, parse_json, validate
from serve.protocols.base import Protocol, model_schema
from serve.runtime import Runtime
from serve.tasks.text_to_image import Generated

_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ERROR_SCHEMA = {
    "type": "object",
    "title": "OpenAIError",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "server_error",
}


class ImagesRequest(StrictModel):
    """`POST /v1/images/generations`: OpenAI's fields, and bake's extras."""

    prompt: Annotated[str, Field(min_length=1)]
    model: str | None = None
    n: Annotated[int, Field(ge=1)] | None = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] | None = "png"
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    background: str | None = None
    moderation: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None


def add_routes(app: FastAPI, runtime: Runtime) -> None:
    """Mount the images and models routes on `app`."""

    @app.get(routes.OPENAI_MODELS, summary="OpenAI: the served model", tags=["openai"])
    async def models() -> dict[str, Any]:
        created = int(runtime.started_at)
        return {
            "object": "list",
            "data": [{"id": runtime.model_name, "object": "model", "created": created, "owned_by": "bake"}],
        }

    @app.post(routes.OPENAI_IMAGES, summary="OpenAI: generate images from a prompt", tags=["openai"])
    async def generate(request: Request) -> Response:
        deadline = runtime.deadline()
        task = runtime.ready_task()
        if task.name != TEXT_TO_IMAGE:
            raise StatusError(f"{runtime.settings.model} is an {task.name} model: it makes no images", 404)
        body = validate(
            ImagesRequest,
            parse_json(await read_body(request, runtime.settings.max_body_bytes, deadline=deadline)),
        )
        if body.model not in (None, runtime.model_name, runtime.settings.model):
            raise StatusError(
                f"the model {body.model!r} is not served here; this server serves {runtime.model_name!r}", 404
            )
        parameters: dict[str, Any] = {"num_images_per_prompt": body.n or 1}
        if body.size not in (None, "auto"):
            width, _, height = (body.size or "").partition("x")
            if not (width.isdigit() and height.isdigit()):
                raise InvalidParameters(
                    f"size: {body.size!r} is not WIDTHxHEIGHT, such as 512x512",
                    [(("size",), "not WIDTHxHEIGHT", "value_error")],
                )
            parameters |= {"width": int(width), "height": int(height)}
        for extra in ("seed", "negative_prompt", "num_inference_steps", "guidance_scale", "scheduler"):
            if (value := getattr(body, extra)) is not None:
                parameters[extra] = value
        params = runtime.parameters(parameters, where="")
        generated: Generated = await until_disconnected(
            request, runtime.predict(body.prompt, params, deadline=deadline)
        )
        media_type = _FORMATS[body.output_format or "png"]
        images = await runtime.offload(
            lambda: [encode_image(image, media_type) for image in generated.images]
        )
        encoded = [base64.b64encode(data).decode("ascii") for data in images]
        if body.response_format == "url":
            data = [{"url": f"data:{media_type};base64,{text}"} for text in encoded]
        else:
            data = [{"b64_json": text} for text in encoded]
        width, height = generated.images[0].size
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "output_format": body.output_format or "png",
                "size": f"{width}x{height}",
            }
        )


def error_response(error: RequestError) -> Response:
    """OpenAI's error object, naming the first bad field as `param` when there is one."""
    param = ".".join(error.fields[0][0]) if isinstance(error, InvalidParameters) and error.fields else None
    kind = _ERROR_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    body = {"error": {"message": error.message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def document(schema: dict[str, Any], task: str) -> None:
    """The images request as this server takes it."""
    operation = schema["paths"][routes.OPENAI_IMAGES]["post"]
    operation["requestBody"] = {"content": {"application/json": {"schema": model_schema(ImagesRequest)}}}
    operation["responses"]["404"] = {
        "description": "The model named is not served here, or makes no images",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }


PROTOCOL = Protocol(
    name=routes.OPENAI,
    add_routes=add_routes,
    error_response=error_response,
    document=document,
    routes=(routes.OPENAI_IMAGES, routes.OPENAI_MODELS),
    error_schema=ERROR_SCHEMA,
)
