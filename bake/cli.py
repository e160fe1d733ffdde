"""The `bake` command line. Every error is one line on stderr with the fix, and a non-zero exit status."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bake import __version__
from bake.build import BuiltImage, build
from bake.config import Config, load_config
from bake.docker import docker_client
from bake.env import read_environment
from bake.errors import ConfigError
from bake.init_config import write_config
from bake.launch import commands as launch_commands
from bake.launch import docker_target
from bake.launch.commands import project_dir
from bake.options import Option, find, options_for
from bake.sbom import save_sbom
from bake.state import record_build
from serve.contract.errors import INTERRUPTED_EXIT_CODE, UserError
from serve.contract.image import SBOM as SBOM_IN_IMAGE
from serve.contract.labels import MODEL

_KINDS = {"str": str, "int": int, "float": float, "list": str}
_HOST_FLAG = find("launch.docker_host").dest
_host_option = click.option("--host", "docker_host", default=None, help="Docker engine (default: local).")
"""The engine flag of the commands that manage launched containers (ps, logs, stop, predict)."""


def option_decorator(option: Option) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option for `option`, whose default is None ("not given": lower layers decide)."""
    hint = f"{option.help} [{option.name}" + (f", ${option.env}" if option.env else "") + "]"
    if option.kind == "bool":
        name = option.cli_flag.removeprefix("--")
        return click.option(f"--{name}/--no-{name}", option.dest, default=None, help=hint)
    kind: Any = click.Choice([c for c in option.choices if c]) if option.choices else _KINDS[option.kind]
    return click.option(
        option.cli_flag, option.dest, type=kind, default=None, multiple=option.kind == "list", help=hint
    )


def with_options(*sections: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with the flags of every option in `sections`, and --config."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for section in reversed(sections):
            for option in reversed(options_for(section)):
                command = option_decorator(option)(command)
        return click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            default=None,
            help="bake.toml to read (default: ./bake.toml if present).",
        )(command)

    return decorate


def configure(flags: dict[str, Any]) -> Config:
    """The merged configuration for a command's flags."""
    config_file = flags.pop("config_file", None)
    return load_config(flags, read_environment(), config_file)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="bake")
def cli() -> None:
    """Turn a Hugging Face model into a production container image, serve it batched, launch it."""


