"""What the launch-side CLI commands do, target by target (the CLI only parses flags and prints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from python_on_whales import DockerClient

from bake.config import Config
from bake.docker import docker_client, ensure_engine
from bake.env import Environment
from bake.errors import ConfigError, LaunchFailed
from bake.labels import ImageFacts
from bake.launch import docker_target, fly_target, kubernetes
from bake.launch.images import read_facts
from bake.launch.names import default_name
from bake.launch.predict import Prediction, ask
from bake.state import last_built_tag, record_launch
from fly.auth import require_token
from serve.contract.errors import require
from serve.contract.labels import TASK
from serve.contract.settings import API_KEY_ENV, api_keys


@dataclass(frozen=True)
class LaunchRequest:
    """Flags of `bake launch` beyond the [launch] settings."""

    image: str | None
    env: dict[str, str]
    secret_env: dict[str, tuple[str, str]]
    dry_run: bool
    kserve: bool
    apply: bool
    namespace: str
    max_scale: int


@dataclass(frozen=True)
class LaunchOutcome:
    """What to tell the user."""

    url: str | None
    lines: tuple[str, ...]


def project_dir(config: Config) -> Path:
    """Where bake.toml (or the working directory) is: state and fly.toml live there."""
    return config.file.parent if config.file is not None else Path.cwd()


def choose_image(config: Config, image: str | None) -> str:
    """The image to launch: the argument, else the last one built in this project."""
    chosen = image or last_built_tag(project_dir(config))
    if not chosen:
        raise ConfigError("no image to launch", "pass IMAGE, or run `bake build` in this directory first")
    return chosen


def launch(config: Config, env: Environment, request: LaunchRequest, output: TextIO) -> LaunchOutcome:
    """Put the image on the configured target, remember where it answers (for `bake bench`), report it."""
    outcome = _launch(config, env, request, output)
    if outcome.url:
        record_launch(project_dir(config), outcome.url, config.launch.target)
    return outcome


def _launch(config: Config, env: Environment, request: LaunchRequest, output: TextIO) -> LaunchOutcome:
    spec = config.launch
    image = choose_image(config, request.image)
    runtime_env = dict(request.env)
    if env.api_key and API_KEY_ENV not in runtime_env:
        runtime_env[API_KEY_ENV] = env.api_key
    _check_before_work(config, env, request, runtime_env)
    local = docker_client()
    ensure_engine(local)
    facts = read_facts(local, image)
    if spec.target in ("local", "docker"):
        return _launch_docker(config, env, local, image, facts, runtime_env, output)
    if spec.target == "fly":
        result = fly_target.launch_fly(
            local,
            facts,
            image,
            spec,
            runtime_env,
            fly_toml=project_dir(config) / "fly.toml",
            token=env.fly_api_token,
            dry_run=request.dry_run,
            output=output,
        )
        if request.dry_run:
            return LaunchOutcome(
                None, (result.fly_toml_text, f"wrote {result.fly_toml} (dry run: nothing deployed)")
            )
        return LaunchOutcome(
            result.url, (f"deployed {result.app} to Fly ({result.method})", f"url       {result.url}")
        )
    return _launch_kubernetes(config, image, facts, request, runtime_env)


def _check_before_work(
    config: Config, env: Environment, request: LaunchRequest, runtime_env: dict[str, str]
) -> None:
    """Refuse what the target would refuse, before the engine, the image or the network is touched."""
    require(
        ConfigError,
        config.launch.target != "docker" or config.launch.docker_host != "",
        "the docker target needs an engine",
        "pass --host ssh://user@box or tcp://box:2376",
    )
    if config.launch.target == "fly" and not request.dry_run:
        require_token(env.fly_api_token)
    if config.launch.target == "kubernetes":
        _kubernetes_options(config, request, runtime_env, name=config.launch.name or "bake")


def _kubernetes_options(
    config: Config, request: LaunchRequest, env: dict[str, str], *, name: str
) -> kubernetes.KubernetesOptions:
    """The manifests' options (checked as they are made: `ConfigError` for anything Kubernetes would
    refuse)."""
    if API_KEY_ENV in env:
        raise ConfigError(
            "an API key must not be written into Kubernetes manifests",
            f"store it in a Secret and pass --secret-env {API_KEY_ENV}=SECRET:KEY",
        )
    return kubernetes.KubernetesOptions(
        name=name,
        namespace=request.namespace,
        kserve=request.kserve,
        max_scale=request.max_scale,
        env=env,
        secret_env=dict(request.secret_env),
    )


def _launch_docker(
    config: Config,
    env: Environment,
    local: DockerClient,
    image: str,
    facts: ImageFacts,
    runtime_env: dict[str, str],
    output: TextIO,
) -> LaunchOutcome:
    spec = config.launch
    target, host = local, env.docker_host
    if spec.target == "docker":
        target, host = docker_client(spec.docker_host), spec.docker_host
        ensure_engine(target)
        image = docker_target.transfer_image(local, target, image, registry=spec.registry)
    name = spec.name or default_name(facts.model)
    launched = docker_target.launch_container(
        target,
        image,
        facts,
        name=name,
        host_port=spec.host_port,
        address=docker_target.engine_address(host),
        env=runtime_env,
        ready_timeout_s=spec.ready_timeout_s,
        output=output,
    )
    host_flag = f" --host {spec.docker_host}" if spec.target == "docker" else ""
    return LaunchOutcome(
        launched.url,
        (
            f"{launched.name} is ready at {launched.url} ({launched.ready_seconds:.1f} s)",
            f"try:      bake predict{host_flag} --name {launched.name} INPUT",
            f"logs:     bake logs{host_flag} {launched.name}",
            f"stop:     bake stop{host_flag} {launched.name}",
        ),
    )


def _launch_kubernetes(
    config: Config, image: str, facts: ImageFacts, request: LaunchRequest, env: dict[str, str]
) -> LaunchOutcome:
    options = _kubernetes_options(config, request, env, name=config.launch.name or default_name(facts.model))
    documents = kubernetes.render_manifests(facts, image, options)
    path = kubernetes.write_manifests(project_dir(config) / "k8s" / f"{options.name}.yaml", documents)
    lines = [f"wrote {path}"]
    if request.apply:
        lines.append(kubernetes.apply_manifests(path, dry_run=request.dry_run).strip())
    else:
        lines.append(f"apply:    kubectl apply -f {path}")
    return LaunchOutcome(None, tuple(lines))


def engine_host(config: Config, env: Environment) -> str:
    """The engine the management commands talk to: --host (or bake.toml's), else DOCKER_HOST, else local."""
    return config.launch.docker_host or env.docker_host


def engine(config: Config, env: Environment) -> tuple[DockerClient, str]:
    """The client of `engine_host` and the address where its containers' published ports answer."""
    host = engine_host(config, env)
    client = docker_client(host)
    ensure_engine(client)
    return client, docker_target.engine_address(host)


def wake(config: Config, env: Environment, name: str | None, output: TextIO) -> LaunchOutcome:
    """Start the (idle-stopped) container again and wait for it."""
    client, address = engine(config, env)
    launched = docker_target.wake(
        client,
        _default_container(config, client, name),
        address=address,
        ready_timeout_s=config.launch.ready_timeout_s,
        output=output,
    )
    record_launch(project_dir(config), launched.url, config.launch.target)
    return LaunchOutcome(launched.url, (f"{launched.name} is ready at {launched.url}",))


def _default_container(config: Config, client: DockerClient, name: str | None) -> str:
    if name or config.launch.name:
        return name or config.launch.name
    containers = docker_target.list_launched(client)
    if len(containers) == 1:
        return containers[0].name
    if not containers:
        raise LaunchFailed("no bake container on this engine", "launch one with `bake launch`")
    raise ConfigError("several bake containers run here", "pass --name (see `bake ps`)")


def predict(
    config: Config,
    env: Environment,
    *,
    name: str | None,
    url: str | None,
    value: str,
    parameters: dict[str, Any],
    output_path: Path | None,
    stream: TextIO,
) -> Prediction:
    """Send one input to a launched server (waking it if it idled out), or to the server at `url`."""
    task = None
    if url is None:
        client, address = engine(config, env)
        container_name = _default_container(config, client, name)
        container = docker_target.find(client, container_name)
        task = (container.config.labels or {}).get(TASK)
        if not container.state.running:
            stream.write(f"{container_name} is stopped (idle): starting it\n")
        url = docker_target.wake(
            client,
            container_name,
            address=address,
            ready_timeout_s=config.launch.ready_timeout_s,
            output=stream,
        ).url
    keys = api_keys(env.api_key)
    return ask(
        url,
        task=task,
        value=value,
        parameters=parameters,
        api_key=keys[0] if keys else None,
        output_path=output_path,
        stream=stream,
    )
