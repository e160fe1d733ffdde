"""`bake build`: the pip path against the uv path (cold), image size by part, rebuild, `docker run` to first
prediction.

One run, for one model published on a local Hub (tests.fixtures.hub) under fresh repo ids:
  1. two cold builds, side by side: "pip" (`--installer pip --keep-build-tools`: pip installs, nothing is
     slimmed, every module compiled: the image bake built before the slim work) and "uv" (bake's default: uv
     installs, the virtualenv is slimmed and holds the bytecode of what serving imports). Each runs the real
     `bake build` CLI on a base image no build has used yet (bake-base:bookworm plus one tiny layer), so no
     BuildKit layer of any stage can come from the cache, with its own repo id, so the weights are downloaded,
     and with PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 in that base's environment, so neither installer has a download
     cache. The deps step's own time and the installer's summary lines are read from BuildKit's progress
     output (both of its runs when bake compiles: the compile report's, then the image's).
  2. rebuild after a code-only change (uv path): the `serve` package bake copies into the image is found with
     `importlib.util.find_spec("serve")`, so every build runs with PYTHONPATH on a temporary copy of `serve`
     (then this checkout, for bake); a comment line is added to one of its modules between the uv build and
     the rebuild. The stages that came from the cache are read from BuildKit's progress output.
  3. both images' size split into base / venv / weights / bake (code + config), from `docker history`, and the
     largest packages of each virtualenv; every layer of the uv image's `docker save` is scanned for a file
     with the bytes of a weights file: exactly one copy of each is the target.
  4. `docker run` to the first 200 from POST /predict (a 640x480 JPEG, sent from inside the container,
     which runs with --network none), for both images, against a floor: in the uv image and with the same
     network, the image's python imports torch and transformers, loads the baked weights with
     AutoModelForImageClassification.from_pretrained (offline) and runs one forward pass; timed from
     `docker run` to its exit. Rounds rotate the three; the median is reported.
Models: "resnet50" (the real ResNet-50 architecture, random weights, ~100 MB of safetensors), "tiny", and
"t2i-mid" (`benchmarks.diffusion`'s SD-like text-to-image pipeline sized for a CPU: its first prediction is
a 128x128 image of 20 steps; its floor imports torch and diffusers, loads the pipeline and makes that image).
Every image, container and base copy it makes is named bake-bench-* and removed at the end; the build cache
the cold builds write is left to BuildKit's garbage collection (or `docker builder prune`).

Usage: python -m benchmarks.build [--model resnet50|tiny|t2i-mid] [--rounds 3] [--server-env KEY=VALUE ...]
                                  [--out benchmarks/results/build.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bake.buildkit_log import BuildLog
from benchmarks import diffusion
from benchmarks.report import machine, rotated, write_report
from benchmarks.serving import REGIMES, make_model
from serve.contract.image import COMPILED
from tests.fixtures import images
from tests.fixtures.docker import build_settings_toml, docker, ensure_base_image, run_bake
from tests.fixtures.hub import HubServer
from tests.fixtures.servers import REPO_ROOT

STAGES = ("tools", "deps", "venv", "sbom", "fetcher", "weights", "compile", "runtime")
"""The stages whose steps can come from the cache (the base stage is only a FROM of the base image)."""
PATHS = {"pip": ("--installer", "pip", "--keep-build-tools"), "uv": ()}
"""The two cold builds: the image as bake built it before slimming (pip, nothing removed), and the default."""
PARTS = ("base", "venv", "weights", "compiled", "bake")
REBUILD_TARGET_S = 5.0
COLD_BUILD_TARGET = 0.60
"""The uv path's cold build against the pip path's."""
SIZE_TARGET_MIB = 900.0
STARTUP_TARGET = 0.8
"""`docker run` -> first prediction against the floor."""
READY_TARGET = 1.0
"""`docker run` -> /ready 200 (every batch bucket warm) against the floor."""
CHANGED_MODULE = "app.py"
_PROGRESS_LINE = re.compile(r"^#(\d+) [\d.]+ (.*)$")
_STEP_DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s$")
_PIP_FETCH = re.compile(r"^\s*(Using cached|Downloading) (\S+)")
_UV_SUMMARY = re.compile(r"^(Resolved|Prepared|Installed) \d+ packages? in [\d.]+m?s$")
_WEIGHTS_COPY = re.compile(r"^COPY /opt/bake/(hf|model) ")
_COMPILED_COPY = re.compile(rf"^COPY {COMPILED} ")
_NEXT_RUN = re.compile(r"^bake: forward pass .*$", re.MULTILINE)
"""bake build's note between its two BuildKit runs (the compile report's, then the image's)."""
_VENV_LAYER = re.compile(r"^COPY /opt/bake/venv ")
_READY_IN = re.compile(r"ready in ([\d.]+) s")

