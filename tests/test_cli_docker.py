"""The CLI against the real engine, as a person sees it: `bake build`'s progress modes (a collapsing live
view on a real pseudo-terminal, BuildKit's plain log when piped or asked for, nothing with quiet) with the
build log still read in each, `--json` and `--no-cache`; a failed build's step on the screen in every mode;
`bake launch` tailing the container's log while it waits for /ready, Ctrl-C during that wait; and `ps`,
`predict`, `stop` on an engine reached through DOCKER_HOST, whose host the printed URLs name.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bake.buildkit_log import BuildLog
from tests.fixtures import images
from tests.fixtures.docker import built_project, docker, labels, run_bake
from tests.fixtures.engine_proxy import EngineOverTcp
from tests.fixtures.fly_api import FlyApiServer
from tests.fixtures.servers import free_port
from tests.fixtures.terminal import TerminalRun, run_in_terminal

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL_DIR = "tiny-resnet"
"""Where `built_project` saved the model, inside the project."""


@dataclass
class Project:
    path: Path
    image: str

    @property
    def model(self) -> str:
        return str(self.path / MODEL_DIR)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    with built_project(tmp_path_factory.mktemp("cli"), "resnet", "bake-cli/tiny") as (path, image):
        yield Project(path, image)


@pytest.fixture
def tag() -> Iterator[str]:
    reference = f"bake-cli/tiny:{uuid.uuid4().hex[:8]}"
    yield reference
    subprocess.run(["docker", "rmi", "-f", reference], capture_output=True)


@pytest.fixture
def name() -> Iterator[str]:
    container = f"bake-cli-{uuid.uuid4().hex[:8]}"
    yield container
    subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def buildkit_lines(lines: list[str]) -> list[str]:
    """The lines of BuildKit's plain log: a step's header, its end or its cache hit."""
    return [line for line in lines if re.match(r"^#\d+ (\[|DONE |CACHED$)", line)]


def test_on_a_terminal_the_build_is_a_live_view_that_collapses(project: Project, tag: str) -> None:
    run = run_in_terminal(["build", "--model", project.model, "--tag", tag], {}, project.path)
    assert run.exit_code == 0, run.text[-3000:]
    screen = run.screen()
    assert not [line for line in screen if line.startswith("#")], "no raw BuildKit lines on the screen"
    [header] = [line for line in screen if line.startswith("Built in ")]
    steps = screen[screen.index(header) + 1 : screen.index("")]
    assert len(steps) >= 10 and all(line.startswith("✔ ") for line in steps), steps
    assert any(line.endswith(" cached") and "[weights 2/2] RUN" in line for line in steps)
    assert "Building " in run.plain, "it was live while it worked"
    assert any(line.startswith(f"image     {tag} (") for line in screen)
    assert "weights   0.0 MiB, 3 files (from the build cache)" in screen, "the log was read in live mode too"


def test_plain_on_a_terminal_when_asked_and_when_piped(project: Project, tag: str) -> None:
    run = run_in_terminal(
        ["build", "--model", project.model, "--tag", tag, "--progress", "plain"], {}, project.path
    )
    assert run.exit_code == 0
    assert len(buildkit_lines(run.screen())) >= 10, run.screen()
    assert "Building " not in run.plain
    piped = run_bake(["build", "--model", project.model, "--tag", tag], {}, project.path)
    assert piped.returncode == 0 and len(buildkit_lines(piped.stderr.splitlines())) >= 10, piped.stderr
    assert "\x1b[" not in piped.stderr + piped.stdout


def test_quiet_json_build_says_what_was_built(project: Project, tag: str) -> None:
    result = run_bake(
        ["build", "--model", project.model, "--tag", tag, "--progress", "quiet", "--json"], {}, project.path
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    document = json.loads(result.stdout)
    size = int(docker("image", "inspect", tag, "--format", "{{.Size}}").stdout)
    assert document["image"] == tag and document["size_bytes"] == size and document["pushed"] is False
    assert document["labels"] == labels(tag) and document["labels"]["dev.bake.model"] == document["model"]
    assert document["weights_cached"] is True and document["task"] == "image-classification"
    sbom = json.loads(Path(document["sbom"]).read_text())
    assert Path(document["sbom"]).parent == project.path.resolve() / ".bake" / "sbom"
    assert sbom["bomFormat"] == "CycloneDX" and sbom["metadata"]["component"]["name"] == document["model"]


def test_no_cache_runs_every_step_again(project: Project, tag: str) -> None:
    result = run_bake(["build", "--model", project.model, "--tag", tag, "--no-cache"], {}, project.path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Two BuildKit runs: the compile report's (deps, sbom, weights, compile), then the image's, which takes
    # the steps the first one has just run from the cache.
    report_run, image_run = BuildLog(), BuildLog()
    first, note, second = result.stderr.partition("bake: forward pass compiled at build time")
    assert note, "the tiny classifier compiles"
    for log, text in ((report_run, first), (image_run, second)):
        for line in text.splitlines():
            log.feed(line)
    cached = {report_run.steps[number].title for number in report_run.cached_steps}
    assert all(title.startswith("[base 1/1] FROM ") for title in cached), f"only the base image: {cached}"
    assert {"deps", "sbom", "fetcher", "weights", "compile"} <= set(report_run.stage_of_step.values())
    ran = {step.title for step in report_run.steps.values()}
    reused = {image_run.steps[number].title for number in image_run.cached_steps}
    assert {title for title in reused if not title.startswith("[runtime")} <= ran
    assert "runtime" in set(image_run.stage_of_step.values())
    assert "from the build cache" not in result.stdout
    assert labels(tag)["dev.bake.commit-sha"] == labels(project.image)["dev.bake.commit-sha"]


def test_a_failed_build_shows_its_step_in_every_mode(project: Project, tag: str) -> None:
    args = ["build", "--model", project.model, "--tag", tag, "--base-image", "bake-cli/absent:1"]
    expected = (
        "bake: error: the base image bake-cli/absent:1 cannot be pulled: check its name, `docker login` to "
        "its registry, or pass --base-image with an image the engine has"
    )
    run = run_in_terminal(args, {}, project.path)
    assert run.exit_code == 1
    screen = run.screen()
    assert any(line.startswith("Build failed after ") for line in screen)
    assert any(
        line.startswith("✘ [internal] load metadata for docker.io/bake-cli/absent:1") for line in screen
    )
    assert any(line.strip().startswith("ERROR: ") for line in screen)
    assert [line for line in run.lines() if line][-1] == expected
    quiet = run_bake([*args, "--progress", "quiet"], {}, project.path)
    lines = quiet.stderr.strip().splitlines()
    assert quiet.returncode == 1 and lines[-1] == expected
    assert lines[0] == "failed step: [internal] load metadata for docker.io/bake-cli/absent:1"
    assert lines[1].startswith("ERROR: ") and len(lines) == 3


def test_launch_shows_the_container_log_while_it_waits(project: Project, name: str) -> None:
    port = free_port()
    run = run_in_terminal(
        ["launch", project.image, "--name", name, "--host-port", str(port)], {}, project.path
    )
    assert run.exit_code == 0, run.text[-3000:]
    url = f"http://127.0.0.1:{port}"
    assert f"waiting for {url}/ready" in run.plain
    assert "  | " in run.plain and "ready in" in run.plain, "the server's own log lines were shown"
    screen = run.screen()
    assert not [line for line in screen if line.startswith("  | ")], "and went away once it was ready"
    assert screen[0].startswith(f"{name} is ready at {url} (")
    piped = run_bake(["launch", project.image, "--name", name, "--host-port", str(port)], {}, project.path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.splitlines()[0] == f"waiting for {url}/ready (up to 600 s)"
    assert any(line.startswith("  | ") and "ready in" in line for line in piped.stderr.splitlines())


def test_ctrl_c_while_waiting_says_the_container_keeps_starting(project: Project, name: str) -> None:
    port = free_port()
    run = TerminalRun(["launch", project.image, "--name", name, "--host-port", str(port)], {}, project.path)
    assert run.read_until(b"waiting for", timeout=120), run.text
    run.interrupt()
    assert run.wait(timeout=60) == 130
    assert [line for line in run.lines() if line][-1] == (
        f"bake: error: stopped waiting for {name} at http://127.0.0.1:{port}; the container keeps starting: "
        f"watch it with `bake logs -f {name}`, or stop it with `bake stop {name}`"
    )
    assert docker("inspect", name, "--format", "{{.State.Running}}").stdout.strip() == b"true"
    listed = run_bake(["ps"], {}, project.path)
    assert name in listed.stdout and f"http://127.0.0.1:{port}" in listed.stdout, "bake ps shows it"


def test_docker_host_names_the_urls_and_json_lists_and_answers(project: Project, name: str) -> None:
    photo = project.path / "photo.jpg"
    photo.write_bytes(images.photo(160, 120))
    port = free_port()
    with EngineOverTcp() as engine:
        env = {"DOCKER_HOST": f"tcp://localhost:{engine.port}"}
        launched = run_bake(
            ["launch", project.image, "--name", name, "--host-port", str(port)], env, project.path
        )
        assert launched.returncode == 0, launched.stderr
        url = f"http://localhost:{port}"
        assert launched.stdout.splitlines()[0].startswith(f"{name} is ready at {url} (")
        listed = run_bake(["ps", "--json"], env, project.path)
        [mine] = [row for row in json.loads(listed.stdout) if row["name"] == name]
        assert mine == {
            "name": name,
            "status": "running",
            "url": url,
            "model": labels(project.image)["dev.bake.model"],
            "image": project.image,
        }
        predicted = run_bake(
            ["predict", str(photo), "--name", name, "--json", "-p", "top_k=2"], env, project.path
        )
        assert predicted.returncode == 0, predicted.stderr
        document = json.loads(predicted.stdout)
        assert document["url"] == url and len(document["output"]) == 2
        stopped = run_bake(["stop", name], env, project.path)
        assert stopped.returncode == 0 and stopped.stdout == f"stopped {name}\n"


def test_the_fly_path_says_what_it_does(project: Project) -> None:
    """Fly's deploy logs its steps with `logging`; the CLI shows them (here up to a push that cannot work)."""
    token = "FlyV1 fm2_" + uuid.uuid4().hex
    with FlyApiServer(token=token) as fly_api:
        result = run_bake(
            [
                "launch",
                project.image,
                "--target",
                "fly",
                "--name",
                "bake-cli-fly",
                "--registry",
                "127.0.0.1:9",
            ],
            {"FLY_API_TOKEN": token, "BAKE_FLY_API_URL": fly_api.url, "PATH": "/usr/bin:/bin"},
            project.path,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "warm-up measured at" in result.stderr
    assert "fly: creating Fly app bake-cli-fly in organization personal" in lines
    assert "fly: allocating a shared_v4 address for bake-cli-fly" in lines
    assert (
        lines[-1].startswith("bake: error: 127.0.0.1:9 refused the Fly token")
        and "Traceback" not in result.stderr
    )
