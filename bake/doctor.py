"""`bake doctor`: is this machine ready for the configured build and launch? One check per line, each with
the fix when it fails.

A check is a small function returning a `Check`: ok, warn (works, but worth knowing), fail (the configured
`bake build` or `bake launch` cannot work until it is fixed) or skipped (not needed for this configuration,
or impossible to tell: the detail says which). What a check needs comes from the merged configuration
(flags > environment > bake.toml), so a CUDA build checks the NVIDIA runtime and a Fly launch the token.

The package sources check probes the configured indexes once, as `bake build` does before it builds, and
says where a CPU image's torch (always a CPU build) will come from.

The BuildKit check runs a real build of a few lines that uses every Dockerfile feature bake's template
needs: a named build context, a secret mount, `RUN --network`, a cache mount and `COPY --link` (with no
output, so nothing is left behind but a few bytes of build cache). Version numbers cannot tell: Debian's
engine reports its embedded BuildKit as v0.0.0+unknown.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import click
from huggingface_hub import HfApi, get_session
from huggingface_hub.constants import HF_HUB_CACHE
from huggingface_hub.errors import HfHubHTTPError, HTTPError
from python_on_whales import DockerClient
from python_on_whales.components.system.models import SystemInfo
from python_on_whales.exceptions import DockerException

import bake
from bake.config import Config
from bake.docker import docker_client, ensure_engine, last_line
from bake.env import Environment
from bake.errors import BuildFailed, DockerUnavailable
from bake.package_sources import check_reachable, configured_sources, is_remote_engine, redact
from bake.plan import DEFAULT_BASE_IMAGES

Status = Literal["ok", "warn", "fail", "skipped"]

MIN_PYTHON = (3, 10)
DISK_FAIL_BYTES = 2 * 2**30
"""Below this much free space an image build fails (a CPU image with torch is about 1.5 GiB to write)."""
DISK_WARN_BYTES = 10 * 2**30
"""Below this, a mid-sized model (a few GiB of weights, stored twice while building) may not fit."""
HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "true", "yes", "on"}
_LABELS: dict[str, str] = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skipped": "skip"}
_COLOURS: dict[str, str] = {"ok": "green", "warn": "yellow", "fail": "red", "skipped": "bright_black"}

_PROBE_DOCKERFILE = """\
FROM {base} AS probe
RUN --network=host --mount=type=secret,id=probe,required=true --mount=type=cache,target=/cache \\
    --mount=type=bind,from=probe_context,target=/context \\
    test "$(cat /run/secrets/probe)" = bake-doctor && cp /context/probe.txt /probe.txt
FROM scratch
COPY --link --from=probe_context probe.txt /context.txt
COPY --link --from=probe /probe.txt /probe.txt
"""
_PARSE_ONLY_DOCKERFILE = """\
FROM scratch AS unused
RUN --network=host --mount=type=secret,id=probe --mount=type=cache,target=/cache true
FROM scratch
COPY --link --from=probe_context probe.txt /context.txt
"""
"""Without the base image on the engine the RUN flags are only parsed (BuildKit parses every stage)."""
FEATURES = "named build contexts, secret and cache mounts, RUN --network, COPY --link"


@dataclass(frozen=True)
class Check:
    """The result of one check."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class Needs:
    """What the configured build and launch need from this machine."""

    device: str
    target: str
    docker_host: str
    model: str
    model_on_hub: bool
    base_image: str

    @classmethod
    def of(cls, config: Config) -> Needs:
        """The needs of `config`."""
        model = config.model
        return cls(
            device=config.build.device,
            target=config.launch.target,
            docker_host=config.launch.docker_host,
            model=model.id,
            model_on_hub=bool(model.id) and model.local_dir is None,
            base_image=config.build.base_image or DEFAULT_BASE_IMAGES[config.build.device],
        )