FIRST_PREDICTION = """
import sys, time, urllib.request
data, deadline = sys.stdin.buffer.read(), time.monotonic() + 600
request = urllib.request.Request(
    "http://127.0.0.1:{port}/predict", data=data, headers={{"Content-Type": "{content_type}"}}
)
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
            sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""
"""Run inside the serving container: POST the request body on stdin until the server answers 200."""

READY = """
import sys, time, urllib.request
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://127.0.0.1:{port}/ready", timeout=60) as answer:
            answer.read()
            sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""
"""Run inside the serving container: GET /ready until it answers 200 (every batch bucket is warm)."""

CLASSIFIER_FLOOR = """
import os, torch, transformers
model = transformers.AutoModelForImageClassification.from_pretrained(
    os.environ["BAKE_MODEL"], revision=os.environ["BAKE_REVISION"]
).eval()
size = getattr(model.config, "image_size", 224)
with torch.inference_mode():
    model(pixel_values=torch.zeros(1, model.config.num_channels, size, size))
"""
"""An image classifier's floor: import torch + transformers, load the baked weights offline, one forward
pass."""

T2I_STEPS = 20
T2I_FLOOR = f"""
import os, torch, diffusers
pipeline = diffusers.AutoPipelineForText2Image.from_pretrained(
    os.environ["BAKE_MODEL"], revision=os.environ["BAKE_REVISION"]
)
pipeline.set_progress_bar_config(disable=True)
pipeline({diffusion.PROMPT!r}, num_inference_steps={T2I_STEPS}, generator=torch.Generator().manual_seed(0))
"""
"""A text-to-image pipeline's floor: import torch + diffusers, load the baked pipeline offline, one image."""


@dataclass(frozen=True)
class Workload:
    """A benchmarked model: how it is made, what its first request is, and its floor."""

    make: Callable[[Path], Path]
    """Write the random-weight model into a folder; return it."""
    pipeline_tag: str
    content_type: str
    body: Callable[[], bytes]
    floor: str
    """Python run by the image's own python: the least a hand-written server does before its first answer."""


def _classifier(name: str) -> Workload:
    return Workload(
        lambda folder: make_model(REGIMES[name], folder),
        "image-classification",
        "image/jpeg",
        lambda: images.photo(640, 480),
        CLASSIFIER_FLOOR,
    )


WORKLOADS = {
    **{name: _classifier(name) for name in REGIMES},
    "t2i-mid": Workload(
        lambda folder: diffusion.make_model(diffusion.MODELS["mid"], folder),
        "text-to-image",
        "application/json",
        lambda: json.dumps(
            {"inputs": diffusion.PROMPT, "parameters": {"num_inference_steps": T2I_STEPS, "seed": 0}}
        ).encode(),
        T2I_FLOOR,
    ),
}


@dataclass(frozen=True)
class BuildRun:
    """One `bake build`: how long it took and what BuildKit said about its stages."""

    seconds: float
    stages_cached: dict[str, str]
    """Per stage, "cached steps/steps"."""
    weights_cached: bool
    deps_step_s: float
    """The deps stage's install step alone (0 when it came from the cache)."""
    venv_steps_s: float
    """The venv stage's steps: slimming and the runtime check (which imports, compiling the bytecode)."""
    stage_steps_s: dict[str, float]
    """Per stage, the seconds of its steps that ran (stages run in parallel where they can: these do not add
    up to the build's time)."""
    installer_lines: list[str]
    """uv's summary lines (Resolved/Prepared/Installed ... in ...), or pip's download count."""


