"""Turning a configuration and a resolved model into a concrete BuildKit build: the plan.

The plan is a build context directory (the rendered Dockerfile, the runtime's requirements and pins,
the weights-stage script and a copy of the `serve` package), the named build contexts (a local model,
a wheel directory), the secrets (HF token, CA bundle, pip configuration: files outside the context that
BuildKit mounts only while a step runs), the labels and the tag.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import ipaddress
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from packaging.requirements import Requirement

from bake import __version__
from bake.config import Config
from bake.env import Environment
from bake.errors import ConfigError
from bake.hub import ResolvedModel
from bake.labels import ImageFacts
from serve.contract import image
from serve.contract.compiled import COMPILER_FILES, MANIFEST_FILE, REPORT_FILE, Report
from serve.contract.labels import COMPILED
from serve.contract.names import model_name
from serve.contract.settings import MODEL_ENV, OFFLINE_ENV, env_name
from serve.contract.tasks import IMAGE_CLASSIFICATION, TEXT_TO_IMAGE

DEFAULT_BASE_IMAGES = {
    "cpu": "python:3.11-slim-bookworm",
    "cuda": "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
}
"""Base images when --base-image is not given: a slim Python for the CPU (bake installs a CPU torch), and
PyTorch's CUDA runtime image for CUDA (its torch is reused by the virtualenv)."""

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""Searched for torch in CPU images unless a package index is configured, so the image gets the CPU
wheel (~200 MB) instead of PyPI's default CUDA build (several GB)."""

_PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE = _PACKAGE_DIR / "templates" / "Dockerfile.template"
_IMAGE_FILES = _PACKAGE_DIR / "image"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
COMPILE_REPORT_STAGE = "compile-report"
"""The Dockerfile stage holding only the compile stage's report, which `bake build` exports and reads before
it builds the image (the report decides the image's `labels.COMPILED`)."""
_COMPILER_DIR = "/opt/bake/compiler"


@dataclass
class BuildPlan:
    """Everything `docker buildx build` needs for one image."""

    context: Path
    dockerfile: Path
    tag: str
    facts: ImageFacts
    labels: dict[str, str]
    base_image: str
    build_contexts: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    platform: str | None = None
    push: bool = False
    compiles: bool = False
    """Whether the compile stage runs the compiler (its report then sets `labels.COMPILED`); when not, the
    label already says why."""

    def record_compile(self, report: Report) -> None:
        """Label the image with the path the compile stage's `report` says it serves."""
        self.labels[COMPILED] = report.label


def plan_build(config: Config, model: ResolvedModel, env: Environment, workdir: Path) -> BuildPlan:
    """Write the build context and secrets for `model` into `workdir` and describe the build."""
    build = config.build
    base_image = build.base_image or DEFAULT_BASE_IMAGES[build.device]
    context = workdir / "context"
    context.mkdir(parents=True)
    _copy_sources(context, build.torch_version)
    skipped = compile_skipped(config, model)
    requirements = runtime_requirements(model.task, model.packages)
    (context / "requirements.txt").write_text("\n".join(requirements) + "\n")
    runtime_env = {
        MODEL_ENV: image.LOCAL_MODEL if model.local_dir else model.id,
        env_name("revision"): model.revision,
        env_name("task"): model.task,
        env_name("device"): build.device,
        **config.serve.environment(),
    }
    facts = ImageFacts(
        model=model.id,
        revision=model.revision,
        commit_sha=model.commit_sha,
        task=model.task,
        device=build.device,
        weights={file.path: file.sha256 for file in model.files if file.sha256},
        weights_bytes=model.weights_bytes,
        serve=config.serve,
        bake_version=__version__,
    )
    plan = BuildPlan(
        context=context,
        dockerfile=context / "Dockerfile",
        tag=build.tag or default_tag(model),
        facts=facts,
        labels=facts.to_labels(
            base_image=base_image, source=None if model.local_dir else f"{env.hf_endpoint}/{model.id}"
        ),
        base_image=base_image,
        platform=build.platform or None,
        push=build.push,
        compiles=skipped is None,
    )
    if skipped is not None:
        plan.record_compile(Report.eager(skipped))
    _add_secrets(plan, config, env, workdir)
    if build.pip_find_links is not None:
        plan.build_contexts["wheels"] = str(build.pip_find_links.resolve())
    if model.local_dir is not None:
        plan.build_contexts["model"] = str(model.local_dir)
    network_host = model.local_dir is None and is_loopback(env.hf_endpoint)
    if network_host:
        plan.allow.append("network.host")
    plan.dockerfile.write_text(
        render_dockerfile(
            model=model,
            base_image=base_image,
            env=env,
            runtime_env=runtime_env,
            port=config.serve.port,
            wheels=build.pip_find_links is not None,
            network_host=network_host,
            compile_command=compile_command(model, config.serve.max_batch_size, skipped),
        )
    )
    return plan


