"""Refresh the README's terminal transcript: real commands, and what a person sees after each (this machine).

A tiny random-weight ResNet is published on the local Hub-protocol server (`tests/fixtures/hub.py`; the real
Hub is not reachable here) and taken through `bake build`, `launch`, `predict`, `ps` and `stop`, plus one
failure. Each command runs on a real pseudo-terminal (`tests/fixtures/terminal.py`) and what is left on the
screen when it ends (live views collapsed, as on a terminal) is written between the README's
`<!-- transcript -->` markers. The project's bake.toml holds this machine's build settings (the local base
image, the PyPI proxy's CA bundle, the local torch wheels) and a free host port; the image and the container
are removed at the end.

    PYTHONPATH=. .venv/bin/python scripts/transcript.py
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fixtures import images
from tests.fixtures.docker import build_settings_toml, ensure_base_image
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT, free_port
from tests.fixtures.terminal import COLUMNS, run_in_terminal

README = REPO_ROOT / "README.md"
START, END = "<!-- transcript -->", "<!-- /transcript -->"
MODEL_ID = "acme/tiny-resnet"


def main() -> int:
    """Run the commands, write the transcript into the README; return the exit status."""
    ensure_base_image()
    with tempfile.TemporaryDirectory(prefix="bake-transcript-") as scratch, HubServer() as hub:
        project = Path(scratch) / "project"
        project.mkdir()
        model = make_image_classifier(Path(scratch) / "model", "resnet", num_labels=5)
        hub.add_repo(MODEL_ID, model)
        (project / "bake.toml").write_text(build_settings_toml() + f"\n[launch]\nhost_port = {free_port()}\n")
        (project / "cat.jpg").write_bytes(images.photo(640, 480))
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(REPO_ROOT)}
        shown: list[str] = []

        def bake(*args: str, expect: int = 0) -> list[str]:
            # the build's live view as wide as a usual terminal; no other line wrapped by the terminal
            run = run_in_terminal(args, env, project, columns=COLUMNS if args[0] == "build" else 400)
            screen = run.screen()
            shown.extend([f"$ bake {shlex.join(args)}", *screen, ""])
            if run.exit_code != expect:
                raise SystemExit(f"bake {' '.join(args)} exited {run.exit_code}:\n" + "\n".join(screen))
            return screen

        built = bake("build", "--model", MODEL_ID)
        tag = next(line.split()[1] for line in built if line.startswith("image "))
        name = ""
        try:
            name = bake("launch")[0].split()[0]
            bake("predict", "cat.jpg", "-p", "top_k=3")
            bake("ps")
            bake("predict", "--url", "http://127.0.0.1:9", "a cat", expect=1)
            bake("stop", name, "--rm")
        finally:
            if name:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True)
            subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    text = README.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    block = "\n".join(["```console", *shown[:-1], "```"])
    README.write_text(f"{before}{START}\n{block}\n{END}{after}")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
