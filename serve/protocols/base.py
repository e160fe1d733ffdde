"""What a protocol module provides to the app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response

from serve import outbound
from serve.errors import RequestError
from serve.payload import decode_base64_input
from serve.runtime import Runtime


@dataclass(frozen=True)
class Protocol:
    """One wire protocol: its routes, its error shape and its part of the OpenAPI document."""

    name: str
    """One of `serve.contract.routes.PROTOCOLS`."""
    add_routes: Callable[[FastAPI, Runtime], None]
    error_response: Callable[[RequestError], Response]
    """The response for an error on one of its routes (validation, auth, overload, ...)."""
    document: Callable[[dict[str, Any], str], None]
    """Describe the protocol's requests and responses for the served task in the OpenAPI document."""
    routes: tuple[str, ...]
    """The route templates it serves, for /info."""
    error_schema: dict[str, Any]
    """The JSON schema of its error bodies (`error_response`), for the OpenAPI document."""


async def binary_input(runtime: Runtime, text: str) -> bytes:
    """The bytes a string input stands for: base64 or a data URL, or an http(s) URL where the operator allows
    remote inputs (`serve.outbound`), fetched within the body size limit."""
    url = text.strip()
    policy = outbound.remote_inputs(runtime.settings)
    if not url.startswith(("http://", "https://")) or not policy.hosts:
        return decode_base64_input(text)
    settings = runtime.settings
    return await runtime.offload(
        lambda: outbound.fetch(
            url, policy, max_bytes=settings.max_body_bytes, timeout_s=settings.remote_input_timeout_s
        )
    )


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` inlined: embedded in the OpenAPI document, pydantic's local
    references (`#/$defs/...`) would point at the document's root, where nothing is."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref", "")
        if reference.startswith("#/$defs/"):
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return {**inline(definitions[reference.removeprefix("#/$defs/")]), **inline(rest)}
        return {key: inline(value) for key, value in node.items()}

    return inline(schema)
