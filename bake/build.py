"""`bake build`: resolve the model, plan the build, run it with BuildKit, report what was built."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from bake.build_display import BuildDisplay
from bake.buildkit_log import BuildLog
from bake.config import Config, check_build
from bake.docker import docker_client, docker_errors, ensure_engine
from bake.env import Environment
from bake.errors import BuildFailed, GatedModel
from bake.hub import ResolvedModel, resolve_model
from bake.installer import HTTP_RETRIES, NO_PIP_WHEEL
from bake.labels import ImageFacts
from bake.package_sources import TORCH_CPU_INDEX, check_reachable, is_remote_engine
from bake.plan import COMPILE_REPORT_STAGE, RUNTIME_STAGE, BuildPlan, package_sources, plan_build
from serve.contract.compiled import Report
from serve.contract.labels import COMPILED

# The last line of a Python traceback inside a step,
# e.g. "#13 1.502 ModuleNotFoundError: No module named 'x'".
_EXCEPTION = re.compile(r"^#\d+ [\d.]+ ((?:[\w.]+\.)?\w+(?:Error|Exception|Exit): .*)$", re.MULTILINE)
# The runtime check's verdict (bake/image/check_runtime.py): "#21 3.1 bake-check[torch-build]: torch ...".
_CHECK = re.compile(r"bake-check\[([\w-]+)\]: (.*)$", re.MULTILINE)
# The weights step's verdict when the Hub or the network fails it (bake/image/fetch_weights.py).
_FETCH_FAILED = re.compile(r"bake-fetch: the download from the Hub failed: (.*)$", re.MULTILINE)
# The resolver's reason for an unsatisfiable install: uv's "╰─▶ Because ..." or pip's "ERROR: Could not ...".
# The tools step's own line (not its command, which BuildKit quotes when the step fails for another reason).
_NO_PIP_WHEEL = re.compile(rf"^#\d+ [\d.]+ {re.escape(NO_PIP_WHEEL)}$", re.MULTILINE)
_UNSATISFIABLE = re.compile(r"(Because .*?)\s*$|(ERROR: Could not find a version .*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class BuiltImage:
    """The result of `bake build`."""

    tag: str
    size_bytes: int | None
    facts: ImageFacts
    labels: dict[str, str]
    pushed: bool
    weights_cached: bool
    """Whether the weights stage came entirely from the build cache (nothing was fetched)."""
    compiled: str
    """The forward pass the image serves: "torchscript" or "eager: <reason>" (its `labels.COMPILED`)."""

    def as_dict(self) -> dict[str, object]:
        """What `bake build --json` prints."""
        facts = self.facts
        return {
            "image": self.tag,
            "size_bytes": self.size_bytes,
            "pushed": self.pushed,
            "model": facts.model,
            "revision": facts.revision,
            "commit_sha": facts.commit_sha,
            "task": facts.task,
            "device": facts.device,
            "weights_bytes": facts.weights_bytes,
            "weights_cached": self.weights_cached,
            "compiled": self.compiled,
            "labels": self.labels,
        }


def build(config: Config, env: Environment, *, display: BuildDisplay, cache: bool = True) -> BuiltImage:
    """Build (and with --push, push) the image for `config`, showing progress on `display`; `cache=False`
    runs every step again (`--no-cache`)."""
    check_build(config)
    client = docker_client()
    ensure_engine(client, buildx=True)
    model = resolve_model(config.model, env, device=config.build.device)
    if model.gated and not env.hf_token:
        raise GatedModel(
            f"{model.id} is gated: downloading it needs a token",
            f"accept its terms at {env.hf_endpoint}/{model.id}, then set HF_TOKEN",
        )
    display.note(_announcement(model, config))
    sources, warnings = check_reachable(
        package_sources(config, model),
        ca_cert=config.build.ca_cert,
        remote_engine=is_remote_engine(env.docker_host),
    )
    for warning in warnings:
        display.warning(warning)
    with tempfile.TemporaryDirectory(prefix="bake-build-") as tmp:
        plan = plan_build(config, model, env, Path(tmp), sources)
        logs = run_build(plan, client, display, cache=cache)
    size, labels = None, dict(plan.labels)
    if not plan.push:
        with docker_errors(f"inspect the image it built, {plan.tag}", "check `docker image ls`"):
            inspected = client.image.inspect(plan.tag)
        size, labels = inspected.size, dict(inspected.config.labels or labels)
    return BuiltImage(
        tag=plan.tag,
        size_bytes=size,
        facts=plan.facts,
        labels=labels,
        pushed=plan.push,
        weights_cached=logs[0].stage_cached("weights"),
        compiled=plan.labels[COMPILED],
    )


def run_build(
    plan: BuildPlan, client: DockerClient, display: BuildDisplay, *, cache: bool = True
) -> list[BuildLog]:
    """Run `docker buildx build` for `plan`, streaming its plain log to `display`; raise `BuildFailed` with
    the cause. Returns the log of each build run.

    When the plan compiles, BuildKit first builds the compile stage's report (from the image's stage: every
    step of the image) and bake reads it, so that the image's label says which forward pass it serves; the
    image's build then takes every step from the cache and only exports the image with its labels."""
    logs: list[BuildLog] = []
    try:
        with display:
            if plan.compiles:
                with tempfile.TemporaryDirectory(prefix="bake-compile-") as report_dir:
                    _run(plan, client, display, logs, cache=cache, report_dir=Path(report_dir))
                    report = Report.read(Path(report_dir)) or Report.eager(
                        "the compile stage wrote no report"
                    )
                plan.record_compile(report)
                display.note(compile_note(report))
            # After the report's run (with or without the cache), its steps are fresh: the image reuses them.
            _run(plan, client, display, logs, cache=cache or plan.compiles)
    except DockerException as error:
        log = logs[-1] if logs else BuildLog()
        display.failed(log)
        raise diagnose(plan, "\n".join(log.tail) + "\n" + (error.stderr or "")) from None
    return logs