@dataclass(frozen=True)
class ImageFacts:
    """A built image's size, split by part, and where its weights are."""

    total_mib: float
    parts_mib: dict[str, float]
    packages_mib: dict[str, float]
    """The largest folders of the virtualenv's site-packages."""
    weights_files: int
    """How many safetensors files the model has (a pipeline has one per component)."""
    weights_files_mib: float
    weights_copies: list[str] | None
    """Every file, in every layer, with the bytes of a weights file ("layer: path"); None: not scanned."""


@dataclass(frozen=True)
class Startup:
    """Seconds from `docker run` to the first prediction (per image) and to the end of the floor, per
    round."""

    first_prediction_s: dict[str, list[float]]
    ready_s: dict[str, list[float]]
    """Seconds from `docker run` to the first 200 from /ready."""
    floor_s: list[float]
    server_logs: dict[str, list[list[str]]]
    """The server's own log lines, per image and round (from loading to "ready in")."""


@dataclass(frozen=True)
class Bench:
    """Names and places of one benchmark run (everything it creates is named bake-bench-*)."""

    run_id: str
    root: Path
    hub: HubServer
    model_name: str

    def repo(self, path: str) -> str:
        """The model's fresh repo id on the local Hub for one build path (so the weights are downloaded)."""
        return f"bench/{self.model_name}-{self.run_id}-{path}"

    def base_image(self, path: str) -> str:
        """bake-base:bookworm plus a tiny layer: a base image no build has used yet, one per build path."""
        return f"bake-bench-base:{self.run_id}-{path}"

    def tag(self, kind: str) -> str:
        """The tag of the `kind` ("pip", "uv", "rebuild") image."""
        return f"bake-bench/{self.model_name}:{self.run_id}-{kind}"

    def container(self, kind: str, index: int) -> str:
        """The name of one container of the startup rounds."""
        return f"bake-bench-{self.run_id}-{kind}-{index}"


def fresh_base_image(source: str, tag: str) -> None:
    """Build `source` plus a tiny layer as `tag`: a base no cached layer descends from, so every stage misses;
    its environment turns both installers' download caches off."""
    dockerfile = (
        f"FROM {source}\nENV PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1\nRUN echo {tag} > /etc/bake-bench-base\n"
    )
    docker("build", "--quiet", "--tag", tag, "-", input=dockerfile.encode())


def publish_model(bench: Bench) -> Path:
    """Make the model and publish it on the local Hub once per build path; return its folder."""
    workload = WORKLOADS[bench.model_name]
    folder = workload.make(bench.root / "model")
    for path in PATHS:
        bench.hub.add_repo(bench.repo(path), folder, pipeline_tag=workload.pipeline_tag)
    return folder


def make_project(bench: Bench) -> tuple[Path, dict[str, str]]:
    """A project directory with this machine's bake.toml, and the environment the builds run with."""
    project = bench.root / "project"
    project.mkdir()
    (project / "bake.toml").write_text(build_settings_toml())
    serve_copy = bench.root / "src"
    shutil.copytree(REPO_ROOT / "serve", serve_copy / "serve", ignore=shutil.ignore_patterns("__pycache__"))
    # the changed `serve`, and this checkout's bake
    env = bench.hub.client_env(PYTHONPATH=f"{serve_copy}{os.pathsep}{REPO_ROOT}")
    return project, env


def change_code(bench: Bench) -> str:
    """A code-only change: one comment line more in a module of the temporary `serve` copy; return the
    line."""
    line = f"# bake-bench {bench.run_id}: a code-only change"
    with (bench.root / "src" / "serve" / CHANGED_MODULE).open("a") as module:
        module.write(line + "\n")
    return line


