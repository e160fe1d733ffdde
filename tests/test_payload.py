"""Unit tests for `serve.payload`: request bodies as the Hugging Face Inference API sends them.

Raw bytes with query parameters, multipart uploads and JSON envelopes with base64 inputs, validated
strictly against `ClassificationParameters`; every client mistake must become a 400 or 422 with a message
naming what is wrong (never a 500).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest

from serve.errors import BadRequest, InvalidParameters, RequestError
from serve.payload import binary_request, decode_base64_input, media_type, parse_json, validate
from serve.tasks.image_classification import ClassificationParameters
from tests.fixtures.images import photo

IMAGE = photo(24, 16, fmt="PNG")
"""Real image bytes: binary, with CR, LF and NUL bytes a careless parser would mangle."""
OTHER = photo(16, 24, seed=1, fmt="JPEG")
BOUNDARY = "----bake-test-boundary-7MA4YWxkTrZu0gW"
DEFAULT = ClassificationParameters()

Part = tuple[str, str | None, bytes]
"""(field name, file name or None for a plain field, content)."""


def multipart(parts: Sequence[Part], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """Encode `parts` as a multipart/form-data body; returns (body, Content-Type)."""
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        headers = ""
        if filename is not None:
            disposition += f'; filename="{filename}"'
            headers = "Content-Type: application/octet-stream\r\n"
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n".encode()
            + content
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def json_body(document: Any) -> bytes:
    return json.dumps(document).encode()


def classify(data: bytes, content_type: str = "", query: Sequence[tuple[str, str]] = ()) -> tuple[bytes, Any]:
    payload, document = binary_request(data, content_type, query)
    return payload, validate(ClassificationParameters, document, where="parameters")


# -- media types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", ""),
        ("image/jpeg", "image/jpeg"),
        ("Application/JSON; charset=UTF-8", "application/json"),
        (" multipart/form-data ; boundary=x", "multipart/form-data"),
    ],
)
def test_media_type(header: str, expected: str) -> None:
    assert media_type(header) == expected


# -- raw bytes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["", "image/png", "image/jpeg", "application/octet-stream", "text/plain"]
)
def test_raw_bytes_are_passed_through(content_type: str) -> None:
    data, params = classify(IMAGE, content_type)
    assert data == IMAGE
    assert params == DEFAULT


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([("top_k", "3")], ClassificationParameters(top_k=3)),
        ([("function_to_apply", "sigmoid")], ClassificationParameters(function_to_apply="sigmoid")),
        ([("function_to_apply", "none")], ClassificationParameters(function_to_apply="none")),
        (
            [("top_k", "1"), ("function_to_apply", "softmax")],
            ClassificationParameters(top_k=1, function_to_apply="softmax"),
        ),
    ],
)
def test_raw_bytes_with_query_parameters(
    query: list[tuple[str, str]], expected: ClassificationParameters
) -> None:
    data, params = classify(IMAGE, "image/png", query)
    assert data == IMAGE
    assert params == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([("top_k", "three")], "parameters.top_k: Input should be a valid integer"),
        ([("top_k", "2.5")], "parameters.top_k: Input should be a valid integer"),
        ([("top_k", "true")], "parameters.top_k: Input should be a valid integer"),
        ([("top_k", "0")], "parameters.top_k: Input should be greater than or equal to 1"),
        ([("top_k", "-2")], "parameters.top_k: Input should be greater than or equal to 1"),
        (
            [("function_to_apply", "tanh")],
            "parameters.function_to_apply: Input should be 'softmax', 'sigmoid' or 'none'",
        ),
        ([("topk", "3")], "parameters.topk: unknown field"),
    ],
)
def test_invalid_query_parameters(query: list[tuple[str, str]], expected: str) -> None:
    with pytest.raises(InvalidParameters) as caught:
        classify(IMAGE, "image/png", query)
    assert caught.value.status == 422
    assert expected in caught.value.message


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InvalidParameters) as caught:
        classify(IMAGE, "", [("top_k", "0"), ("colour", "red")])
    assert "parameters.top_k" in caught.value.message
    assert "parameters.colour: unknown field" in caught.value.message


def test_huge_integer_in_query_is_a_client_error() -> None:
    """`json.loads` raises a plain ValueError (not JSONDecodeError) past 4300 digits: never a 500."""
    with pytest.raises(RequestError) as caught:
        classify(IMAGE, "image/png", [("top_k", "9" * 5000)])
    assert caught.value.status in (400, 422)


# -- multipart ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["image", "file", "inputs", "upload"])
def test_multipart_single_file_any_name(name: str) -> None:
    body, content_type = multipart([(name, "cat.png", IMAGE)])
    data, params = classify(body, content_type)
    assert data == IMAGE
    assert params == DEFAULT


@pytest.mark.parametrize("order", ["image-first", "image-last"])
def test_multipart_prefers_the_field_named_image(order: str) -> None:
    parts: list[Part] = [("image", "cat.png", IMAGE), ("thumbnail", "small.jpg", OTHER)]
    if order == "image-last":
        parts.reverse()
    body, content_type = multipart(parts)
    data, _ = classify(body, content_type)
    assert data == IMAGE


def test_multipart_two_files_without_image_field() -> None:
    body, content_type = multipart([("first", "a.png", IMAGE), ("second", "b.jpg", OTHER)])
    with pytest.raises(BadRequest) as caught:
        classify(body, content_type)
    assert caught.value.status == 400
    assert "2 files" in caught.value.message
    assert "first, second" in caught.value.message
    assert "'image'" in caught.value.message


@pytest.mark.parametrize("parts", [[], [("top_k", None, b"3")]], ids=["empty", "fields-only"])
def test_multipart_without_a_file(parts: list[Part]) -> None:
    body, content_type = multipart(parts)
    with pytest.raises(BadRequest) as caught:
        classify(body, content_type)
    assert "no file" in caught.value.message
    assert "'image'" in caught.value.message


def test_multipart_with_individual_fields() -> None:
    body, content_type = multipart(
        [("image", "cat.png", IMAGE), ("top_k", None, b"3"), ("function_to_apply", None, b"sigmoid")]
    )
    data, params = classify(body, content_type)
    assert data == IMAGE
    assert params == ClassificationParameters(top_k=3, function_to_apply="sigmoid")
    assert type(params.top_k) is int


def test_multipart_with_a_parameters_json_field() -> None:
    document = json.dumps({"top_k": 2, "function_to_apply": "none"}).encode()
    body, content_type = multipart([("parameters", None, document), ("image", "cat.png", IMAGE)])
    data, params = classify(body, content_type)
    assert data == IMAGE
    assert params == ClassificationParameters(top_k=2, function_to_apply="none")


def test_multipart_parameters_field_is_validated() -> None:
    document = json.dumps({"top_k": "2", "extra": 1}).encode()
    body, content_type = multipart([("image", "cat.png", IMAGE), ("parameters", None, document)])
    with pytest.raises(InvalidParameters) as caught:
        classify(body, content_type)
    assert "parameters.top_k: Input should be a valid integer" in caught.value.message
    assert "parameters.extra: unknown field" in caught.value.message


def test_multipart_parameters_and_fields_together_are_refused() -> None:
    body, content_type = multipart(
        [("image", "cat.png", IMAGE), ("parameters", None, b'{"top_k": 2}'), ("top_k", None, b"3")]
    )
    with pytest.raises(InvalidParameters, match="not both"):
        classify(body, content_type)


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        (b"[1, 2]", InvalidParameters, "parameters: must be a JSON object"),
        (b"3", InvalidParameters, "parameters: must be a JSON object"),
        (b"{top_k: 2}", BadRequest, "not valid JSON"),
        (b"", InvalidParameters, "parameters: the field is empty"),
    ],
)
def test_multipart_bad_parameters_field(document: bytes, error: type[RequestError], message: str) -> None:
    body, content_type = multipart([("image", "cat.png", IMAGE), ("parameters", None, document)])
    with pytest.raises(error) as caught:
        classify(body, content_type)
    assert type(caught.value) is error
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([("top_k", b"0")], "parameters.top_k: Input should be greater than or equal to 1"),
        ([("top_k", b"many")], "parameters.top_k: Input should be a valid integer"),
        ([("top_k", b"1.5")], "parameters.top_k: Input should be a valid integer"),
        ([("threshold", b"0.5")], "parameters.threshold: unknown field"),
    ],
)
def test_multipart_invalid_fields(fields: list[tuple[str, bytes]], expected: str) -> None:
    body, content_type = multipart([("image", "cat.png", IMAGE), *((n, None, v) for n, v in fields)])
    with pytest.raises(InvalidParameters) as caught:
        classify(body, content_type)
    assert expected in caught.value.message


def test_multipart_without_boundary() -> None:
    body, _ = multipart([("image", "cat.png", IMAGE)])
    with pytest.raises(BadRequest, match="boundary"):
        classify(body, "multipart/form-data")


def test_multipart_with_the_wrong_boundary_has_no_file() -> None:
    body, _ = multipart([("image", "cat.png", IMAGE)])
    with pytest.raises(BadRequest) as caught:
        classify(body, "multipart/form-data; boundary=not-the-one-used")
    assert caught.value.status == 400


def test_multipart_quoted_boundary() -> None:
    body, _ = multipart([("image", "cat.png", IMAGE)])
    data, _ = classify(body, f'multipart/form-data; boundary="{BOUNDARY}"')
    assert data == IMAGE


# -- JSON envelope -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Bytes whose base64 uses both '+' and '/' (so the URL-safe form uses '-' and '_'), with a length that
# needs padding.
TRICKY = bytes([0xFB, 0xEF, 0xFF, 0xFE, 0x3E, 0x3F, 0xF0])


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (_b64(IMAGE), IMAGE),
        (f"data:image/png;base64,{_b64(IMAGE)}", IMAGE),
        (f"data:application/octet-stream;base64,{_b64(OTHER)}", OTHER),
        (_b64(TRICKY), TRICKY),
        (base64.urlsafe_b64encode(TRICKY).decode().rstrip("="), TRICKY),
        (base64.urlsafe_b64encode(IMAGE).decode().rstrip("="), IMAGE),
        (_b64(IMAGE).rstrip("="), IMAGE),
        (base64.encodebytes(IMAGE).decode(), IMAGE),  # MIME style: wrapped lines
        (f"  {_b64(OTHER)}\n", OTHER),
    ],
    ids=[
        "base64",
        "data-url",
        "data-url-octet",
        "tricky",
        "urlsafe-unpadded",
        "urlsafe-image",
        "unpadded",
        "wrapped",
        "whitespace",
    ],
)
def test_json_inputs(inputs: str, expected: bytes) -> None:
    data, params = classify(json_body({"inputs": inputs}), "application/json")
    assert data == expected
    assert params == DEFAULT


def test_tricky_bytes_exercise_both_base64_alphabets() -> None:
    standard, urlsafe = base64.b64encode(TRICKY).decode(), base64.urlsafe_b64encode(TRICKY).decode()
    assert "+" in standard and "/" in standard and standard.endswith("=")
    assert "-" in urlsafe and "_" in urlsafe


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_with_parameters(content_type: str) -> None:
    body = json_body({"inputs": _b64(IMAGE), "parameters": {"top_k": 3, "function_to_apply": "sigmoid"}})
    data, params = classify(body, content_type)
    assert data == IMAGE
    assert params == ClassificationParameters(top_k=3, function_to_apply="sigmoid")


@pytest.mark.parametrize("parameters", [None, {}])
def test_json_empty_parameters_give_defaults(parameters: dict[str, Any] | None) -> None:
    _, params = classify(json_body({"inputs": _b64(IMAGE), "parameters": parameters}), "application/json")
    assert params == DEFAULT


def test_json_query_string_is_not_used() -> None:
    _, params = classify(json_body({"inputs": _b64(IMAGE)}), "application/json", [("top_k", "2")])
    assert params == DEFAULT


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"inputs": "AAAA",}', b"inputs=AAAA", b"\xff\xfe\xfd", b"{'inputs': 'AAAA'}"],
)
def test_invalid_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        classify(body, "application/json")
    assert caught.value.status == 400
    assert "not valid JSON" in caught.value.message


def test_json_error_says_where() -> None:
    with pytest.raises(BadRequest, match=r"line 1 column \d+"):
        classify(b'{"inputs": "AAAA",}', "application/json")


def test_empty_json_body() -> None:
    with pytest.raises(BadRequest, match="empty"):
        classify(b"", "application/json")


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"top_k": "3"}, "parameters.top_k: Input should be a valid integer"),
        ({"top_k": 2.5}, "parameters.top_k: Input should be a valid integer"),
        ({"top_k": True}, "parameters.top_k: Input should be a valid integer"),
        ({"top_k": None}, "parameters.top_k: Input should be a valid integer"),
        ({"top_k": [3]}, "parameters.top_k: Input should be a valid integer"),
        ({"top_k": 0}, "parameters.top_k: Input should be greater than or equal to 1"),
        ({"top_k": -1}, "parameters.top_k: Input should be greater than or equal to 1"),
        (
            {"function_to_apply": "relu"},
            "parameters.function_to_apply: Input should be 'softmax', 'sigmoid' or 'none'",
        ),
        ({"function_to_apply": 1}, "parameters.function_to_apply"),
        ({"temperature": 0.5}, "parameters.temperature: unknown field"),
        ({"top_k": 2, "candidate_labels": ["a"]}, "parameters.candidate_labels: unknown field"),
    ],
)
def test_json_invalid_parameters(parameters: dict[str, Any], expected: str) -> None:
    body = json_body({"inputs": _b64(IMAGE), "parameters": parameters})
    with pytest.raises(InvalidParameters) as caught:
        classify(body, "application/json")
    assert caught.value.status == 422
    assert expected in caught.value.message


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"inputs": _b64(IMAGE), "options": {"wait_for_model": True}}, "options: unknown field"),
        ({"image": _b64(IMAGE)}, "inputs: Field required"),
        ({"inputs": 3}, "inputs: Input should be a valid string"),
        ({"inputs": [_b64(IMAGE)]}, "inputs: Input should be a valid string"),
        ({"inputs": _b64(IMAGE), "parameters": [1]}, "parameters: Input should be a valid dictionary"),
        ({"inputs": _b64(IMAGE), "parameters": "top_k=3"}, "parameters: Input should be a valid dictionary"),
        ([_b64(IMAGE)], "body: Input should be a valid dictionary"),
        ("just a string", "body: Input should be a valid dictionary"),
    ],
)
def test_json_envelope_errors(document: Any, expected: str) -> None:
    with pytest.raises(InvalidParameters) as caught:
        classify(json_body(document), "application/json")
    assert expected in caught.value.message


@pytest.mark.parametrize(
    "url", ["http://example.com/cat.jpg", "https://example.com/cat.jpg", "  https://x/y.png"]
)
def test_url_inputs_are_refused(url: str) -> None:
    with pytest.raises(InvalidParameters) as caught:
        classify(json_body({"inputs": url}), "application/json")
    assert caught.value.status == 422
    assert "URL" in caught.value.message
    assert "send the bytes" in caught.value.message


def test_data_url_must_be_base64() -> None:
    with pytest.raises(InvalidParameters, match="base64"):
        classify(json_body({"inputs": "data:image/png,%89PNG"}), "application/json")


@pytest.mark.parametrize(
    "inputs",
    ["not base64!", "AAAA*AAA", "A", "%%%%", "data:image/png;base64,@@@@", "AAAA====AAAA"],
)
def test_bad_base64_is_a_bad_request(inputs: str) -> None:
    with pytest.raises(BadRequest) as caught:
        classify(json_body({"inputs": inputs}), "application/json")
    assert caught.value.status == 400
    assert "inputs is not valid base64" in caught.value.message


@pytest.mark.parametrize("inputs", ["abc-!!!!", "ab-_*cd", "aGVsbG8-~~"])
def test_bad_urlsafe_base64_is_a_bad_request(inputs: str) -> None:
    """URL-safe base64 with characters outside its alphabet must be refused, not silently decoded."""
    with pytest.raises(BadRequest, match="not valid base64"):
        decode_base64_input(inputs)


def test_huge_integer_in_json_is_a_client_error() -> None:
    """A 5000-digit number is well-formed JSON that `json.loads` refuses with a plain ValueError."""
    body = b'{"inputs": "AAAA", "parameters": {"top_k": ' + b"9" * 5000 + b"}}"
    with pytest.raises(RequestError) as caught:
        classify(body, "application/json")
    assert caught.value.status in (400, 422)


def test_deeply_nested_json_is_a_client_error() -> None:
    """`json.loads` raises RecursionError on deep nesting: must be a 400, not a 500."""
    with pytest.raises(BadRequest):
        parse_json(b"[" * 10_000 + b"]" * 10_000)


@pytest.mark.parametrize(("data", "expected"), [(b'{"a": 1}', {"a": 1}), (b"[1, 2]", [1, 2]), (b" 3 ", 3)])
def test_parse_json(data: bytes, expected: Any) -> None:
    assert parse_json(data) == expected
