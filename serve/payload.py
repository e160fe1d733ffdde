"""Reading request bodies the way the Hugging Face Inference API accepts them.

Binary-input tasks (images) take any of:
- raw bytes, with or without a Content-Type (the format is sniffed later); parameters in the query string;
- `multipart/form-data` with one file field (preferably named `image`); parameters as form fields or as
  one `parameters` field holding JSON;
- JSON `{"inputs": "<base64 or data: URL>", "parameters": {...}}`.
JSON-input tasks (prompts) take `{"inputs": "...", "parameters": {...}}`.

Parameters are returned as parsed; the runtime validates them strictly against the task's pydantic model
(unknown fields and wrong types are 422, see `validate`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from python_multipart.multipart import FormParser, parse_options_header

from serve.errors import BadRequest, InvalidParameters

ParamsT = TypeVar("ParamsT", bound=BaseModel)

_FILE_FIELD = "image"
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


class StrictModel(BaseModel):
    """Base of request models: unknown fields are errors, and types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _BinaryEnvelope(StrictModel):
    inputs: str
    parameters: dict[str, Any] | None = None


def media_type(content_type: str) -> str:
    """The bare, lower-case media type of a Content-Type header ("" when absent)."""
    return content_type.split(";", 1)[0].strip().lower()


def parse_json(data: bytes) -> Any:
    """Parse a JSON body, raising `BadRequest` with the position of the first error."""
    if not data:
        raise BadRequest("the request body is empty: send a JSON object")
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except (
        ValueError,
        RecursionError,
    ) as error:  # JSONDecodeError, UnicodeDecodeError, huge ints, deep nesting, duplicate keys
        raise BadRequest(f"the body is not valid JSON: {error}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice: parsers disagree on which value wins, so the request is
    ambiguous (and proxies or clients in front may have read the other one)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {duplicate!r} appears twice in one object")
    return document


def validate(model: type[ParamsT], document: Any, *, where: str = "") -> ParamsT:
    """Validate `document` against `model`, raising `InvalidParameters` that names every bad field."""
    if document is None:
        document = {}
    try:
        return model.model_validate(document)
    except ValidationError as error:
        fields = [
            (tuple(str(part) for part in item["loc"]), _message(item), item["type"])
            for item in error.errors(include_url=False)
        ]
        raise InvalidParameters(describe_validation_error(error, prefix=where), fields) from None


def describe_validation_error(error: ValidationError, *, prefix: str = "") -> str:
    """One line naming each invalid field and why, e.g. "parameters.top_k: must be >= 1"."""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        parts.append(f"{location or 'body'}: {_message(item)}")
    return "; ".join(parts)


def _message(item: Any) -> str:
    return "unknown field" if item["type"] == "extra_forbidden" else item["msg"]


def binary_request(data: bytes, content_type: str, query: Iterable[tuple[str, str]]) -> tuple[bytes, Any]:
    """The input bytes and the (not yet validated) parameters of a binary-input request."""
    kind = media_type(content_type)
    if kind == "application/json":
        envelope = validate(_BinaryEnvelope, parse_json(data))
        return decode_base64_input(envelope.inputs), envelope.parameters
    if kind == "multipart/form-data":
        return parse_multipart(data, content_type)
    return data, _loose_fields(query)


def decode_base64_input(inputs: str) -> bytes:
    """Decode the `inputs` string of a JSON request: base64 (standard or URL-safe) or a `data:` URL."""
    text = inputs.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidParameters(
            "inputs: URLs are not fetched unless the operator allows their hosts (BAKE_REMOTE_INPUT_HOSTS): "
            "send the bytes"
        )
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise InvalidParameters("inputs: a data: URL must be base64-encoded (data:<type>;base64,...)")
    text = "".join(text.split()).translate(_URLSAFE_TO_STANDARD)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("inputs is not valid base64") from None


def parse_multipart(data: bytes, content_type: str) -> tuple[bytes, dict[str, Any]]:
    """Return the single uploaded file (preferably the field named `image`) and the other fields."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary parameter in the Content-Type")
    files: dict[str, bytes] = {}
    fields: list[tuple[str, str]] = []

    def on_field(field: Any) -> None:
        name = (field.field_name or b"").decode("utf-8", "replace")
        fields.append((name, (field.value or b"").decode("utf-8", "replace")))

    def on_file(file: Any) -> None:
        name = (file.field_name or b"").decode("utf-8", "replace")
        handle = file.file_object
        handle.seek(0)
        files[name] = handle.read()

    parser = FormParser(
        "multipart/form-data",
        on_field,
        on_file,
        boundary=boundary,
        config={"MAX_MEMORY_FILE_SIZE": len(data) + 1},
    )
    try:
        parser.write(data)
        parser.finalize()
    except Exception as error:  # python-multipart raises several unrelated types on malformed input
        raise BadRequest(f"the multipart body is malformed: {error}") from None
    if _FILE_FIELD in files:
        payload = files[_FILE_FIELD]
    elif len(files) == 1:
        payload = next(iter(files.values()))
    elif not files:
        raise BadRequest(
            f"the multipart body has no file: upload the image in a file field named {_FILE_FIELD!r}"
        )
    else:
        raise BadRequest(
            f"the multipart body has {len(files)} files ({', '.join(sorted(files))}): "
            f"send one, or name the image's field {_FILE_FIELD!r}"
        )
    if any(name == "parameters" for name, _ in fields):
        if len(fields) > 1:
            raise InvalidParameters(
                "send parameters either as one JSON 'parameters' field or as fields, not both"
            )
        if not fields[0][1].strip():
            raise InvalidParameters("parameters: the field is empty; send a JSON object")
        document = parse_json(fields[0][1].encode())
        if not isinstance(document, dict):
            raise InvalidParameters("parameters: must be a JSON object")
        return payload, document
    return payload, _loose_fields(fields)


def _loose_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form fields and query parameters are strings: read each as JSON when it parses (3 -> int)."""
    result: dict[str, Any] = {}
    for name, value in pairs:
        try:
            result[name] = json.loads(value)
        except (ValueError, RecursionError):
            result[name] = value
    return result