def change_is_baked(tag: str, line: str) -> bool:
    """Whether the image `tag` holds the changed module (so the rebuild really rebuilt the code)."""
    module = f"/opt/bake/app/serve/{CHANGED_MODULE}"
    return (
        line in docker("run", "--rm", "--network", "none", "--entrypoint", "cat", tag, module).stdout.decode()
    )


def bake_build(bench: Bench, project: Path, env: dict[str, str], path: str, kind: str) -> BuildRun:
    """Run `bake build` for the model of build path `path` into `bench.tag(kind)`; time it and read its
    progress."""
    args = [
        "build",
        "--model",
        bench.repo(path),
        "--tag",
        bench.tag(kind),
        "--base-image",
        bench.base_image(path),
        *PATHS[path],
    ]
    began = time.perf_counter()
    result = run_bake(args, env, project)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"bake build ({kind}) failed:\n{result.stderr[-4000:]}")
    runs = []  # BuildKit numbers the steps of each of its runs from 1: one log per run
    for text in _NEXT_RUN.split(result.stderr):
        log, lines = BuildLog(), text.splitlines()
        for line in lines:
            log.feed(line)
        runs.append((log, lines))
    return BuildRun(
        seconds=seconds,
        stages_cached=stages_cached([log for log, _ in runs]),
        weights_cached=runs[0][0].stage_cached("weights"),
        deps_step_s=sum(steps_seconds(log, lines, "deps") for log, lines in runs),
        venv_steps_s=sum(steps_seconds(log, lines, "venv") for log, lines in runs),
        stage_steps_s={
            stage: round(sum(steps_seconds(log, lines, stage) for log, lines in runs), 1) for stage in STAGES
        },
        installer_lines=installer_lines(*next((run for run in runs if deps_ran(run[0])), runs[0])),
    )


def stages_cached(logs: list[BuildLog]) -> dict[str, str]:
    """Per stage of the Dockerfile, how many of its steps came from the cache in all runs, as
    "cached/steps"."""
    counts = {}
    for stage in STAGES:
        steps = [(log, step) for log in logs for step, name in log.stage_of_step.items() if name == stage]
        counts[stage] = f"{sum(step in log.cached_steps for log, step in steps)}/{len(steps)}"
    return counts


def steps_seconds(log: BuildLog, lines: list[str], stage: str) -> float:
    """The seconds BuildKit reports for the steps of `stage` that ran (cached steps report none)."""
    steps = {step for step, name in log.stage_of_step.items() if name == stage}
    return sum(
        float(done.group(2)) for line in lines if (done := _STEP_DONE.match(line)) and done.group(1) in steps
    )


def deps_ran(log: BuildLog) -> bool:
    """Whether a step of the deps stage ran (was not taken from the cache) in the run `log` read."""
    return any(step not in log.cached_steps for step, name in log.stage_of_step.items() if name == "deps")


def installer_lines(log: BuildLog, lines: list[str]) -> list[str]:
    """uv's summary lines in the deps stage's output, or, for pip, how many wheels it downloaded or had
    cached."""
    deps_steps = {step for step, name in log.stage_of_step.items() if name == "deps"}
    output = [
        step.group(2).strip()
        for line in lines
        if (step := _PROGRESS_LINE.match(line)) and step.group(1) in deps_steps
    ]
    summary = [line for line in output if _UV_SUMMARY.match(line)]
    if summary:
        return summary
    fetched = [
        fetch
        for line in output
        if (fetch := _PIP_FETCH.match(line)) and not fetch.group(2).endswith(".metadata")
    ]
    downloaded = sum(fetch.group(1) == "Downloading" for fetch in fetched)
    return [f"pip: {downloaded} wheels downloaded, {len(fetched) - downloaded} from its cache"]


