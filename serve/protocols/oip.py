"""The Open Inference Protocol v2 (REST) that KServe and Triton speak, so `tritonclient` and KServe clients
work.

- `GET /v2` (server metadata), `/v2/health/live`, `/v2/health/ready`, `GET /v2/models/{name}` (inputs and
  outputs with datatype and shape), `/v2/models/{name}/ready`, and the same under `/versions/{version}`.
- `POST /v2/models/{name}/infer`. Image classification: input `image`, BYTES, one element per image (a batch
  in one request: its images share the batcher with every other request), parameters `top_k` and
  `function_to_apply`; outputs `label` (BYTES) and `score` (FP32), shape [images, top_k]. Text-to-image:
  input `prompt`, BYTES, one prompt per element, parameters as the Hugging Face task's; outputs `image`
  (BYTES, PNG) and `seed` (INT64), one per prompt (`num_images_per_prompt` must be 1).
- BYTES elements come as JSON strings (images base64-encoded, as KServe's examples send them; prompts as
  text) or through the binary tensor data extension (`Inference-Header-Content-Length`, each element a
  4-byte little-endian length and its bytes: `binary_data=True` in tritonclient). Outputs are binary when an
  output asks for it (`parameters.binary_data`) or the request does (`parameters.binary_data_output`).
- Errors: `{"error": "<message>"}` with the status of the failure.

The model's name is `BAKE_MODEL_NAME` (default: the model id's last part); its one version is "1".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve import __version__
from serve.contract import routes
from serve.contract.tasks import TEXT_TO_IMAGE
from serve.errors import BadRequest, InvalidParameters, PayloadTooLarge, RequestError, StatusError
from serve.http import read_body, until_disconnected
from serve.image_encoding import encode_image
from serve.payload import parse_json
from serve.protocols import huggingface
from serve.protocols.base import Protocol
from serve.runtime import Runtime, State
from serve.tasks.text_to_image import Generated

HEADER_LENGTH = "inference-header-content-length"
VERSION = "1"
EXTENSIONS = ["binary_tensor_data"]
_PROTOCOL_PARAMETERS = {"binary_data_output", "content_type", "headers"}
"""Request parameters of the protocol itself, not of the model."""
_LENGTH = struct.Struct("<I")
_END = object()
_JSON_TYPES = {str: "string", dict: "object", list: "array"}


def add_routes(app: FastAPI, runtime: Runtime) -> None:
    """Mount the v2 routes on `app`."""

    def model(name: str, version: str | None = None) -> None:
        if name != runtime.model_name or version not in (None, VERSION):
            raise StatusError(
                f"model {name!r}"
                + (f" version {version!r}" if version else "")
                + f" is not served here: this "
                f"server serves {runtime.model_name!r} version {VERSION}",
                404,
            )

    @app.get(routes.OIP_SERVER, summary="OIP: server metadata", tags=["oip"])
    async def server() -> dict[str, Any]:
        return {"name": "bake", "version": __version__, "extensions": EXTENSIONS}

    @app.get(routes.OIP_LIVE, summary="OIP: the server is live", tags=["oip"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(routes.OIP_READY, summary="OIP: the server is ready", tags=["oip"])
    async def ready() -> Response:
        return _readiness(runtime)

    @app.get(routes.OIP_MODEL, summary="OIP: model metadata", tags=["oip"])
    @app.get(routes.OIP_VERSION, summary="OIP: model metadata", tags=["oip"])
    async def metadata(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        model(model_name, model_version)
        return _metadata(runtime)

    @app.get(routes.OIP_MODEL_READY, summary="OIP: the model is ready", tags=["oip"])
    @app.get(routes.OIP_VERSION_READY, summary="OIP: the model is ready", tags=["oip"])
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        model(model_name, model_version)
        return _readiness(runtime, name=model_name)

    @app.post(routes.OIP_INFER, summary="OIP: run the model", tags=["oip"])
    @app.post(routes.OIP_VERSION_INFER, summary="OIP: run the model", tags=["oip"])
    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        model(model_name, model_version)
        deadline = runtime.deadline()
        task = runtime.ready_task()
        header, tensors = _parse(
            await read_body(request, runtime.settings.max_body_bytes, deadline=deadline), request
        )
        parameters = {
            key: value
            for key, value in (header.get("parameters") or {}).items()
            if key not in _PROTOCOL_PARAMETERS
        }
        params = runtime.parameters(parameters)
        name = "prompt" if task.text_input else "image"
        if name not in tensors:
            raise BadRequest(f"inputs: send one input named {name!r} (BYTES)")
        if not tensors[name]:
            raise BadRequest(f"inputs: {name!r} holds no elements")
        if len(tensors[name]) > runtime.settings.max_queue:
            raise PayloadTooLarge(
                f"inputs: {name!r} holds {len(tensors[name])} elements, more than the server queues at once "
                f"({runtime.settings.max_queue}, BAKE_MAX_QUEUE): split the request"
            )
        elements = [_decode_element(element, text=task.text_input) for element in tensors[name]]
        if task.name == TEXT_TO_IMAGE and getattr(params, "num_images_per_prompt", 1) != 1:
            raise InvalidParameters("parameters.num_images_per_prompt: send one prompt per image instead")
        results = await until_disconnected(
            request,
            asyncio.gather(*(runtime.predict(element, params, deadline=deadline) for element in elements)),
        )
        outputs = await runtime.offload(_outputs, results)
        binary = _binary_outputs(header, [output["name"] for output in outputs])
        return _response(
            {
                "model_name": runtime.model_name,
                "model_version": VERSION,
                "id": header.get("id", ""),
                "outputs": [],
            },
            outputs,
            binary,
            header.get("outputs"),
        )


def error_response(error: RequestError) -> Response:
    """`{"error": message}` with the error's status."""
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