def run_checks(config: Config, env: Environment) -> list[Check]:
    """Every check, in order, for `config` on this machine."""
    needs = Needs.of(config)
    checks = [check_python(), check_bake()]
    engine_host = env.docker_host
    client, info, engine = check_engine(engine_host)
    checks.append(engine)
    if client is None or info is None:
        reason = "needs a Docker engine (see above)"
        checks += [Check(name, "skipped", reason) for name in ("buildx", "buildkit", "image store disk")]
    else:
        buildx = check_buildx(client)
        checks.append(buildx)
        checks.append(
            check_buildkit(client, needs.base_image)
            if buildx.status == "ok"
            else Check("buildkit", "skipped", "needs buildx (see above)")
        )
        checks.append(check_image_store_disk(info, engine_host))
    checks.append(check_hf_cache_disk())
    checks.append(check_package_sources(config, env))
    hub = check_hub(env, needs)
    checks += [hub, check_token(env, needs, reachable=hub.status == "ok")]
    checks.append(check_nvidia(info, needs))
    checks += [
        check_remote_engine(needs),
        check_fly_token(env, needs),
        check_flyctl(needs),
        check_kubectl(needs),
    ]
    return checks


def check_python() -> Check:
    """The interpreter bake runs on."""
    version = platform.python_version()
    if sys.version_info < MIN_PYTHON:
        return Check("python", "fail", f"Python {version} ({sys.executable})", "install Python 3.10 or newer")
    return Check("python", "ok", f"Python {version} ({sys.executable})")


def check_bake() -> Check:
    """Which bake this is, and where it is installed."""
    return Check("bake", "ok", f"bake {bake.__version__} ({Path(bake.__file__).parent})")


def check_engine(host: str) -> tuple[DockerClient | None, SystemInfo | None, Check]:
    """The Docker engine the build uses (`host`: DOCKER_HOST, empty for the local socket): its version and
    image store."""
    try:
        client = docker_client(host)
        ensure_engine(client)
        info = client.system.info()
        client_version = client.version().client.version
    except DockerUnavailable as error:
        return None, None, Check("docker engine", "fail", error.message, error.fix)
    except DockerException as error:
        return None, None, Check("docker engine", "fail", last_line(error), "check `docker info`")
    return (
        client,
        info,
        Check(
            "docker engine",
            "ok",
            f"Docker {info.server_version} (client {client_version}) at {host or 'the local socket'}; "
            f"{info.driver} "
            f"storage in {info.docker_root_dir}; {info.n_cpu} CPUs, {(info.mem_total or 0) / 2**30:.0f} GiB",
        ),
    )


def check_buildx(client: DockerClient) -> Check:
    """The buildx plugin `bake build` drives."""
    try:
        version = client.buildx.version()
    except DockerException:
        return Check(
            "buildx",
            "fail",
            "the Docker buildx plugin is missing",
            "install it (Debian: apt-get install docker-buildx)",
        )
    builder = client.buildx.inspect()
    nodes = ", ".join(f"BuildKit {node.version or '?'}" for node in builder.nodes)
    return Check(
        "buildx", "ok", f"buildx {_second_word(version)}; builder {builder.name} ({builder.driver}: {nodes})"
    )


def check_buildkit(client: DockerClient, base_image: str) -> Check:
    """A probe build with every Dockerfile feature bake's template uses (see the module docstring)."""
    base_present = client.image.exists(base_image)
    with tempfile.TemporaryDirectory(prefix="bake-doctor-") as tmp:
        root = Path(tmp)
        (root / "context").mkdir()
        (root / "context" / "probe.txt").write_text("bake doctor\n")
        (root / "secret").write_text("bake-doctor")
        dockerfile = _PROBE_DOCKERFILE.format(base=base_image) if base_present else _PARSE_ONLY_DOCKERFILE
        (root / "Dockerfile").write_text(dockerfile)
        started = time.monotonic()
        log: deque[str] = deque(maxlen=20)
        try:
            log.extend(
                client.buildx.build(
                    root / "context",
                    file=root / "Dockerfile",
                    build_contexts={"probe_context": str(root / "context")},
                    secrets=[f"id=probe,src={root / 'secret'}"],
                    allow=["network.host"],
                    output={"type": "cacheonly"},
                    cache=False,
                    progress="plain",
                    stream_logs=True,
                )
            )
        except DockerException as error:
            return Check(
                "buildkit",
                "fail",
                f"a probe build using {FEATURES} failed: {last_line(error)}",
                "upgrade Docker Engine (23 or newer embeds a BuildKit with all of them), or use a BuildKit "
                "builder: docker buildx create --use",
            )
    how = (
        f"ran a probe build on {base_image}"
        if base_present
        else f"parsed only: the base image {base_image} is not on the engine yet"
    )
    return Check("buildkit", "ok", f"{FEATURES}: supported ({how}, {time.monotonic() - started:.1f} s)")


