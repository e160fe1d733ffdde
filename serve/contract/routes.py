"""The HTTP routes every bake image answers, and which of them are open or count as traffic."""

from __future__ import annotations

PREDICT = "/predict"
"""POST: run the model (Hugging Face Inference API shapes)."""
ROOT = "/"
"""POST: the same as /predict (what `InferenceClient(model=URL)` posts to)."""
PREDICT_PATHS = (PREDICT, ROOT)
HEALTH = "/health"
"""GET: liveness, 200 as soon as the process answers."""
READY = "/ready"
"""GET: readiness, 200 once the model is loaded and every batch size warmed up (503 before)."""
INFO = "/info"
METRICS = "/metrics"
OPENAPI = "/openapi.json"
DOCS = "/docs"

OPEN_PATHS = frozenset({HEALTH, READY})
"""Routes that load balancers probe without credentials: never behind the API key."""
PROBE_PATHS = frozenset({HEALTH, READY, METRICS})
"""Routes that load balancers and scrapers poll: they never count as activity for the idle timeout."""