def _readiness(runtime: Runtime, *, name: str | None = None) -> Response:
    ready = runtime.state is State.READY
    body: dict[str, Any] = {"name": name, "ready": ready} if name else {"ready": ready}
    return JSONResponse(body, status_code=200 if ready else 503)


def _metadata(runtime: Runtime) -> dict[str, Any]:
    task = runtime.ready_task()
    if task.text_input:
        inputs = [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}]
        outputs = [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "seed", "datatype": "INT64", "shape": [-1]},
        ]
    else:
        inputs = [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
        ]
    return {
        "name": runtime.model_name,
        "versions": [VERSION],
        "platform": "pytorch",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"task": task.name, "model": runtime.settings.model},
    }


def _parse(body: bytes, request: Request) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The JSON header and every input's elements (flattened), whatever the encoding."""
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        header, binary = parse_json(body), b""
    else:
        if not declared.isdigit() or int(declared) > len(body):
            raise BadRequest(f"{HEADER_LENGTH}: {declared!r} is not the length of the JSON header")
        header, binary = parse_json(body[: int(declared)]), body[int(declared) :]
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadRequest("the request must be a JSON object with an 'inputs' list")
    _require_type(header, "id", str, "the request's")
    _require_type(header, "parameters", dict, "the request's")
    _require_type(header, "outputs", list, "the request's")
    tensors: dict[str, list[Any]] = {}
    offset = 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest("every input must be an object with a 'name'")
        name = tensor["name"]
        if tensor.get("datatype") != "BYTES":
            raise BadRequest(f"input {name!r}: datatype must be BYTES, not {tensor.get('datatype')!r}")
        _require_type(tensor, "parameters", dict, f"input {name!r}:")
        shape = tensor.get("shape")
        if shape is not None and not (
            isinstance(shape, list) and all(type(side) is int and side >= 0 for side in shape)
        ):
            raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input {name!r}: binary_data_size {size!r} does not fit the body")
            tensors[name] = _unpack_bytes(binary[offset : offset + size], name)
            offset += size
        elif isinstance(tensor.get("data"), list):
            tensors[name] = _flatten(tensor["data"])
        else:
            raise BadRequest(f"input {name!r} has no 'data' list nor binary data")
        if shape is not None and math.prod(shape) != len(tensors[name]):
            raise BadRequest(
                f"input {name!r}: shape {shape} holds {math.prod(shape)} elements, not {len(tensors[name])}"
            )
    return header, tensors


def _require_type(document: dict[str, Any], key: str, kind: type, owner: str) -> None:
    """`BadRequest` unless `document[key]` is absent, null or of type `kind`."""
    value = document.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"{owner} {key!r} must be a JSON {_JSON_TYPES[kind]}, not {type(value).__name__}")


def _unpack_bytes(data: bytes, name: str) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise BadRequest(f"input {name!r}: truncated binary BYTES element")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise BadRequest(f"input {name!r}: truncated binary BYTES element")
        elements.append(data[offset : offset + length])
        offset += length
    return elements


