"""What `bake bench` does once its flags are parsed: pick the server, follow the ramp on the terminal,
print the table (or JSON), draw the plots, and with `--write` update bake.toml."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import click
from rich.console import Console

from bake.bench import BenchOptions, bench, write_recommendation
from bake.bench.report import LineProgress, LiveProgress, conclusion, heading, save_plot, table, terminal_plot
from bake.config import CONFIG_FILE, Config
from bake.env import Environment
from bake.errors import ConfigError
from bake.launch.commands import project_dir
from bake.state import last_launch_url

DEFAULT_PLOT = Path(".bake") / "bench.png"
"""Where the PNG goes unless --plot says otherwise (relative to the project directory)."""


@dataclass(frozen=True)
class BenchCommand:
    """The flags of `bake bench`."""

    options: BenchOptions
    plot: Path | None
    """Where to write the PNG; None: the project's .bake/bench.png."""
    no_plot: bool
    write: bool
    as_json: bool


def run(config: Config, env: Environment, command: BenchCommand) -> None:
    """Run `bake bench` and print its report on stdout (progress on stderr)."""
    directory = project_dir(config)
    url = command.options.url or last_launch_url(directory)
    if not url:
        raise ConfigError("no server to bench", "pass its URL, or run `bake launch` in this directory first")
    options = replace(command.options, url=url, api_key=command.options.api_key or env.api_key)
    if sys.stderr.isatty():
        progress = LiveProgress(Console(stderr=True))
        progress.start()
        try:
            result = bench(options, progress)
        finally:
            progress.stop()
    else:
        result = bench(options, LineProgress(sys.stderr))
    plot = None if command.no_plot else save_plot(result, command.plot or directory / DEFAULT_PLOT)
    written = None
    if command.write:
        written = config.file or directory / CONFIG_FILE
        write_recommendation(result, written)
    if command.as_json:
        document = result.as_dict()
        document.update(plot=str(plot) if plot else None, wrote=str(written) if written else None)
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(heading(result) + "\n\n" + table(result) + "\n")
    if sys.stdout.isatty():
        Console(soft_wrap=True, highlight=False).print(terminal_plot(result) + "\n")
    click.echo(conclusion(result))
    if plot:
        click.echo(f"\nplot      {plot}")
    if written:
        click.echo(
            f"wrote     [serve] max_batch_size, max_wait_ms, max_queue into {written}; "
            "rebuild (`bake build`) to bake them in, or launch with -e BAKE_MAX_BATCH_SIZE=... now"
        )
