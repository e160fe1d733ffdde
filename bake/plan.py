"""Turning a configuration and a resolved model into a concrete BuildKit build: the plan.

The plan is a build context directory (the rendered Dockerfile, the runtime's requirements and pins, the
package sources without credentials, the scripts of the image's build steps and a copy of the `serve`
package), the named build contexts (a local model, a wheel directory), the secrets (HF token, CA bundle, the
installer's index arguments: files outside the context that BuildKit mounts only while a step runs), the
labels and the tag.
"""

from __future__ import annotations

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
from bake.installer import PACKAGE_INDEX_SECRET, TORCH_INDEX_SECRET, Install, Installer
from bake.labels import ImageFacts
from bake.package_sources import WHEELS_MOUNT, PackageSources, configured_sources
from serve.contract import image, pipelines
from serve.contract.names import model_name
from serve.contract.settings import MODEL_ENV, OFFLINE_ENV, env_name
from serve.contract.tasks import TEXT_TO_IMAGE

DEFAULT_BASE_IMAGES = {
    "cpu": "python:3.11-slim-bookworm",
    "cuda": "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
}
"""Base images when --base-image is not given: a slim Python for the CPU (bake installs a CPU torch), and
PyTorch's CUDA runtime image for CUDA (its torch is reused by the virtualenv)."""

_PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE = _PACKAGE_DIR / "templates" / "Dockerfile.template"
_IMAGE_FILES = _PACKAGE_DIR / "image"
_IMAGE_SCRIPTS = ("fetch_weights.py", "slim_venv.py", "elf_symbols.py", "check_runtime.py")
_IMAGE_LISTS = ("build-tools.txt", "excludes.txt", "constraints.txt")
_VENV = "/opt/bake/venv"
_FETCH_VENV = "/opt/bake/fetch"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


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


def plan_build(
    config: Config,
    model: ResolvedModel,
    env: Environment,
    workdir: Path,
    sources: PackageSources | None = None,
) -> BuildPlan:
    """Write the build context and secrets for `model` into `workdir` and describe the build.

    `sources`: where the packages come from, as checked by `package_sources.check_reachable` (default: as
    configured, unchecked).
    """
    build = config.build
    base_image = build.base_image or DEFAULT_BASE_IMAGES[build.device]
    if sources is None:
        sources = configured_sources(build, cpu_torch=needs_cpu_torch(config, model))
    context = workdir / "context"
    context.mkdir(parents=True)
    _copy_sources(context)
    (context / "requirements.txt").write_text("\n".join(image_requirements(config, model, sources)) + "\n")
    (context / "package-sources.txt").write_text(
        "# Where the deps stage's packages come from (no credentials): a change here rebuilds the stage.\n"
        + sources.describe()
    )
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
    )
    _add_secrets(plan, config, env, workdir, sources)
    if build.pip_find_links is not None:
        plan.build_contexts["wheels"] = str(build.pip_find_links.resolve())
    if model.local_dir is not None:
        plan.build_contexts["model"] = str(model.local_dir)
    network_host = model.local_dir is None and is_loopback(env.hf_endpoint)
    install_network_host = any(is_loopback(url) for url in sources.urls)
    if network_host or install_network_host:
        plan.allow.append("network.host")
    plan.dockerfile.write_text(
        render_dockerfile(
            config=config,
            model=model,
            base_image=base_image,
            env=env,
            runtime_env=runtime_env,
            sources=sources,
            network_host=network_host,
            install_network_host=install_network_host,
        )
    )
    return plan


def needs_cpu_torch(config: Config, model: ResolvedModel) -> bool:
    """Whether the build installs a CPU torch: for a CPU image, and to convert .bin weights (any device)."""
    return config.build.device == "cpu" or model.convert_to_safetensors