def _flatten(data: list[Any]) -> list[Any]:
    """The elements of a (nested) tensor, row-major; iterative, so deep nesting cannot exhaust the stack."""
    elements: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            elements.append(item)
    return elements


def _decode_element(element: Any, *, text: bool) -> bytes | str:
    """A prompt as text, an image as bytes (JSON strings of images are base64)."""
    if isinstance(element, bytes):
        if not text:
            return element
        try:
            return element.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("prompt: not valid UTF-8") from None
    if not isinstance(element, str):
        raise BadRequest(f"BYTES elements must be strings, not {type(element).__name__}")
    if text:
        return element
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image: a BYTES element in JSON must be the image's bytes in base64") from None


def _outputs(results: Sequence[Any]) -> list[dict[str, Any]]:
    """The output tensors of every element's result (CPU work: encoding images)."""
    if results and isinstance(results[0], Generated):
        images = [encode_image(result.images[0], "image/png") for result in results]
        return [
            {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": images},
            {"name": "seed", "datatype": "INT64", "shape": [len(results)], "data": [r.seed for r in results]},
        ]
    width = min(len(result) for result in results)
    labels = [item["label"] for result in results for item in result[:width]]
    scores = [item["score"] for result in results for item in result[:width]]
    shape = [len(results), width]
    return [
        {"name": "label", "datatype": "BYTES", "shape": shape, "data": labels},
        {"name": "score", "datatype": "FP32", "shape": shape, "data": scores},
    ]


def _binary_outputs(header: dict[str, Any], names: list[str]) -> set[str]:
    """The outputs the client asked to get as binary data."""
    wanted = set(names) if (header.get("parameters") or {}).get("binary_data_output") else set()
    for output in header.get("outputs") or []:
        if isinstance(output, dict) and isinstance(output.get("name"), str):
            if (output.get("parameters") or {}).get("binary_data"):
                wanted.add(output["name"])
            else:
                wanted.discard(output["name"])
    return wanted


def _response(
    body: dict[str, Any], outputs: list[dict[str, Any]], binary: set[str], requested: Any
) -> Response:
    names = {item.get("name") for item in requested or [] if isinstance(item, dict)}
    chunks = []
    for output in outputs:
        if names and output["name"] not in names:
            continue
        if output["name"] in binary:
            data = _pack(output)
            chunks.append(data)
            body["outputs"].append(
                {
                    **{k: output[k] for k in ("name", "datatype", "shape")},
                    "parameters": {"binary_data_size": len(data)},
                }
            )
        else:
            values = output["data"]
            if output["datatype"] == "BYTES":
                values = [v if isinstance(v, str) else base64.b64encode(v).decode("ascii") for v in values]
            body["outputs"].append({**output, "data": values})
    if not chunks:
        return JSONResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _pack(output: dict[str, Any]) -> bytes:
    """An output tensor in the binary extension's layout."""
    if output["datatype"] == "BYTES":
        parts = []
        for value in output["data"]:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            parts.append(_LENGTH.pack(len(raw)) + raw)
        return b"".join(parts)
    dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
    return np.asarray(output["data"], dtype=dtype).tobytes()


def document(schema: dict[str, Any], task: str) -> None:
    """The v2 inference request and response, as the protocol defines them (task-independent)."""
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["InferenceTensor"] = tensor
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferenceTensor"}},
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
    }
    response = {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferenceTensor"}},
        },
    }
    readiness = {
        "description": "Not ready",
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["ready"], "properties": {"ready": {"const": False}}}
            }
        },
    }
    for path in (routes.OIP_READY, routes.OIP_MODEL_READY, routes.OIP_VERSION_READY):
        schema["paths"][path]["get"]["responses"]["503"] = readiness
    for path in (routes.OIP_INFER, routes.OIP_VERSION_INFER):
        operation = schema["paths"][path]["post"]
        operation["requestBody"] = {"content": {"application/json": {"schema": request}}}
        operation["responses"]["200"] = {
            "description": "The outputs",
            "content": {"application/json": {"schema": response}},
        }


PROTOCOL = Protocol(
    name=routes.OIP,
    add_routes=add_routes,
    error_response=error_response,
    document=document,
    routes=(
        routes.OIP_SERVER,
        routes.OIP_LIVE,
        routes.OIP_READY,
        routes.OIP_MODEL,
        routes.OIP_MODEL_READY,
        routes.OIP_INFER,
    ),
    error_schema=huggingface.ERROR_SCHEMA,
)