def check_image_store_disk(info: SystemInfo, host: str) -> Check:
    """Free space where the engine keeps images and build cache (the weights are stored there twice)."""
    root = Path(str(info.docker_root_dir))
    if host and not host.startswith("unix://"):
        return Check(
            "image store disk", "skipped", f"the engine at {host} is remote: its disk is not visible here"
        )
    return _disk_check(
        "image store disk",
        root,
        "images and build cache",
        required=True,
        fix="free space (docker image prune; docker builder prune removes your build cache) or "
        "move Docker's data-root to a bigger disk",
    )


def check_package_sources(config: Config, env: Environment) -> Check:
    """The indexes the image's packages come from, each probed once as `bake build` does, and where a CPU
    image's torch comes from (a CPU build, never the package index's)."""
    build = config.build
    if build.ca_cert is not None and not build.ca_cert.is_file():
        return Check(
            "package sources", "fail", f"--ca-cert {build.ca_cert} is not a file", "pass a PEM bundle"
        )
    if build.pip_find_links is not None and not build.pip_find_links.is_dir():
        return Check(
            "package sources",
            "fail",
            f"--pip-find-links {build.pip_find_links} is not a directory",
            "pass a directory of wheels",
        )
    sources = configured_sources(build, cpu_torch=build.device == "cpu")
    try:
        sources, warnings = check_reachable(
            sources, ca_cert=build.ca_cert, remote_engine=is_remote_engine(env.docker_host)
        )
    except BuildFailed as error:
        return Check("package sources", "fail", error.message, error.fix)
    packages = redact(sources.index_url) if sources.index_url else "the --pip-find-links folder alone"
    if sources.torch_requirement:
        origin = redact(sources.torch_index_url) if sources.torch_index_url else "the --pip-find-links folder"
        torch = f"{sources.torch_requirement} from {origin}"
    elif build.torch_version:
        torch = f"torch=={build.torch_version} from the package index"
    else:
        torch = "the base image's own torch"
    detail = f"packages from {packages} ({build.installer}); {torch}"
    if warnings:
        return Check(
            "package sources",
            "warn",
            f"{detail}; {'; '.join(warnings)}",
            "check that index, or leave it out of the settings",
        )
    return Check("package sources", "ok", detail)


def check_hf_cache_disk() -> Check:
    """Free space for the host's Hugging Face cache (HF_HOME / HF_HUB_CACHE)."""
    return _disk_check(
        "HF cache disk",
        Path(HF_HUB_CACHE),
        "huggingface_hub's cache; builds download into BuildKit's cache instead",
        required=False,
        fix="free space, or point HF_HOME at a bigger disk",
    )


def _disk_check(name: str, path: Path, what: str, *, required: bool, fix: str) -> Check:
    existing = next((parent for parent in (path, *path.parents) if parent.exists()), Path("/"))
    try:
        free = shutil.disk_usage(existing).free
    except OSError as error:
        return Check(name, "skipped", f"cannot read the free space of {path}: {error.strerror}")
    detail = f"{free / 2**30:.1f} GiB free at {path} ({what})"
    if free < DISK_FAIL_BYTES:
        return Check(name, "fail" if required else "warn", detail, fix)
    if free < DISK_WARN_BYTES:
        return Check(name, "warn", detail + " (a model of a few GiB may not fit)", fix)
    return Check(name, "ok", detail)


