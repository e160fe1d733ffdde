"""The HTTP routes every bake image answers, the protocol each belongs to, and which are open or are probes.

Protocols (see `serve.protocols`): the Hugging Face Inference API (`/predict`, `POST /`), Replicate Cog's HTTP
API (`/predictions`, `/health-check`), the Open Inference Protocol v2 of KServe and Triton (`/v2/...`) and the
OpenAI images API (`/v1/...`). Operational routes (`/health`, `/ready`, `/info`, `/metrics`, the OpenAPI
document) belong to none of them, nor does the playground (`GET /` from a browser, see `serve.playground`).
"""

from __future__ import annotations

# Hugging Face Inference API
PREDICT = "/predict"
"""POST: run the model (Hugging Face Inference API shapes)."""
ROOT = "/"
"""POST: the same as /predict (what `InferenceClient(model=URL)` posts to). GET: the playground page for a
browser (`Accept: text/html`), Cog's discovery document for anything else."""
PREDICT_PATHS = (PREDICT, ROOT)

# Replicate Cog
COG_HEALTH = "/health-check"
COG_PREDICTIONS = "/predictions"
COG_PREDICTION = "/predictions/{prediction_id}"
COG_CANCEL = "/predictions/{prediction_id}/cancel"

# Open Inference Protocol v2 (KServe, Triton)
OIP_SERVER = "/v2"
OIP_LIVE = "/v2/health/live"
OIP_READY = "/v2/health/ready"
OIP_MODEL = "/v2/models/{model_name}"
OIP_MODEL_READY = "/v2/models/{model_name}/ready"
OIP_INFER = "/v2/models/{model_name}/infer"
OIP_VERSION = "/v2/models/{model_name}/versions/{model_version}"
OIP_VERSION_READY = "/v2/models/{model_name}/versions/{model_version}/ready"
OIP_VERSION_INFER = "/v2/models/{model_name}/versions/{model_version}/infer"

# OpenAI images API
OPENAI_IMAGES = "/v1/images/generations"
OPENAI_MODELS = "/v1/models"

# Operational
HEALTH = "/health"
"""GET: liveness, 200 as soon as the process answers."""
READY = "/ready"
"""GET: readiness, 200 once the model is loaded and every batch size warmed up (503 before)."""
INFO = "/info"
METRICS = "/metrics"
OPENAPI = "/openapi.json"
DOCS = "/docs"
DOCS_ASSETS = "/docs/assets"
"""GET: Swagger UI's scripts and styles for /docs, served by the runtime itself (no CDN)."""

# The playground (people, in a browser)
PLAYGROUND = ROOT
"""GET with `Accept: text/html`: the playground page."""
PLAYGROUND_ASSETS = "/playground"
"""GET: the playground's scripts and styles (the same files in every image; no model data)."""

HUGGINGFACE = "huggingface"
COG = "cog"
OIP = "oip"
OPENAI = "openai"
PROTOCOLS = (HUGGINGFACE, COG, OIP, OPENAI)
_PREFIXES = ((COG, ("/predictions", COG_HEALTH)), (OIP, (OIP_SERVER,)), (OPENAI, ("/v1/",)))

OPEN_PATHS = frozenset({HEALTH, READY})
"""Routes that load balancers probe without credentials: never behind the API key."""
OPEN_PREFIXES = (PLAYGROUND_ASSETS + "/",)
"""Paths under these are never behind the API key either: static files with no model data in them. The
playground page itself (`GET /` for a browser) is open too; the page asks for the key."""
PROBE_PATHS = frozenset({HEALTH, READY, METRICS, COG_HEALTH, OIP_LIVE, OIP_READY})
"""Routes that load balancers and scrapers poll: they never count as activity for the idle timeout."""


def protocol_of(path: str) -> str | None:
    """The protocol a request path belongs to, or None for the operational routes (and unknown paths)."""
    if path in PREDICT_PATHS:
        return HUGGINGFACE
    for protocol, prefixes in _PREFIXES:
        if any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes):
            return protocol
    return None


def runs_the_model(method: str, path: str) -> bool:
    """Whether a request asks for a prediction, and so will wait in the batch queue: a POST or PUT on a route
    of a protocol, but for cancelling a Cog prediction."""
    return method in ("POST", "PUT") and protocol_of(path) is not None and not path.endswith("/cancel")