def image_facts(tag: str, base_image: str, model_dir: Path, *, scan: bool) -> ImageFacts:
    """`tag`'s size by part (MiB), its largest packages, and (with `scan`) every copy of a weights file in its
    layers."""
    weights = {path.stat().st_size: sha256_of(path.open("rb")) for path in model_dir.rglob("*.safetensors")}
    total = int(docker("image", "inspect", tag, "--format", "{{.Size}}").stdout)
    return ImageFacts(
        total_mib=total / 2**20,
        parts_mib={part: size / 2**20 for part, size in layer_split(tag, base_image).items()},
        packages_mib=largest_packages(tag),
        weights_files=len(weights),
        weights_files_mib=sum(weights) / 2**20,
        weights_copies=list(weight_copies(tag, weights)) if scan else None,
    )


def largest_packages(tag: str, count: int = 8) -> dict[str, float]:
    """The `count` largest folders of the image's site-packages, in MiB (du's apparent size)."""
    site = "/opt/bake/venv/lib/python3.11/site-packages"
    names = (
        "torch",
        "transformers",
        "sympy",
        "numpy",
        "numpy.libs",
        "uvloop",
        "tokenizers",
        "pip",
        "setuptools",
        "hf_xet",
    )
    command = [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "du",
        tag,
        "-s",
        "-m",
        "--apparent-size",
        *(f"{site}/{name}" for name in names),
    ]
    output = subprocess.run(
        command, check=False, capture_output=True, text=True
    ).stdout  # absent ones: skipped
    sizes = {
        line.split("\t")[1].rsplit("/", 1)[1]: float(line.split("\t")[0]) for line in output.splitlines()
    }
    return dict(sorted(sizes.items(), key=lambda item: -item[1])[:count])


def history(image: str) -> list[tuple[int, str]]:
    """(bytes, instruction) of each history entry of `image`, oldest first."""
    output = docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
    rows = [line.split("\t", 1) for line in output.stdout.decode().splitlines()]
    return [(int(size), created_by) for size, created_by in reversed(rows)]


def layer_split(tag: str, base_image: str) -> dict[str, int]:
    """Bytes of `tag`'s layers per part: the base image's, the deps stage's, the weights', and bake's own."""
    entries = history(tag)
    base_entries = len(history(base_image))
    split = dict.fromkeys(PARTS, 0)
    split["base"] = sum(size for size, _ in entries[:base_entries])
    for size, created_by in entries[base_entries:]:
        if _WEIGHTS_COPY.match(created_by):
            split["weights"] += size
        elif _COMPILED_COPY.match(created_by):
            split["compiled"] += size
        elif _VENV_LAYER.match(created_by):
            split["venv"] += size
        else:
            split["bake"] += size
    return split


def weight_copies(tag: str, weights: dict[int, str]) -> Iterator[str]:
    """Scan every layer of `docker save tag` for files with the bytes of a weights file (size, then
    sha256)."""
    smallest = min(weights)
    with subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE) as save:
        assert save.stdout is not None
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for blob in archive:
                layer = archive.extractfile(blob) if blob.isfile() and blob.size >= smallest else None
                if layer is not None:
                    yield from (f"{blob.name}: {path}" for path in copies_in_layer(layer, weights))
        save.stdout.read()  # the archive's end padding: let docker save finish writing
    if save.returncode != 0:
        raise RuntimeError(f"docker save {tag} failed")


def copies_in_layer(layer: IO[bytes], weights: dict[int, str]) -> Iterator[str]:
    """Paths of the files in the layer tarball `layer` whose bytes are one of `weights` (by size: sha256)."""
    try:
        with tarfile.open(fileobj=layer, mode="r|*") as files:
            for member in files:
                content = files.extractfile(member) if member.isfile() and member.size in weights else None
                if content is not None and sha256_of(content) == weights[member.size]:
                    yield "/" + member.name.removeprefix("./")
    except tarfile.ReadError:  # a config or manifest blob, not a layer
        return


def sha256_of(stream: IO[bytes]) -> str:
    """The hex sha256 of everything `stream` holds (closed after)."""
    digest = hashlib.sha256()
    with stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_config(tag: str) -> dict[str, Any]:
    """The image's config (Env, Entrypoint, ExposedPorts...)."""
    return json.loads(docker("image", "inspect", tag, "--format", "{{json .Config}}").stdout)


