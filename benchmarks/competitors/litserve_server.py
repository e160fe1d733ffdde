"""LitServe (from PyPI) with the same model, batch size and batch timeout as bake.

Usage: python -m benchmarks.competitors.litserve_server MODEL_DIR PORT MAX_BATCH_SIZE BATCH_TIMEOUT_S
"""

from __future__ import annotations

import sys
from pathlib import Path

import litserve as ls
import torch

from benchmarks.competitors.common import decode, load, top5


class ImageClassifierAPI(ls.LitAPI):
    """LitServe's documented batched pattern: decode_request -> batch -> predict -> unbatch -> encode."""

    def __init__(self, model_dir: Path, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.model, self.processor = load(self.model_dir)
        self.labels = self.model.config.id2label

    def decode_request(self, request: dict) -> torch.Tensor:
        return decode(request, self.processor)[0]

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(pixel_values=x).logits

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> list[dict[str, object]]:
        return top5(output, self.labels)


if __name__ == "__main__":
    model_dir, port, max_batch, timeout = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    api = ImageClassifierAPI(model_dir, max_batch, timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30, api_path="/predict")
    server.run(port=port, host="127.0.0.1", log_level="warning", generate_client_file=False)