def compile_skipped(config: Config, model: ResolvedModel) -> str | None:
    """Why this build does not compile the forward pass, or None when it tries (the compiler may still
    refuse the model, and then says why)."""
    if not config.build.compile:
        return "compiling is turned off (--no-compile)"
    if model.task != IMAGE_CLASSIFICATION:
        return f"{model.task} models are not compiled"
    if config.build.device != "cpu":
        return "a CUDA image is compiled only by a build that sees a GPU, and this build does not"
    if not config.serve.torchscript:
        return "serve.torchscript is off"
    return None


def compile_command(model: ResolvedModel, max_batch_size: int, skipped: str | None) -> str:
    """The compile stage's shell command: run the compiler (if it crashes, a report says so and no manifest
    is left), or, when `skipped` says why not, only write the report."""
    if skipped is not None:
        return f"mkdir -p {image.COMPILED} && {_write_report(Report.eager(skipped))}"
    if model.local_dir is not None:
        model_dir, served, commit = image.LOCAL_MODEL, image.LOCAL_MODEL, ""
    else:
        repo_dir = f"{image.HF_HOME}/hub/models--{model.id.replace('/', '--')}"
        model_dir, served, commit = f"{repo_dir}/snapshots/{model.commit_sha}", model.id, model.commit_sha
    arguments = ["--model-dir", model_dir, "--model", served, "--commit", commit]
    arguments += ["--max-batch-size", str(max_batch_size), "--out", image.COMPILED]
    environment = {**OFFLINE_ENV, "PYTHONPATH": _COMPILER_DIR}
    crashed = Report.eager("the compiler crashed: see the compile step's output")
    return (
        " ".join(f"{key}={value}" for key, value in environment.items())
        + " /opt/bake/venv/bin/python -m serve.compile "
        + " ".join(shlex.quote(arg) for arg in arguments)
        + f" || {{ rm -f {image.COMPILED}/{MANIFEST_FILE} && {_write_report(crashed)}; }}"
    )


def _write_report(report: Report) -> str:
    """A shell command writing `report` where the compile stage's report goes."""
    text = json.dumps(dataclasses.asdict(report))
    return f"printf '%s\\n' {shlex.quote(text)} > {image.COMPILED}/{REPORT_FILE}"


