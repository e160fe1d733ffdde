"""A build interrupted half-way leaves no image tag, and the next build reuses what was done (issue 13).

Three interruptions of a real `bake build` of a model on the local Hub, each while the weights are being
downloaded (the Hub's CDN trickles the weights file, so that the build is caught in that step):
  - Ctrl-C, as a terminal sends it to the foreground process group;
  - the Hub going away: connections refused and the download cut half-way;
  - the Docker engine killed (SIGKILL to dockerd and its containerd, a crash or the OOM killer), on an
    engine of the test's own (tests/fixtures/dockerd.py) so that no other test loses its engine.
Each time the build stops with one line and its exit status, the tag names no image (BuildKit tags only a
finished image), and the next build finishes with the stages that were done taken from the build cache
(after the engine's restart, for the killed one); after Ctrl-C and after the Hub went away, the files that
were downloaded whole come from the download cache too (huggingface_hub starts an unfinished file afresh in a
new process). Each interruption waits until a small file has been downloaded whole: huggingface_hub fetches a
snapshot's files in parallel, so the weights' request can come first, and an interruption right then cuts
both (the likely cause of one earlier run fetching the small file again). And a whole build fed weights whose
sha256 is not the Hub's (a proxy or mirror altering them) fails the same way, and the next build,
fed the right bytes, bakes them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bake.buildkit_log import BuildLog
from serve.contract.errors import FAILURE_EXIT_CODE, INTERRUPTED_EXIT_CODE
from tests.fixtures.docker import build_settings_toml, buildkit_runs, ensure_base_image, run_bake
from tests.fixtures.dockerd import SecondEngine
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier

TRICKLE_BYTES_PER_S = 150
"""How fast the CDN sends the weights (a tiny ResNet's 14 KB: about 95 s, so that the build is still
downloading when its venv stage has finished, even with a cold build cache)."""
BUILD_ONLY_FILE = "preprocessor_config.json"
"""A small file only the build's weights step downloads (bake reads config.json on the host at every build,
to check access afresh)."""


@dataclass
class Model:
    """A tiny classifier published on the local Hub."""

    repo: str
    commit: str
    blob: str
    """The CDN path of its weights file."""


@dataclass
class RunningBuild:
    """A `bake build --progress plain` running in its own process group, its output read as it comes."""

    process: subprocess.Popen[str]
    log: BuildLog = field(default_factory=BuildLog)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self.log.feed(line.rstrip("\n"))

    def stage_finished(self, stage: str) -> bool:
        """Whether every step of `stage` has finished (run or taken from the cache)."""
        steps = [self.log.steps[number] for number, name in self.log.stage_of_step.items() if name == stage]
        return bool(steps) and all(step.finished for step in steps)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            tail = "\n".join(self.lines[-30:])
            assert self.process.poll() is None, f"the build ended before {what}:\n{tail}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{tail}"
            time.sleep(0.2)

    def finish(self) -> tuple[int, str]:
        """The exit status and the whole of stderr, once the build has ended."""
        status = self.process.wait(timeout=300)
        self._reader.join(timeout=60)
        return status, "\n".join(self.lines)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    ensure_base_image()
    (tmp_path / "bake.toml").write_text(build_settings_toml())
    return tmp_path


@pytest.fixture
def model(hub: HubServer, tmp_path: Path) -> Iterator[Model]:
    folder = make_image_classifier(tmp_path / "model", "resnet", image_size=64, seed=7)
    repo = f"interrupted/tiny-resnet-{uuid.uuid4().hex[:8]}"
    commit = hub.add_repo(repo, folder)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    hub.cdn_bytes_per_s = TRICKLE_BYTES_PER_S
    try:
        yield Model(repo, commit, f"/cdn-lfs/{digest}")
    finally:
        hub.cdn_bytes_per_s = 0


def start_build(project: Path, model: Model, tag: str, env: Mapping[str, str]) -> RunningBuild:
    process = subprocess.Popen(
        [sys.executable, "-m", "bake", "build", "--model", model.repo, "--tag", tag, "--progress", "plain"],
        cwd=project,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a suite run with & ignores it
    )
    return RunningBuild(process)


def downloading(hub: HubServer, model: Model) -> Callable[[], bool]:
    """Whether the weights file is being downloaded (the CDN got its request)."""
    return lambda: any(path == model.blob for _, path in hub.requests)


def build_only_downloads(hub: HubServer, model: Model, since: int) -> int:
    """How many times `BUILD_ONLY_FILE` was downloaded from request number `since` on."""
    return sum(
        1
        for method, path in hub.requests[since:]
        if method == "GET" and path == f"/{model.repo}/resolve/{model.commit}/{BUILD_ONLY_FILE}"
    )


def image_exists(tag: str, env: Mapping[str, str]) -> bool:
    inspect = subprocess.run(
        ["docker", "image", "inspect", tag], env={**os.environ, **env}, capture_output=True, timeout=60
    )
    return inspect.returncode == 0


def assert_one_line_error(stderr: str, *wanted: str) -> str:
    """The build's last line: bake's one error line, which says each of `wanted`; no traceback anywhere."""
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("bake: error:"), stderr[-3000:]
    assert all(text in last for text in wanted), last
    assert "Traceback" not in stderr, stderr[-3000:]
    return last


def rebuild(project: Path, model: Model, tag: str, env: Mapping[str, str]) -> list[BuildLog]:
    """`bake build` again, without trickling; BuildKit's log of each of its runs."""
    result = run_bake(["build", "--model", model.repo, "--tag", tag, "--progress", "plain"], env, project)
    assert result.returncode == 0, result.stderr[-4000:]
    assert image_exists(tag, env)
    return buildkit_runs(result.stderr)