def check_hub(env: Environment, needs: Needs) -> Check:
    """Whether HF_ENDPOINT answers (skipped with HF_HUB_OFFLINE)."""
    if env.variables.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return Check(
            "hub",
            "skipped",
            "offline (HF_HUB_OFFLINE is set): the Hub is not contacted"
            + (f"; building {needs.model} needs it" if needs.model_on_hub else ""),
        )
    started = time.monotonic()
    try:
        response = get_session().get(f"{env.hf_endpoint}/api/whoami-v2", timeout=HUB_TIMEOUT_S)
    except HTTPError as error:
        return Check(
            "hub",
            "fail" if needs.model_on_hub else "warn",
            f"cannot reach {env.hf_endpoint}: {type(error).__name__}: {error}",
            "check the network and proxy (--ca-cert for a TLS-inspecting one), or set HF_ENDPOINT to a "
            "reachable mirror" + ("" if needs.model_on_hub else "; only needed for Hub model ids"),
        )
    return Check(
        "hub",
        "ok",
        f"{env.hf_endpoint} answers (HTTP {response.status_code} in {time.monotonic() - started:.2f} s)",
    )


def check_token(env: Environment, needs: Needs, *, reachable: bool) -> Check:
    """Whether the Hub accepts the token (HF_TOKEN, else the saved login), without ever printing it."""
    if not env.hf_token:
        return Check("hf token", "skipped", "no HF_TOKEN and no saved login: public models only")
    if not reachable:
        return Check("hf token", "skipped", "set, but the Hub is not reachable (see above)")
    try:
        account = HfApi(endpoint=env.hf_endpoint).whoami(token=env.hf_token)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            return Check(
                "hf token",
                "fail" if needs.model_on_hub else "warn",
                f"{env.hf_endpoint} refuses the token (HTTP 401): it is invalid or expired",
                f"create one at {env.hf_endpoint}/settings/tokens and set HF_TOKEN (or run `hf auth login`)",
            )
        return Check(
            "hf token", "warn", f"{env.hf_endpoint} could not check the token (HTTP {status})", "retry later"
        )
    except HTTPError as error:
        return Check(
            "hf token", "warn", f"the token check failed: {type(error).__name__}: {error}", "retry later"
        )
    role = (account.get("auth", {}).get("accessToken") or {}).get("role")
    return Check("hf token", "ok", f"valid: {account.get('name', '?')}" + (f" ({role})" if role else ""))


def check_nvidia(info: SystemInfo | None, needs: Needs) -> Check:
    """The NVIDIA runtime and GPUs, when a CUDA image is configured for a Docker host."""
    if needs.device != "cuda":
        return Check("nvidia", "skipped", "no CUDA build configured (--device cuda)")
    if needs.target in ("fly", "kubernetes"):
        return Check("nvidia", "skipped", f"the {needs.target} target provides the GPUs, not this machine")
    if needs.target == "docker":
        return Check(
            "nvidia",
            "skipped",
            f"the remote engine {needs.docker_host or '?'} runs the image: "
            "check it with DOCKER_HOST=... bake doctor --device cuda",
        )
    runtimes = sorted((info.runtimes or {}).keys()) if info is not None else []
    if info is not None and "nvidia" not in runtimes:
        return Check(
            "nvidia",
            "fail",
            f"the engine has no NVIDIA runtime (runtimes: {', '.join(runtimes) or 'none'})",
            "install the NVIDIA Container Toolkit, run `nvidia-ctk runtime configure --runtime=docker` and "
            "restart dockerd",
        )
    gpus = _gpus()
    if gpus is None:
        return Check(
            "nvidia",
            "fail",
            "no NVIDIA driver: nvidia-smi is not installed or finds no GPU",
            "install the NVIDIA driver for this machine's GPUs",
        )
    runtime = "NVIDIA runtime; " if info is not None else ""
    return Check(
        "nvidia", "ok", f"{runtime}{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}: {'; '.join(gpus)}"
    )


