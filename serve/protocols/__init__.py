"""The wire protocols a bake server speaks: one thin module each over the one `Runtime.predict` path.

Each protocol turns its requests into an input and the task's parameters, calls the runtime, and renders the
result, and every error on its routes (`Protocol.error_response`), in its own shapes. Requests of all
protocols share the batcher, the limits, the API key and the metrics (labelled by protocol).
`serve.app` mounts them.
"""

from __future__ import annotations

from serve.contract import routes
from serve.protocols import cog, huggingface, oip, openai
from serve.protocols.base import Protocol

PROTOCOLS: dict[str, Protocol] = {
    protocol.name: protocol
    for protocol in (huggingface.PROTOCOL, cog.PROTOCOL, oip.PROTOCOL, openai.PROTOCOL)
}


def for_path(path: str) -> Protocol:
    """The protocol whose shapes answer a request for `path` (errors included): the Hugging Face API's for the
    operational routes and unknown paths."""
    return PROTOCOLS[routes.protocol_of(path) or routes.HUGGINGFACE]