def time_first_prediction(
    tag: str, name: str, workload: Workload, env: list[str]
) -> tuple[float, float, list[str]]:
    """Seconds from `docker run` to the first 200 from POST /predict (the workload's request), then to the
    first 200 from /ready (the server answers predictions before every batch bucket is warm), and the
    server's log lines.

    `env` holds KEY=VALUE runtime settings for the container (none: the image's own).
    """
    config = image_config(tag)
    python = config["Entrypoint"][0]
    port = next(iter(config["ExposedPorts"])).split("/")[0]
    began = time.perf_counter()
    docker("run", "-d", "--name", name, "--network", "none", *(f"--env={pair}" for pair in env), tag)
    script = FIRST_PREDICTION.format(port=port, content_type=workload.content_type)
    docker("exec", "-i", name, python, "-c", script, input=workload.body(), timeout=660)
    seconds = time.perf_counter() - began
    docker("exec", name, python, "-c", READY.format(port=port), timeout=660)
    ready = time.perf_counter() - began
    logs = subprocess.run(["docker", "logs", name], check=True, capture_output=True, text=True)
    return seconds, ready, (logs.stdout + logs.stderr).splitlines()


def time_floor(tag: str, name: str, floor: str) -> float:
    """Seconds from `docker run` to the exit of the `floor` script, run by the image's own python."""
    python = image_config(tag)["Entrypoint"][0]
    began = time.perf_counter()
    docker("run", "--name", name, "--network", "none", "--entrypoint", python, tag, "-c", floor, timeout=600)
    return time.perf_counter() - began


def measure_startup(bench: Bench, rounds: int, server_env: list[str]) -> Startup:
    """Rotate the pip image's server, the uv image's server and the floor (in the uv image), `rounds` times
    each."""
    workload = WORKLOADS[bench.model_name]
    first, ready, logs = ({path: [] for path in PATHS} for _ in range(3))
    startup = Startup(first, ready, [], logs)
    runs = [*PATHS, "floor"]
    for index in range(rounds):
        for kind in rotated(runs, index):
            name = bench.container(kind, index)
            try:
                if kind in PATHS:
                    seconds, ready, log = time_first_prediction(bench.tag(kind), name, workload, server_env)
                    startup.first_prediction_s[kind].append(seconds)
                    startup.ready_s[kind].append(ready)
                    startup.server_logs[kind].append(log)
                else:
                    startup.floor_s.append(time_floor(bench.tag("uv"), name, workload.floor))
            finally:
                subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)
    return startup


def docker_versions() -> dict[str, str]:
    """The engine's and buildx's versions."""
    return {
        "docker": docker("version", "--format", "{{.Server.Version}}").stdout.decode().strip(),
        "buildx": docker("buildx", "version").stdout.decode().strip(),
    }


def ready_in_seconds(logs: list[list[str]]) -> float | None:
    """The median of the servers' own "ready in N s" (from the runtime's start to loaded and warmed up)."""
    found = [float(match.group(1)) for log in logs for line in log if (match := _READY_IN.search(line))]
    return statistics.median(found) if found else None


