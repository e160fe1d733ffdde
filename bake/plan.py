"""Turning a configuration and a resolved model into a concrete BuildKit build: the plan.

The plan is a build context directory (the rendered Dockerfile, the runtime's requirements and pins, the
package sources without credentials, the scripts of the image's build steps and a copy of the `serve`
package), the named build contexts (a local model, a wheel directory), the secrets (HF token, CA bundle, the
installer's index arguments: files outside the context that BuildKit mounts only while a step runs), the
labels and the tag.
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
from bake.installer import PACKAGE_INDEX_SECRET, TORCH_INDEX_SECRET, Install, Installer
from bake.labels import ImageFacts
from bake.package_sources import WHEELS_MOUNT, PackageSources, configured_sources
from serve.contract import image
from serve.contract.compiled import COMPILER_FILES, MANIFEST_FILE, REPORT_FILE, Report
from serve.contract.labels import COMPILED
from serve.contract.names import model_name
from serve.contract.packages import BY_NAME as KNOWN_PACKAGES
from serve.contract.settings import MODEL_ENV, OFFLINE_ENV, env_name
from serve.contract.tasks import IMAGE_CLASSIFICATION, TEXT_TO_IMAGE

DEFAULT_BASE_IMAGES = {
    "cpu": "python:3.11-slim-bookworm",
    "cuda": "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
}
"""Base images when --base-image is not given: a slim Python for the CPU (bake installs a CPU torch), and
PyTorch's CUDA runtime image for CUDA (its torch is reused by the virtualenv)."""

_PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE = _PACKAGE_DIR / "templates" / "Dockerfile.template"
_IMAGE_FILES = _PACKAGE_DIR / "image"
_IMAGE_SCRIPTS = ("fetch_weights.py", "slim_venv.py", "elf_symbols.py", "check_runtime.py", "sbom.py")
_IMAGE_LISTS = ("build-tools.txt", "excludes.txt", "constraints.txt")
_VENV = "/opt/bake/venv"
_FETCH_VENV = "/opt/bake/fetch"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
COMPILE_REPORT_STAGE = "compile-report"
"""The Dockerfile stage holding only the compile stage's report, which `bake build` exports and reads before
it exports the image (the report decides the image's `labels.COMPILED`)."""
RUNTIME_STAGE = "runtime"
"""The Dockerfile stage that is the image (not the last one: the compile report's stage copies from it)."""
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
        sources = package_sources(config, model)
    context = workdir / "context"
    context.mkdir(parents=True)
    _copy_sources(context)
    skipped = compile_skipped(config, model)
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
        compiles=skipped is None,
    )
    if skipped is not None:
        plan.record_compile(Report.eager(skipped))
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
            compile_command=compile_command(model, config.serve.max_batch_size, skipped),
        )
    )
    return plan


def package_sources(config: Config, model: ResolvedModel) -> PackageSources:
    """Where the build of `model` takes its packages from, as configured (not probed yet): a CPU torch for a
    CPU image and to convert .bin weights (any device), a CPU torchvision for a CPU image that needs one."""
    return configured_sources(
        config.build,
        cpu_torch=config.build.device == "cpu" or model.convert_to_safetensors,
        cpu_torchvision=config.build.device == "cpu" and "torchvision" in model.packages,
    )


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
    # A crash (even before the compiler made its output folder) leaves a report and no manifest.
    on_crash = (
        f"mkdir -p {image.COMPILED} && rm -f {image.COMPILED}/{MANIFEST_FILE} && {_write_report(crashed)}"
    )
    return (
        " ".join(f"{key}={value}" for key, value in environment.items())
        + f" {_VENV}/bin/python -m serve.compile "
        + " ".join(shlex.quote(arg) for arg in arguments)
        + f" || {{ {on_crash}; }}"
    )


def _write_report(report: Report) -> str:
    """A shell command writing `report` where the compile stage's report goes."""
    text = json.dumps(dataclasses.asdict(report))
    return f"printf '%s\\n' {shlex.quote(text)} > {image.COMPILED}/{REPORT_FILE}"


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
    compile_command: str,
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
    convert = model.convert_to_safetensors
    fetch = Install(
        venv=_FETCH_VENV,
        requirements=(
            "huggingface_hub",
            "safetensors",
            *((sources.torch_requirement, "numpy") if convert else ()),
        ),
        constraints="/opt/bake/constraints.txt",
        cpu_builds=(sources.torch_requirement,) if convert and sources.torch_requirement else (),
    )
    deps = Install(
        venv=_VENV,
        requirements=("-r", "/opt/bake/requirements.txt"),
        constraints="/opt/bake/constraints.txt",
        cpu_builds=sources.cpu_builds if build.device == "cpu" else (),
        excludes="/opt/bake/excludes.txt",
        with_pip=build.keep_build_tools,
        reuse_base_torch=build.device == "cuda" and not build.torch_version,
    )
    check_args = ["--device", build.device, "--task", model.task]
    if pinned := _torch_pin(config, sources):
        check_args += ["--torch-version", pinned]
    for name in model.packages:
        check_args += ["--import", KNOWN_PACKAGES[name].module]
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
        "SBOM": image.SBOM,
        "SBOM_ARGS": " ".join(
            shlex.quote(arg)
            for arg in ("--name", model.id, "--version", model.commit_sha, "--bake-version", __version__)
        )
        + f" --out {image.SBOM}",
        "OFFLINE_ENV": " ".join(f"{key}={value}" for key, value in OFFLINE_ENV.items()),
        "RUNTIME_ENV": " \\\n    ".join(f"{key}={json.dumps(value)}" for key, value in runtime_env.items()),
        "PORT": str(config.serve.port),
        "HEALTH_START_S": "30",
        "COMPILED": image.COMPILED,
        "COMPILER_DIR": _COMPILER_DIR,
        "COMPILE_REPORT": f"{image.COMPILED}/{REPORT_FILE}",
        "COMPILE_COMMAND": compile_command,
        "COMPILE_REPORT_STAGE": COMPILE_REPORT_STAGE,
        "RUNTIME_STAGE": RUNTIME_STAGE,
    }
    return Template(TEMPLATE.read_text()).substitute(values)


def image_requirements(config: Config, model: ResolvedModel, sources: PackageSources) -> list[str]:
    """The deps stage's requirements: the runtime's and the model's extra packages, with torch pinned (CPU:
    the CPU builds of the sources, torchvision's too)."""
    if config.build.device == "cpu":
        pins = {_name(pin): pin for pin in sources.cpu_builds}
    else:
        pins = {"torch": f"torch=={config.build.torch_version}"} if config.build.torch_version else {}
    return [
        pins.get(_name(requirement), requirement)
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
    """The build steps' scripts, the runtime pins and lists, the compiler's files and the `serve` package (not
    imported)."""
    for name in _IMAGE_SCRIPTS + _IMAGE_LISTS:
        shutil.copyfile(_IMAGE_FILES / name, context / name)
    spec = importlib.util.find_spec("serve")
    if spec is None or spec.origin is None:
        raise ConfigError("the serve package is not installed next to bake", "reinstall bake")
    package = Path(spec.origin).parent
    shutil.copytree(package, context / "serve", ignore=shutil.ignore_patterns("__pycache__"))
    for name in COMPILER_FILES:  # the compile stage's only code: other changes do not compile again
        target = context / "compiler" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package.parent / name, target)


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
