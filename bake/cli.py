"""The `bake` command line. Every error is one line on stderr with the fix, and a non-zero exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bake import __version__
from bake.build import BuiltImage, build
from bake.config import Config, load_config
from bake.env import read_environment
from bake.errors import BakeError
from bake.init_config import write_config
from bake.options import Option, options_for

_KINDS = {"str": str, "int": int, "float": float, "list": str}


def option_decorator(option: Option) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option for `option`, whose default is None ("not given": lower layers decide)."""
    hint = f"{option.help} [{option.name}" + (f", ${option.env}" if option.env else "") + "]"
    if option.kind == "bool":
        name = option.cli_flag.removeprefix("--")
        return click.option(f"--{name}/--no-{name}", option.dest, default=None, help=hint)
    kind: Any = click.Choice([c for c in option.choices if c]) if option.choices else _KINDS[option.kind]
    return click.option(option.cli_flag, option.dest, type=kind, default=None, multiple=option.kind == "list",
                        help=hint)


def with_options(*sections: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with the flags of every option in `sections`, and --config."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for section in reversed(sections):
            for option in reversed(options_for(section)):
                command = option_decorator(option)(command)
        return click.option(
            "--config", "config_file", type=click.Path(path_type=Path), default=None,
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
    _report(built)


def _report(built: BuiltImage) -> None:
    facts = built.facts
    size = f"{built.size_bytes / 2**20:.0f} MiB" if built.size_bytes else "pushed"
    click.echo(f"\nimage     {built.tag} ({size})")
    click.echo(f"model     {facts.model} ({facts.task}, {facts.device})")
    click.echo(f"revision  {facts.revision} -> {facts.commit_sha}")
    click.echo(f"weights   {facts.weights_bytes / 2**20:.1f} MiB, {len(facts.weights)} files"
               + (" (from the build cache)" if built.weights_cached else ""))
    click.echo(f"\nnext:     bake launch {built.tag}")


def main() -> None:
    """Console entry point: run the CLI, turning `BakeError`s into one line and an exit status."""
    try:
        cli.main(standalone_mode=False)
    except BakeError as error:
        click.echo(f"bake: error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("bake: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