def summarize(
    builds: dict[str, BuildRun], rebuild: BuildRun, facts: dict[str, ImageFacts], startup: Startup
) -> dict[str, Any]:
    """The headline numbers and whether each target is met."""
    first = {path: statistics.median(seconds) for path, seconds in startup.first_prediction_s.items()}
    ready = {path: statistics.median(seconds) for path, seconds in startup.ready_s.items()}
    floor = statistics.median(startup.floor_s)
    copies = facts["uv"].weights_copies
    return {
        "cold_build_s": {path: run.seconds for path, run in builds.items()},
        "cold_uv_vs_pip": builds["uv"].seconds / builds["pip"].seconds,
        "cold_build_target_met": builds["uv"].seconds / builds["pip"].seconds <= COLD_BUILD_TARGET,
        "image_mib": {path: image.total_mib for path, image in facts.items()},
        "size_target_met": facts["uv"].total_mib <= SIZE_TARGET_MIB,
        "rebuild_s": rebuild.seconds,
        "rebuild_target_met": rebuild.seconds <= REBUILD_TARGET_S and rebuild.weights_cached,
        "second_copy_of_weights": copies is None or len(copies) != facts["uv"].weights_files,
        "run_to_first_prediction_s": first,
        "server_ready_in_s": {path: ready_in_seconds(logs) for path, logs in startup.server_logs.items()},
        "floor_s": floor,
        "startup_vs_floor": {path: seconds / floor for path, seconds in first.items()},
        "startup_target_met": first["uv"] / floor <= STARTUP_TARGET,
        "run_to_ready_s": ready,
        "ready_vs_floor": {path: seconds / floor for path, seconds in ready.items()},
        "ready_target_met": ready["uv"] / floor <= READY_TARGET,
    }


def print_table(report: dict[str, Any]) -> None:
    """The results as a text table."""
    builds, rebuild, facts, startup, summary = (
        report[key] for key in ("cold_builds", "rebuild", "images", "startup", "summary")
    )
    yes_no = {True: "yes", False: "no"}
    met = {True: "met", False: "NOT met"}
    print(
        f"\n== bake build: {report['model']} ({facts['uv']['weights_files_mib']:.1f} MiB of safetensors) =="
    )
    if report["server_env"]:
        print(f"  serving container settings: {' '.join(report['server_env'])}")
    for path, run in builds.items():
        print(
            f"  cold build, {path:3s} path              {run['seconds']:8.1f} s   "
            f"deps step {run['deps_step_s']:5.1f} s, venv stage {run['venv_steps_s']:5.1f} s; "
            + "; ".join(run["installer_lines"])
        )
        steps = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in run["stage_steps_s"].items())
        print(f"    steps' seconds by stage: {steps}")
    print(
        f"    uv / pip                      {summary['cold_uv_vs_pip']:8.2f}     "
        f"(target <= {COLD_BUILD_TARGET}: {met[summary['cold_build_target_met']]})"
    )
    print(
        f"  rebuild after a code change     {rebuild['seconds']:8.1f} s   "
        f"(target <= {REBUILD_TARGET_S:g} s, weights from the cache: {met[summary['rebuild_target_met']]})"
    )
    for name, run in (*builds.items(), ("rebuild", rebuild)):
        stages = ", ".join(f"{stage} {count}" for stage, count in run["stages_cached"].items())
        print(f"    {name:8s} steps cached: {stages}; weights stage cached: {yes_no[run['weights_cached']]}")
    for path, image in facts.items():
        parts = ", ".join(f"{part} {mib:.1f}" for part, mib in image["parts_mib"].items())
        print(f"  image size, {path:3s} path              {image['total_mib']:8.1f} MiB   ({parts})")
        print(
            "    largest packages: "
            + ", ".join(f"{name} {mib:.0f}" for name, mib in image["packages_mib"].items())
        )
    print(
        f"    uv image <= {SIZE_TARGET_MIB:g} MiB: {met[summary['size_target_met']]}; "
        f"copies of its {facts['uv']['weights_files']} weights files in its layers: "
        f"{len(facts['uv']['weights_copies'])} "
        f"-> second copy: {yes_no[summary['second_copy_of_weights']]}"
    )
    for path, seconds in startup["first_prediction_s"].items():
        ready = summary["server_ready_in_s"][path]
        rounds = ", ".join(f"{s:.2f}" for s in seconds)
        first = summary["run_to_first_prediction_s"][path]
        print(
            f"  docker run -> first prediction, {path:3s} {first:6.2f} s   "
            f"({summary['startup_vs_floor'][path]:.2f}x the floor; rounds: {rounds};"
            f' "ready in" {"?" if ready is None else f"{ready:.1f}"} s)'
        )
    print(
        f"  floor: import, load, 1 forward  {summary['floor_s']:8.2f} s   (median; rounds: "
        + ", ".join(f"{s:.2f}" for s in startup["floor_s"])
        + ")"
    )
    for path, seconds in startup["ready_s"].items():
        rounds = ", ".join(f"{s:.2f}" for s in seconds)
        print(
            f"  docker run -> /ready 200, {path:3s}       {summary['run_to_ready_s'][path]:6.2f} s   "
            f"({summary['ready_vs_floor'][path]:.2f}x the floor; rounds: {rounds})"
        )
    print(
        f"  uv first prediction / floor     {summary['startup_vs_floor']['uv']:8.2f}     "
        f"(target <= {STARTUP_TARGET}: {met[summary['startup_target_met']]})"
    )
    print(
        f"  uv /ready / floor               {summary['ready_vs_floor']['uv']:8.2f}     "
        f"(target <= {READY_TARGET}: {met[summary['ready_target_met']]})"
    )