def render_dockerfile(
    *,
    model: ResolvedModel,
    base_image: str,
    env: Environment,
    runtime_env: dict[str, str],
    port: int,
    wheels: bool,
    network_host: bool,
    compile_command: str,
) -> str:
    """The Dockerfile for `model`: `Dockerfile.template` with this build's values."""
    files = [file.path for file in model.files]
    if model.local_dir is not None:
        fetch_args = ["local", "--source", "/model", "--out", image.LOCAL_MODEL]
        weights_dir = image.LOCAL_MODEL
    else:
        fetch_args = [
            "hub",
            "--repo",
            model.id,
            "--revision",
            model.revision,
            "--commit",
            model.commit_sha,
            "--out",
            f"{image.HF_HOME}/hub",
        ]
        weights_dir = image.HF_HOME
    if model.local_dir is None:
        fetch_args += [f"--sha256={file.path}={file.sha256}" for file in model.files if file.sha256]
    fetch_args += ["--manifest", image.MANIFEST, "--files", *files]
    if model.convert_to_safetensors:
        fetch_args.insert(1, "--convert")
    fetch_env = {
        "HF_ENDPOINT": env.hf_endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if env.variables.get("HF_HUB_DISABLE_XET"):
        fetch_env["HF_HUB_DISABLE_XET"] = env.variables["HF_HUB_DISABLE_XET"]
    fetch_packages = ["huggingface_hub", "safetensors"] + (
        ["torch", "numpy"] if model.convert_to_safetensors else []
    )
    values = {
        "BAKE_VERSION": __version__,
        "MODEL": model.id,
        "COMMIT": model.commit_sha,
        "BASE_IMAGE": base_image,
        "WHEELS_MOUNT": "\\\n    --mount=type=bind,from=wheels,target=/wheels " if wheels else "",
        "MODEL_MOUNT": "\\\n    --mount=type=bind,from=model,target=/model " if model.local_dir else "",
        "TRUST_CA": (
            "if [ -s /run/secrets/ca_cert ]; then export SSL_CERT_FILE=/run/secrets/ca_cert "
            "REQUESTS_CA_BUNDLE=/run/secrets/ca_cert PIP_CERT=/run/secrets/ca_cert; fi &&"
        ),
        "FETCH_PACKAGES": " ".join(fetch_packages) + " -c /opt/bake/constraints.txt",
        "WEIGHTS_NETWORK": "--network=host " if network_host else "",
        "FETCH_ENV": " ".join(f"{key}={shlex.quote(value)}" for key, value in fetch_env.items()),
        "FETCH_ARGS": " ".join(shlex.quote(arg) for arg in fetch_args),
        "WEIGHTS_DIR": weights_dir,
        "HF_HOME": image.HF_HOME,
        "MANIFEST": image.MANIFEST,
        "SBOM": image.SBOM,
        "SBOM_ARGS": " ".join(
            shlex.quote(arg)
            for arg in ("--name", model.id, "--version", model.commit_sha, "--bake-version", __version__)
        )
        + f" --out {image.SBOM}",
        "OFFLINE_ENV": " ".join(f"{key}={value}" for key, value in OFFLINE_ENV.items()),
        "RUNTIME_ENV": " \\\n    ".join(f"{key}={json.dumps(value)}" for key, value in runtime_env.items()),
        "PORT": str(port),
        "HEALTH_START_S": "30",
        "COMPILED": image.COMPILED,
        "COMPILER_DIR": _COMPILER_DIR,
        "COMPILE_REPORT": f"{image.COMPILED}/{REPORT_FILE}",
        "COMPILE_COMMAND": compile_command,
        "COMPILE_REPORT_STAGE": COMPILE_REPORT_STAGE,
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def runtime_requirements(task: str, packages: tuple[str, ...] = ()) -> list[str]:
    """The runtime's requirements for `task`: this distribution's `serve` extra (+ `diffusion`), and the extra
    `packages` the model needs (pinned, like the rest, by the image's constraints)."""
    extras = {"serve"} | ({"diffusion"} if task == TEXT_TO_IMAGE else set())
    requirements = []
    for raw in importlib.metadata.requires("bake") or []:
        requirement = Requirement(raw)
        if requirement.marker is not None and any(requirement.marker.evaluate({"extra": e}) for e in extras):
            requirement.marker = None
            requirements.append(str(requirement))
    return requirements + list(packages)


def default_tag(model: ResolvedModel) -> str:
    """bake/<model name>:<first 12 of the commit sha>."""
    return f"bake/{model_name(model.id)}:{model.commit_sha[:12]}"


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (a build step then needs the host's network to reach it)."""
    host = urlsplit(url).hostname or ""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _copy_sources(context: Path, torch_version: str) -> None:
    """The weights and SBOM scripts, the runtime pins (+ torch's, if asked) and the `serve` package (not
    imported)."""
    shutil.copyfile(_IMAGE_FILES / "fetch_weights.py", context / "fetch_weights.py")
    shutil.copyfile(_IMAGE_FILES / "sbom.py", context / "sbom.py")
    constraints = (_IMAGE_FILES / "constraints.txt").read_text()
    if torch_version:
        constraints += f"torch=={torch_version}\n"
    (context / "constraints.txt").write_text(constraints)
    spec = importlib.util.find_spec("serve")
    if spec is None or spec.origin is None:
        raise ConfigError("the serve package is not installed next to bake", "reinstall bake")
    package = Path(spec.origin).parent
    shutil.copytree(package, context / "serve", ignore=shutil.ignore_patterns("__pycache__"))
    for name in COMPILER_FILES:  # the compile stage's only code: other changes do not compile again
        target = context / "compiler" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package.parent / name, target)


def _add_secrets(plan: BuildPlan, config: Config, env: Environment, workdir: Path) -> None:
    """Secret files BuildKit mounts at /run/secrets/<id> for the steps that ask for them."""
    build = config.build
    pip_conf = ["[global]"]
    if build.pip_index_url:
        pip_conf.append(f"index-url = {build.pip_index_url}")
    extra = list(build.pip_extra_index_urls)
    if build.device == "cpu" and not build.pip_index_url:
        extra.append(TORCH_CPU_INDEX)
    if extra:
        pip_conf.append("extra-index-url = " + " ".join(extra))
    if build.pip_find_links is not None:
        pip_conf.append("find-links = /wheels")
    _secret(plan, workdir, "pip_conf", "\n".join(pip_conf) + "\n")
    if env.hf_token:
        _secret(plan, workdir, "hf_token", env.hf_token)
    if build.ca_cert is not None:
        plan.secrets.append(f"id=ca_cert,src={build.ca_cert.resolve()}")


def _secret(plan: BuildPlan, workdir: Path, name: str, content: str) -> None:
    path = workdir / "secrets" / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(content)
    plan.secrets.append(f"id={name},src={path}")