def render_dockerfile(
    *,
    config: Config,
    model: ResolvedModel,
    base_image: str,
    env: Environment,
    runtime_env: dict[str, str],
    sources: PackageSources,
    network_host: bool,
    install_network_host: bool,
) -> str:
    """The Dockerfile for `model`: `Dockerfile.template` with this build's values."""
    build = config.build
    installer = Installer(build.installer)
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
    convert = model.convert_to_safetensors
    fetch = Install(
        venv=_FETCH_VENV,
        requirements=(
            "huggingface_hub",
            "safetensors",
            *((sources.torch_requirement, "numpy") if convert else ()),
        ),
        constraints="/opt/bake/constraints.txt",
        torch_requirement=sources.torch_requirement if convert else None,
    )
    deps = Install(
        venv=_VENV,
        requirements=("-r", "/opt/bake/requirements.txt"),
        constraints="/opt/bake/constraints.txt",
        torch_requirement=sources.torch_requirement if build.device == "cpu" else None,
        excludes="/opt/bake/excludes.txt",
        with_pip=build.keep_build_tools,
        reuse_base_torch=build.device == "cuda" and not build.torch_version,
    )
    check_args = ["--device", build.device, "--task", model.task]
    if pinned := _torch_pin(config, sources):
        check_args += ["--torch-version", pinned]
    for name in model.packages:
        check_args += ["--import", pipelines.EXTRA_PACKAGES[name].module]
    values = {
        "BAKE_VERSION": __version__,
        "MODEL": model.id,
        "COMMIT": model.commit_sha,
        "BASE_IMAGE": base_image,
        "INSTALL_NETWORK": "--network=host " if install_network_host else "",
        "INSTALLER_CACHE": installer.cache_mount,
        "INSTALL_TOOLS": installer.tools(),
        "INSTALL_DEPS": installer.install(deps),
        "INSTALL_FETCHER": installer.install(fetch),
        "SLIM_STEP": (
            "# --keep-build-tools: the virtualenv ships as installed"
            if build.keep_build_tools
            else f"RUN python3 /opt/bake/slim_venv.py {_VENV}"
        ),
        "CHECK_ARGS": " ".join(shlex.quote(arg) for arg in check_args),
        "WHEELS_MOUNT": (
            f"\\\n    --mount=type=bind,from=wheels,target={WHEELS_MOUNT} " if sources.find_links else ""
        ),
        "MODEL_MOUNT": "\\\n    --mount=type=bind,from=model,target=/model " if model.local_dir else "",
        "TRUST_CA": (
            "if [ -s /run/secrets/ca_cert ]; then export SSL_CERT_FILE=/run/secrets/ca_cert "
            "REQUESTS_CA_BUNDLE=/run/secrets/ca_cert PIP_CERT=/run/secrets/ca_cert; fi &&"
        ),
        "WEIGHTS_NETWORK": "--network=host " if network_host else "",
        "FETCH_ENV": " ".join(f"{key}={shlex.quote(value)}" for key, value in fetch_env.items()),
        "FETCH_ARGS": " ".join(shlex.quote(arg) for arg in fetch_args),
        "WEIGHTS_DIR": weights_dir,
        "HF_HOME": image.HF_HOME,
        "MANIFEST": image.MANIFEST,
        "OFFLINE_ENV": " ".join(f"{key}={value}" for key, value in OFFLINE_ENV.items()),
        "RUNTIME_ENV": " \\\n    ".join(f"{key}={json.dumps(value)}" for key, value in runtime_env.items()),
        "PORT": str(config.serve.port),
        "HEALTH_START_S": "30",
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def image_requirements(config: Config, model: ResolvedModel, sources: PackageSources) -> list[str]:
    """The deps stage's requirements: the runtime's and the model's extra packages, with torch pinned (CPU:
    the CPU build of the sources)."""
    pin = _torch_pin(config, sources)
    return [
        f"torch=={pin}" if pin and _name(requirement) == "torch" else requirement
        for requirement in runtime_requirements(model.task, model.packages)
    ]


def _torch_pin(config: Config, sources: PackageSources) -> str:
    """The torch version the image must hold (2.13.0+cpu), or "" for a CUDA image that reuses the base's."""
    if config.build.device == "cpu" and sources.torch_requirement:
        return sources.torch_requirement.split("==", 1)[1]
    return config.build.torch_version


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower()


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


def _copy_sources(context: Path) -> None:
    """The build steps' scripts, the runtime pins and lists, and the `serve` package (not imported)."""
    for name in _IMAGE_SCRIPTS + _IMAGE_LISTS:
        shutil.copyfile(_IMAGE_FILES / name, context / name)
    spec = importlib.util.find_spec("serve")
    if spec is None or spec.origin is None:
        raise ConfigError("the serve package is not installed next to bake", "reinstall bake")
    shutil.copytree(Path(spec.origin).parent, context / "serve", ignore=shutil.ignore_patterns("__pycache__"))


def _add_secrets(
    plan: BuildPlan, config: Config, env: Environment, workdir: Path, sources: PackageSources
) -> None:
    """Secret files BuildKit mounts at /run/secrets/<id> for the steps that ask for them."""
    _secret(plan, workdir, PACKAGE_INDEX_SECRET, " ".join(sources.package_args()) + "\n")
    _secret(plan, workdir, TORCH_INDEX_SECRET, " ".join(sources.torch_args()) + "\n")
    if env.hf_token:
        _secret(plan, workdir, "hf_token", env.hf_token)
    if config.build.ca_cert is not None:
        plan.secrets.append(f"id=ca_cert,src={config.build.ca_cert.resolve()}")


def _secret(plan: BuildPlan, workdir: Path, name: str, content: str) -> None:
    path = workdir / "secrets" / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(content)
    plan.secrets.append(f"id={name},src={path}")