def run_benchmark(bench: Bench, rounds: int, server_env: list[str]) -> dict[str, Any]:
    """Both cold builds, the rebuild, the image facts and the startup rounds; the report as a JSON-able
    dict."""
    for path in PATHS:
        fresh_base_image(ensure_base_image(), bench.base_image(path))
    model_dir = publish_model(bench)
    project, env = make_project(bench)
    builds = {}
    for path in PATHS:
        print(f"cold build of {bench.repo(path)} ({path} path) ...", flush=True)
        builds[path] = bake_build(bench, project, env, path, path)
    change = change_code(bench)
    print(f"rebuild after a change to serve/{CHANGED_MODULE} ...", flush=True)
    rebuild = bake_build(bench, project, env, "uv", "rebuild")
    if not change_is_baked(bench.tag("rebuild"), change):
        raise RuntimeError(
            f"the rebuilt image lacks the change to serve/{CHANGED_MODULE}: bake did not use the copy"
        )
    print("image sizes and weight copies ...", flush=True)
    facts = {
        path: image_facts(bench.tag(path), bench.base_image(path), model_dir, scan=path == "uv")
        for path in PATHS
    }
    print(f"startup: {rounds} rounds of both servers and the floor ...", flush=True)
    startup = measure_startup(bench, rounds, server_env)
    return {
        "model": bench.model_name,
        "server_env": server_env,
        "cold_builds": {path: asdict(run) for path, run in builds.items()},
        "rebuild": asdict(rebuild),
        "images": {path: asdict(image) for path, image in facts.items()},
        "startup": asdict(startup),
        "summary": summarize(builds, rebuild, facts, startup),
    }


def clean_up(bench: Bench) -> None:
    """Remove the benchmark's containers and images (the build cache is left to BuildKit's garbage
    collector)."""
    names = docker(
        "ps", "-a", "--filter", f"name=bake-bench-{bench.run_id}", "--format", "{{.Names}}"
    ).stdout.split()
    for name in names:
        subprocess.run(["docker", "rm", "-f", name.decode()], check=False, capture_output=True)
    for image in (*(bench.tag(path) for path in PATHS), bench.tag("rebuild"), *map(bench.base_image, PATHS)):
        subprocess.run(["docker", "rmi", "-f", image], check=False, capture_output=True)


def main() -> int:
    """Run the benchmark; print the table; write JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="resnet50")
    parser.add_argument("--rounds", type=int, default=3, help="startup rounds (each server and the floor)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runtime setting for the serving container, e.g. BAKE_TORCHSCRIPT=0 (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "build.json")
    args = parser.parse_args()
    info = {**machine(), **docker_versions(), "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bake-bench-") as tmp, HubServer() as hub:
        bench = Bench(uuid.uuid4().hex[:8], Path(tmp), hub, args.model)
        try:
            report = run_benchmark(bench, args.rounds, args.server_env)
        finally:
            clean_up(bench)
    report = {"machine": {**info, "load_average_after": os.getloadavg()}, **report}
    print_table(report)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
