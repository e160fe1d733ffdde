"""The main job, end to end, with no Hugging Face Hub: build an image, launch it, predict.

A tiny random-weight ResNet (saved like microsoft/resnet-50) is published on a local server that speaks
the Hub protocol; `bake build` bakes it into an image (the build reaches that server, PyPI through this
machine's proxy, and the local CPU torch wheel), `bake launch` runs it on the local Docker engine, and
`bake predict` plus `huggingface_hub.InferenceClient` ask it about a photo. The server keeps running
afterwards; the script prints how to stop it.

Run it with `scripts/demo` (which sets everything up first).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from huggingface_hub import InferenceClient

from tests.fixtures import images
from tests.fixtures.docker import build_settings_toml
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKDIR = REPO_ROOT / ".bake" / "demo"
MODEL_ID = "bake-demo/tiny-resnet"
HOST_PORT = 8080


def bake(*args: str, env: dict[str, str]) -> str:
    """Run the bake CLI, showing its progress; return what it printed on stdout."""
    print(f"\n$ bake {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "bake", *args], env=env, cwd=WORKDIR, stdout=subprocess.PIPE, text=True
    )
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"bake {args[0]} failed (exit {result.returncode})")
    return result.stdout


def main() -> int:
    """Build, launch and query the demo model; return the exit status."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    model_dir = make_image_classifier(WORKDIR / "model", "resnet", num_labels=5)
    photo = WORKDIR / "photo.jpg"
    photo.write_bytes(images.photo(640, 480))
    (WORKDIR / "bake.toml").write_text(
        f'[model]\nid = "{MODEL_ID}"\n\n' + build_settings_toml() + f"\n[launch]\nhost_port = {HOST_PORT}\n"
    )
    with HubServer() as hub:
        hub.add_repo(MODEL_ID, model_dir)
        print(f"local Hub at {hub.url} serving {MODEL_ID} (the real Hub is not reachable here)")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(REPO_ROOT)}
        bake("build", env=env)
    launched = bake("launch", env=env)
    name = re.search(r"^(\S+) is ready at ", launched, re.MULTILINE)
    bake("predict", str(photo), "--param", "top_k=3", env=env)
    answer = InferenceClient(model=f"http://127.0.0.1:{HOST_PORT}").image_classification(
        photo.read_bytes(), top_k=2
    )
    print(
        "\nhuggingface_hub.InferenceClient answers: "
        f"{[(item.label, round(item.score, 4)) for item in answer]}"
    )
    print(
        f"\nThe model keeps serving at http://127.0.0.1:{HOST_PORT} "
        f"(try: curl --data-binary @{photo} http://127.0.0.1:{HOST_PORT}/predict)."
        f"\nStop it with: .venv/bin/bake stop {name.group(1) if name else 'NAME'} (names: .venv/bin/bake ps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
