"""A naive FastAPI endpoint: one forward pass per request, in FastAPI's thread pool.

Usage: python -m benchmarks.competitors.naive_server MODEL_DIR PORT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from benchmarks.competitors.common import decode, load, top5


def create_app(model_dir: Path) -> FastAPI:
    """The endpoint everyone writes first."""
    model, processor = load(model_dir)
    labels = model.config.id2label
    app = FastAPI()

    def infer(body: bytes) -> list[dict[str, object]]:
        pixel_values = decode(json.loads(body), processor)
        with torch.inference_mode():
            logits = model(pixel_values=pixel_values).logits[0]
        return top5(logits, labels)

    @app.post("/predict")
    async def predict(request: Request) -> list[dict[str, object]]:
        return await run_in_threadpool(infer, await request.body())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