def interrupt_mid_download(
    hub: HubServer,
    project: Path,
    model: Model,
    tag: str,
    env: Mapping[str, str],
    interrupt: Callable[[RunningBuild], None],
) -> tuple[int, str]:
    """Start `bake build`, and once the weights are downloading, `BUILD_ONLY_FILE` has been downloaded whole
    and the venv stage has finished (so that the stages up to it are done and can be reused), `interrupt` it;
    the build's exit status and stderr. Leaves no build running."""
    build = start_build(project, model, tag, env)
    try:
        build.wait_until(downloading(hub, model), "weights download")
        downloaded = lambda: build_only_downloads(hub, model, since=0) == 1  # noqa: E731
        build.wait_until(downloaded, f"download of {BUILD_ONLY_FILE}")
        build.wait_until(lambda: build.stage_finished("venv"), "finished venv stage")
        time.sleep(1)  # the small file's request came; its few hundred bytes are written within this
        interrupt(build)
        return build.finish()
    finally:
        if build.process.poll() is None:
            os.killpg(build.process.pid, signal.SIGKILL)


def rebuild_and_check_the_caches(
    hub: HubServer, project: Path, model: Model, tag: str, env: Mapping[str, str], stages: tuple[str, ...]
) -> list[tuple[str, str]]:
    """The next build, at full speed: it must take `stages` from the build cache. Returns the Hub requests it
    made; removes the image."""
    hub.cdn_bytes_per_s = 0
    before = len(hub.requests)
    try:
        runs = rebuild(project, model, tag, env)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], env={**os.environ, **env}, capture_output=True)
    cached = {stage: runs[0].stage_cached(stage) for stage in stages}
    assert all(cached.values()), f"stages from the cache: {cached}\n{runs[0].tail}"
    return hub.requests[before:]