def compile_note(report: Report) -> str:
    """What `bake build` says about the compile stage's outcome."""
    if report.compiled:
        return (
            f"bake: forward pass compiled at build time ({report.label}, max score difference "
            f"{report.parity:.1e} against the eager model): the image starts without transformers"
        )
    return f"bake: forward pass not compiled, the image loads the model with transformers: {report.reason}"


def _run(
    plan: BuildPlan,
    client: DockerClient,
    display: BuildDisplay,
    logs: list[BuildLog],
    *,
    cache: bool,
    report_dir: Path | None = None,
) -> None:
    """One build run, its lines fed to `display` and a new log appended to `logs`: the image, or with
    `report_dir` the compile report exported there."""
    log = BuildLog()
    logs.append(log)
    for line in _build_lines(plan, client, cache=cache, report_dir=report_dir):
        display.feed(log, line.rstrip("\n"))


def _build_lines(
    plan: BuildPlan, client: DockerClient, *, cache: bool, report_dir: Path | None = None
) -> Iterable[str]:
    """BuildKit's plain progress log of the build of `plan` (or of its compile report into `report_dir`),
    line by line."""
    image = report_dir is None
    lines: Iterable[str] = client.buildx.build(
        plan.context,
        file=plan.dockerfile,
        tags=[plan.tag] if image else [],
        labels=plan.labels if image else {},
        build_contexts=plan.build_contexts,
        secrets=plan.secrets,
        allow=plan.allow,
        platforms=[plan.platform] if plan.platform else None,
        load=image and not plan.push,
        push=image and plan.push,
        output={} if image else {"type": "local", "dest": str(report_dir)},
        target=RUNTIME_STAGE if image else COMPILE_REPORT_STAGE,
        provenance=False,
        cache=cache,
        progress="plain",
        stream_logs=True,
    )
    return lines


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
    if check := _CHECK.findall(text):
        kind, message = check[-1]
        fix = _CHECK_FIXES.get((kind, plan.facts.device), "see the build output above")
        return BuildFailed(message.strip(), fix)
    if "sha256 mismatch" in lowered:
        line = next(line for line in text.splitlines() if "sha256 mismatch" in line.lower())
        detail = line.split("sha256 mismatch:", 1)[-1].strip()
        return BuildFailed(
            f"a downloaded file does not match the Hub's sha256 ({detail})",
            "check HF_ENDPOINT and any proxy between you and the Hub, then build again",
        )
    if fetch := _FETCH_FAILED.findall(text):
        return BuildFailed(
            f"the model's files could not be downloaded from the Hub ({fetch[-1].strip()})",
            "check HF_ENDPOINT, your network and the Hub's status, then build again "
            "(the files already downloaded are kept in the build's download cache)",
        )
    if "certificate verify failed" in lowered or "invalid peer certificate" in lowered:
        return BuildFailed(
            "a TLS certificate was not trusted inside the build", "pass --ca-cert with your proxy's CA bundle"
        )
    if _NO_PIP_WHEEL.search(text):
        return BuildFailed(
            f"the base image {plan.base_image} cannot bootstrap pip: its python3 bundles no pip wheel",
            "install python3-venv in the base image (Debian, Ubuntu), or pass a --base-image that has it",
        )
    if "> [tools " in text and "build-tools.txt" in text:
        return BuildFailed(
            "the installer uv could not be installed from the package index",
            "put uv (bake/image/build-tools.txt) on your index or in --pip-find-links, "
            "or pass --installer pip",
        )
    if any(words in lowered for words in ("no solution found", "could not find a version", "no matching")):
        reasons = [next(part for part in match if part).rstrip(".") for match in _UNSATISFIABLE.findall(text)]
        return BuildFailed(
            "the image's Python packages could not be installed" + (f": {reasons[-1]}" if reasons else ""),
            "check --pip-index-url, --pip-extra-index-url, --pip-find-links and --torch-index-url",
        )
    if "failed to fetch" in lowered or "read timed out" in lowered or "max retries exceeded" in lowered:
        return BuildFailed(
            f"a package index stopped answering during the build (given up after {HTTP_RETRIES} retries)",
            "check the index and your network, or pass --pip-index-url with a mirror that answers",
        )
    exceptions = [match.group(1) for match in _EXCEPTION.finditer(text)]
    if exceptions:
        return BuildFailed(f"a build step failed with {exceptions[-1].strip()}", "see the build output above")
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    return BuildFailed(
        f"the image build failed: {(errors or text.splitlines() or ['?'])[-1].strip()}",
        "see the build output above",
    )


_CHECK_FIXES = {
    ("torch-build", "cpu"): (
        f"pass --torch-index-url with an index of PyTorch's CPU wheels (a mirror of {TORCH_CPU_INDEX}), "
        "or --pip-find-links with a folder holding the CPU torch wheel"
    ),
    ("torch-build", "cuda"): "pass --base-image with a CUDA torch, or --torch-version to install one",
    ("torch-version", "cpu"): "pass --torch-version with a version your torch index has",
    ("torch-version", "cuda"): "pass --torch-version with a version your package index has",
}
"""The fix for each kind of failed runtime check (bake/image/check_runtime.py), per device."""


def _announcement(model: ResolvedModel, config: Config) -> str:
    mib = model.weights_bytes / 2**20
    return (
        f"bake: {model.id} @ {model.commit_sha[:12]} ({model.revision}) "
        f"for {model.task} on {config.build.device}; "
        f"{len(model.files)} files, {mib:.1f} MiB"
        + (", .bin weights converted to safetensors" if model.convert_to_safetensors else "")
        + (f"; extra packages: {', '.join(model.packages)}" if model.packages else "")
    )