@cli.command()
@click.option("--path", type=click.Path(path_type=Path), default=Path("bake.toml"), show_default=True)
@click.option("--model", default=None, help="Model id or directory to write into [model] id.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, model: str | None, force: bool) -> None:
    """Write a commented bake.toml listing every setting."""
    write_config(path, {"model.id": model} if model else None, force=force)
    click.echo(f"wrote {path}; edit it, then run: bake build")


@cli.command("build")
@with_options("model", "build", "serve")
def build_command(**flags: Any) -> None:
    """Build an image with the model's weights baked in (BuildKit; deps -> weights -> runtime)."""
    config = configure(flags)
    built = build(config, read_environment(), output=sys.stderr)
    record_build(project_dir(config), built.tag, built.facts.model)
    sbom = None if built.pushed else save_sbom(docker_client(), built.tag, project_dir(config))
    _report(built, sbom)


def _key_values(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r} is not KEY=VALUE", f"write it as {flag} KEY=VALUE")
        result[key] = value
    return result


def _secret_refs(pairs: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    refs = {}
    for variable, reference in _key_values(pairs, "--secret-env").items():
        secret, sep, key = reference.partition(":")
        if not sep or not secret or not key:
            raise ConfigError(
                f"--secret-env {variable}={reference!r} is not VAR=SECRET:KEY", "name the Secret and key"
            )
        refs[variable] = (secret, key)
    return refs


@cli.command("launch")
@click.argument("image", required=False)
@with_options("launch")
@click.option("-e", "--env", "env_pairs", multiple=True, help="Runtime setting for the container, KEY=VALUE.")
@click.option("--wake", is_flag=True, help="Start the (idle-stopped) container again instead of launching.")
@click.option("--dry-run", is_flag=True, help="fly/kubernetes: write (and print) the files, deploy nothing.")
@click.option(
    "--kserve", is_flag=True, help="kubernetes: a KServe InferenceService instead of a Knative Service."
)
@click.option("--apply", "apply_", is_flag=True, help="kubernetes: kubectl apply the manifests.")
@click.option("--namespace", default="default", show_default=True, help="kubernetes namespace.")
@click.option("--max-scale", default=1, show_default=True, help="kubernetes: most replicas.")
@click.option("--secret-env", "secret_pairs", multiple=True, help="kubernetes: VAR=SECRET:KEY from a Secret.")
def launch_command(
    image: str | None,
    env_pairs: tuple[str, ...],
    wake: bool,
    dry_run: bool,
    kserve: bool,
    apply_: bool,
    namespace: str,
    max_scale: int,
    secret_pairs: tuple[str, ...],
    **flags: Any,
) -> None:
    """Run IMAGE (default: the last one built here) on a container host and wait until it is ready."""
    config = configure(flags)
    if wake:
        outcome = launch_commands.wake(config, config.launch.name or None, sys.stderr)
    else:
        request = launch_commands.LaunchRequest(
            image=image,
            env=_key_values(env_pairs, "--env"),
            secret_env=_secret_refs(secret_pairs),
            dry_run=dry_run,
            kserve=kserve,
            apply=apply_,
            namespace=namespace,
            max_scale=max_scale,
        )
        outcome = launch_commands.launch(config, read_environment(), request, sys.stderr)
    for line in outcome.lines:
        click.echo(line)


@cli.command("ps")
@_host_option
def ps_command(docker_host: str | None) -> None:
    """List the containers bake launched on an engine."""
    config = configure({_HOST_FLAG: docker_host})
    client, address = launch_commands.engine(config)
    rows = [("NAME", "STATUS", "URL", "MODEL", "IMAGE")]
    for container in docker_target.list_launched(client):
        labels = container.config.labels or {}
        rows.append(
            (
                container.name,
                container.state.status or "?",
                docker_target.url_of(container, address),
                labels.get(MODEL, "?"),
                labels.get(docker_target.IMAGE, "?"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@cli.command("logs")
@click.argument("name")
@_host_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
def logs_command(name: str, docker_host: str | None, follow: bool, tail: int | None) -> None:
    """Print a launched container's logs."""
    config = configure({_HOST_FLAG: docker_host})
    client, _ = launch_commands.engine(config)
    docker_target.find(client, name)
    if follow:
        for _, line in client.container.logs(name, follow=True, stream=True, tail=tail):
            click.echo(line.decode(errors="replace"), nl=False)
    else:
        click.echo(client.container.logs(name, tail=tail))


@cli.command("stop")
@click.argument("name")
@_host_option
@click.option("--rm", "remove", is_flag=True, help="Also remove the container.")
def stop_command(name: str, docker_host: str | None, remove: bool) -> None:
    """Stop a launched container gracefully (it drains in-flight requests first)."""
    config = configure({_HOST_FLAG: docker_host})
    client, _ = launch_commands.engine(config)
    docker_target.stop(client, name, remove=remove)
    click.echo(f"stopped {name}" + (" and removed it" if remove else ""))


@cli.command("predict")
@click.argument("value", metavar="INPUT")
@click.option("--name", default=None, help="Container to ask (default: the only bake container).")
@click.option("--url", default=None, help="Ask this server instead of a container on an engine.")
@_host_option
@click.option("-p", "--param", "params", multiple=True, help="Request parameter KEY=VALUE (e.g. top_k=3).")
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write an image answer.",
)
def predict_command(
    value: str,
    name: str | None,
    url: str | None,
    docker_host: str | None,
    params: tuple[str, ...],
    output_path: Path | None,
) -> None:
    """Send INPUT (an image file, or a prompt) to a launched model; starts it first if it idled out."""
    config = configure({_HOST_FLAG: docker_host})
    parameters = {key: _json_value(raw) for key, raw in _key_values(params, "--param").items()}
    click.echo(
        launch_commands.predict(
            config,
            read_environment(),
            name=name,
            url=url,
            value=value,
            parameters=parameters,
            output_path=output_path,
            stream=sys.stderr,
        )
    )


def _json_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _report(built: BuiltImage, sbom: Path | None) -> None:
    facts = built.facts
    size = f"{built.size_bytes / 2**20:.0f} MiB" if built.size_bytes else "pushed"
    click.echo(f"\nimage     {built.tag} ({size})")
    click.echo(f"model     {facts.model} ({facts.task}, {facts.device})")
    click.echo(f"revision  {facts.revision} -> {facts.commit_sha}")
    click.echo(
        f"weights   {facts.weights_bytes / 2**20:.1f} MiB, {len(facts.weights)} files"
        + (" (from the build cache)" if built.weights_cached else "")
    )
    click.echo(f"sbom      {sbom if sbom else 'in the image, ' + SBOM_IN_IMAGE} (CycloneDX)")
    click.echo(f"\nnext:     bake launch {built.tag}")


def main() -> None:
    """Console entry point: run the CLI, turning `UserError`s (bake's, fly's, the contract's) into one line
    and their exit status."""
    try:
        cli.main(standalone_mode=False)
    except UserError as error:
        click.echo(f"bake: error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("bake: aborted", err=True)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except click.UsageError as error:  # a flag or argument click refuses: one line too, with the help to read
        command = error.ctx.command_path if error.ctx is not None else "bake"
        click.echo(
            f"bake: error: {' '.join(error.format_message().split())} (see `{command} --help`)", err=True
        )
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