def test_ctrl_c_mid_build_leaves_no_tag_and_the_next_build_reuses_what_was_done(
    hub: HubServer, project: Path, model: Model
) -> None:
    tag = f"bake-interrupted/ctrl-c:{uuid.uuid4().hex[:8]}"
    env = hub.client_env()

    def ctrl_c(build: RunningBuild) -> None:
        os.killpg(build.process.pid, signal.SIGINT)  # what Ctrl-C on a terminal does

    status, stderr = interrupt_mid_download(hub, project, model, tag, env, ctrl_c)
    assert status == INTERRUPTED_EXIT_CODE
    assert_one_line_error(stderr, "interrupted")
    assert not image_exists(tag, env), "an interrupted build must leave no tag"
    before = len(hub.requests)
    rebuild_and_check_the_caches(hub, project, model, tag, env, ("tools", "deps", "venv"))
    assert build_only_downloads(hub, model, since=before) == 0, "downloaded files come from the cache"


def test_the_hub_going_away_mid_download_fails_in_one_line_and_the_next_build_resumes(
    hub: HubServer, project: Path, model: Model
) -> None:
    tag = f"bake-interrupted/hub:{uuid.uuid4().hex[:8]}"
    env = hub.client_env()
    try:
        status, stderr = interrupt_mid_download(
            hub,
            project,
            model,
            tag,
            env,
            lambda _build: hub.pause(),  # refused, the download cut
        )
    finally:
        if hub.paused:
            hub.resume()
    assert status == FAILURE_EXIT_CODE
    assert_one_line_error(stderr, "could not be downloaded from the Hub", "build again")
    assert not image_exists(tag, env), "a failed build must leave no tag"
    before = len(hub.requests)
    requests = rebuild_and_check_the_caches(hub, project, model, tag, env, ("tools", "deps", "venv"))
    assert any(path == model.blob for _, path in requests), "the cut file is downloaded again"
    assert build_only_downloads(hub, model, since=before) == 0, "downloaded files come from the cache"


def test_a_killed_engine_mid_build_leaves_no_tag_and_after_its_restart_the_build_resumes(
    hub: HubServer, project: Path, model: Model
) -> None:
    with SecondEngine(size_mb=8000, subnet_octet=31) as engine:
        tag = f"bake-interrupted/engine:{uuid.uuid4().hex[:8]}"
        env = hub.client_env(DOCKER_HOST=engine.host)
        # killed once the venv stage has finished: BuildKit has then committed the deps stage's layer too,
        # which a crash right after that stage's DONE line may catch still being written
        status, stderr = interrupt_mid_download(hub, project, model, tag, env, lambda _build: engine.kill())
        assert status == FAILURE_EXIT_CODE
        assert_one_line_error(stderr)
        engine.restart()
        assert not image_exists(tag, env), "a build cut by the engine's death must leave no tag"
        rebuild_and_check_the_caches(hub, project, model, tag, env, ("tools", "deps"))


def test_a_build_fed_altered_weights_fails_and_the_next_build_bakes_the_hubs(
    hub: HubServer, project: Path, model: Model
) -> None:
    hub.cdn_bytes_per_s = 0
    digest = model.blob.rsplit("/", 1)[-1]
    weights = hub.store.find_blob(digest)
    assert weights is not None
    altered = bytearray(weights)
    altered[len(altered) // 2] ^= 0xFF  # same size, other bytes: only the sha256 tells
    tag = f"bake-interrupted/altered:{uuid.uuid4().hex[:8]}"
    env = hub.client_env()
    hub.tamper(digest, bytes(altered))
    try:
        failed = run_bake(["build", "--model", model.repo, "--tag", tag, "--progress", "plain"], env, project)
    finally:
        hub.tampered.clear()
    assert failed.returncode == FAILURE_EXIT_CODE
    assert_one_line_error(failed.stderr, "does not match the Hub's sha256", digest)
    assert not image_exists(tag, env)
    try:
        rebuild(project, model, tag, env)
        baked = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "sh",
                tag,
                "-c",
                "find /opt/bake/hf -path '*/blobs/*' -type f -exec sha256sum {} +",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    assert baked.returncode == 0, baked.stderr
    assert digest in baked.stdout.split()
