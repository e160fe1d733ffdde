"""`bake build`: resolve the model, plan the build, run it with BuildKit, report what was built."""

from __future__ import annotations

import re
import tempfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from bake.config import Config, check_build
from bake.docker import docker_client, ensure_engine
from bake.env import Environment
from bake.errors import BuildFailed, GatedModel
from bake.hub import ResolvedModel, resolve_model
from bake.labels import ImageFacts
from bake.plan import BuildPlan, plan_build

_STEP = re.compile(r"^#(\d+) \[(\S+) ")
_CACHED = re.compile(r"^#(\d+) CACHED")
_TAIL_LINES = 400
# The last line of a Python traceback inside a step,
# e.g. "#13 1.502 ModuleNotFoundError: No module named 'x'".
_EXCEPTION = re.compile(r"^#\d+ [\d.]+ ((?:[\w.]+\.)?\w+(?:Error|Exception|Exit): .*)$", re.MULTILINE)


@dataclass
class BuildLog:
    """What the build's progress output said: which stages ran and which came from the cache."""

    stage_of_step: dict[str, str] = field(default_factory=dict)
    cached_steps: set[str] = field(default_factory=set)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))

    def feed(self, line: str) -> None:
        """Record one line of `--progress plain` output."""
        self.tail.append(line)
        if match := _STEP.match(line):
            self.stage_of_step.setdefault(match.group(1), match.group(2))
        elif match := _CACHED.match(line):
            self.cached_steps.add(match.group(1))

    def stage_cached(self, stage: str) -> bool:
        """Whether every step of `stage` came from the cache (False if the stage never showed up)."""
        steps = [step for step, name in self.stage_of_step.items() if name == stage]
        return bool(steps) and all(step in self.cached_steps for step in steps)


@dataclass(frozen=True)
class BuiltImage:
    """The result of `bake build`."""

    tag: str
    size_bytes: int | None
    facts: ImageFacts
    pushed: bool
    weights_cached: bool
    """Whether the weights stage came entirely from the build cache (nothing was fetched)."""


def build(config: Config, env: Environment, *, output: TextIO) -> BuiltImage:
    """Build (and with --push, push) the image for `config`; progress goes to `output`."""
    check_build(config)
    client = docker_client()
    ensure_engine(client, buildx=True)
    model = resolve_model(config.model, env, device=config.build.device)
    if model.gated and not env.hf_token:
        raise GatedModel(
            f"{model.id} is gated: downloading it needs a token",
            f"accept its terms at {env.hf_endpoint}/{model.id}, then set HF_TOKEN",
        )
    _announce(model, config, output)
    with tempfile.TemporaryDirectory(prefix="bake-build-") as tmp:
        plan = plan_build(config, model, env, Path(tmp))
        log = run_build(plan, client, output)
    size = None if plan.push else client.image.inspect(plan.tag).size
    return BuiltImage(
        tag=plan.tag,
        size_bytes=size,
        facts=plan.facts,
        pushed=plan.push,
        weights_cached=log.stage_cached("weights"),
    )


def run_build(plan: BuildPlan, client: DockerClient, output: TextIO) -> BuildLog:
    """Run `docker buildx build` for `plan`, streaming its progress; raise `BuildFailed` with the cause."""
    log = BuildLog()
    try:
        lines: Iterable[str] = client.buildx.build(
            plan.context,
            file=plan.dockerfile,
            tags=[plan.tag],
            labels=plan.labels,
            build_contexts=plan.build_contexts,
            secrets=plan.secrets,
            allow=plan.allow,
            platforms=[plan.platform] if plan.platform else None,
            load=not plan.push,
            push=plan.push,
            provenance=False,
            progress="plain",
            stream_logs=True,
        )
        for line in lines:
            log.feed(line.rstrip("\n"))
            output.write(line if line.endswith("\n") else line + "\n")
            output.flush()
    except DockerException as error:
        raise diagnose(plan, "\n".join(log.tail) + "\n" + (error.stderr or "")) from None
    return log


def diagnose(plan: BuildPlan, text: str) -> BuildFailed:
    """The most likely cause of a failed build, as a one-line error with the fix."""
    lowered = text.lower()
    if "no space left on device" in lowered:
        return BuildFailed(
            "the disk filled up during the build",
            "free space (docker builder prune, docker image prune) "
            "or point Docker's data-root at a bigger disk",
        )
    if "failed to resolve source metadata" in lowered or "pull access denied" in lowered:
        return BuildFailed(
            f"the base image {plan.base_image} cannot be pulled",
            "check its name, `docker login` to its registry, "
            "or pass --base-image with an image the engine has",
        )
    if "gatedrepoerror" in lowered or "cannot access gated repo" in lowered:
        return BuildFailed(
            "the Hub refused the download: the model is gated", "set HF_TOKEN to a token with access"
        )
    if "could not find a version" in lowered or "no matching distribution" in lowered:
        return BuildFailed(
            "pip could not install the runtime's Python packages",
            "check --pip-index-url/--pip-find-links, and --ca-cert behind a TLS-inspecting proxy",
        )
    if "sha256 mismatch" in lowered:
        line = next(line for line in text.splitlines() if "sha256 mismatch" in line.lower())
        detail = line.split("sha256 mismatch:", 1)[-1].strip()
        return BuildFailed(
            f"a downloaded file does not match the Hub's sha256 ({detail})",
            "check HF_ENDPOINT and any proxy between you and the Hub, then build again",
        )
    if "certificate verify failed" in lowered:
        return BuildFailed(
            "a TLS certificate was not trusted inside the build", "pass --ca-cert with your proxy's CA bundle"
        )
    exceptions = [match.group(1) for match in _EXCEPTION.finditer(text)]
    if exceptions:
        return BuildFailed(f"a build step failed with {exceptions[-1].strip()}", "see the build output above")
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    return BuildFailed(
        f"the image build failed: {(errors or text.splitlines() or ['?'])[-1].strip()}",
        "see the build output above",
    )


def _announce(model: ResolvedModel, config: Config, output: TextIO) -> None:
    mib = model.weights_bytes / 2**20
    output.write(
        f"bake: {model.id} @ {model.commit_sha[:12]} ({model.revision}) "
        f"for {model.task} on {config.build.device}; "
        f"{len(model.files)} files, {mib:.1f} MiB"
        + (", .bin weights converted to safetensors" if model.convert_to_safetensors else "")
        + "\n"
    )
    output.flush()