def _gpus() -> list[str] | None:
    """One line per GPU (name, memory, driver) from nvidia-smi, or None without a driver or GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines if result.returncode == 0 and lines else None


def check_remote_engine(needs: Needs) -> Check:
    """The engine of the docker target (--host), when that target is configured."""
    if needs.target != "docker":
        return Check("remote engine", "skipped", "the docker target is not configured")
    if not needs.docker_host:
        return Check(
            "remote engine",
            "fail",
            "the docker target has no engine",
            "pass --host ssh://user@box or tcp://box:2376 (launch.docker_host in bake.toml)",
        )
    try:
        client = docker_client(needs.docker_host)
        ensure_engine(client)
        version = client.system.info().server_version
    except DockerUnavailable as error:
        return Check("remote engine", "fail", error.message, error.fix)
    return Check("remote engine", "ok", f"Docker {version} at {needs.docker_host}")


def check_fly_token(env: Environment, needs: Needs) -> Check:
    """FLY_API_TOKEN (and no CUDA image), when the fly target is configured."""
    if needs.target != "fly":
        return Check("fly token", "skipped", "the fly target is not configured")
    if needs.device == "cuda":
        return Check(
            "fly token",
            "fail",
            "Fly.io has no GPU Machines any more, and the build is for CUDA",
            "build with --device cpu for Fly, or launch the CUDA image with --target kubernetes or docker",
        )
    if not env.fly_api_token:
        return Check(
            "fly token",
            "fail",
            "FLY_API_TOKEN is not set",
            "create one with `fly tokens create deploy` and export FLY_API_TOKEN",
        )
    return Check("fly token", "ok", "FLY_API_TOKEN is set")


def check_flyctl(needs: Needs) -> Check:
    """flyctl, which bake prefers for Fly deploys when installed (the Machines API works without it)."""
    if needs.target != "fly":
        return Check("flyctl", "skipped", "the fly target is not configured")
    version = _tool_version(["flyctl", "version"])
    if version is None:
        return Check("flyctl", "ok", "not installed: bake deploys through the Fly Machines API")
    return Check("flyctl", "ok", f"{version}: bake deploys with it")


def check_kubectl(needs: Needs) -> Check:
    """kubectl and its current context, when the kubernetes target is configured (for --apply)."""
    if needs.target != "kubernetes":
        return Check("kubectl", "skipped", "the kubernetes target is not configured")
    raw = _tool_version(["kubectl", "version", "--client", "-o", "json"])
    if raw is None:
        return Check(
            "kubectl",
            "warn",
            "kubectl is not installed: `bake launch --apply` needs it",
            "install kubectl, or apply the written manifests yourself",
        )
    try:
        version = json.loads(raw)["clientVersion"]["gitVersion"]
    except (ValueError, KeyError, TypeError):
        version = raw.splitlines()[0]
    context = _tool_version(["kubectl", "config", "current-context"])
    if context is None:
        return Check(
            "kubectl",
            "warn",
            f"kubectl {version}, but no current context",
            "kubectl config use-context NAME (or set KUBECONFIG)",
        )
    return Check("kubectl", "ok", f"kubectl {version}, context {context}")


def _tool_version(command: list[str]) -> str | None:
    """The stripped output of `command`, or None if it is not installed or fails."""
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def _second_word(text: str) -> str:
    """`docker buildx version` says "github.com/docker/buildx 0.13.1 <commit>": the version."""
    words = text.split()
    return words[1] if len(words) > 1 else text


def report(checks: list[Check], *, as_json: bool) -> str:
    """The checks as JSON, or one line per check (with the fix below a failure or warning) and a verdict."""
    if as_json:
        return json.dumps(
            {"ok": not failed(checks), "checks": [check.as_dict() for check in checks]}, indent=2
        )
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        label = click.style(_LABELS[check.status].ljust(4), fg=_COLOURS[check.status])
        lines.append(f"{label}  {check.name.ljust(width)}  {check.detail}")
        if check.fix and check.status in ("fail", "warn"):
            lines.append(f"{' ' * (width + 8)}fix: {check.fix}")
    names = [check.name for check in checks if check.status == "fail"]
    lines.append("")
    if names:
        lines.append(
            f"{len(names)} check{'s' if len(names) != 1 else ''} failed ({', '.join(names)}): the "
            "configured build or launch cannot work until fixed"
        )
    else:
        lines.append("ready: the configured build and launch have what they need")
    return "\n".join(lines)


def failed(checks: list[Check]) -> bool:
    """Whether a check that the configured build or launch needs failed."""
    return any(check.status == "fail" for check in checks)
