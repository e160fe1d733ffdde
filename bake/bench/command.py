"""What `bake bench` does once its flags are parsed: pick the server, follow the ramp on the terminal,
print the table (or JSON), draw the plots, and with `--write` update bake.toml."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console

from bake.bench import BenchOptions, BenchResult, bench, write_recommendation
from bake.bench.report import LineProgress, LiveProgress, conclusion, heading, save_plot, table, terminal_plot
from bake.config import CONFIG_FILE, Config
from bake.env import Environment
from bake.errors import ConfigError
from bake.launch.commands import project_dir
from bake.state import last_launch_url

DEFAULT_PLOT = Path(".bake") / "bench.png"
"""Where the PNG goes unless --plot says otherwise (relative to the project directory)."""


def run(
    config: Config,
    env: Environment,
    *,
    url: str | None,
    p99_ms: float | None,
    levels: str,
    duration: float,
    warmup: float,
    client: Literal["auto", "wrk", "httpx"],
    image: Path | None,
    prompt: str | None,
    parameters: dict[str, Any],
    plot: Path | None,
    no_plot: bool,
    write: bool,
    as_json: bool,
) -> None:
    """Run `bake bench` with the command's flags and print its report on stdout (progress on stderr)."""
    directory = project_dir(config)
    url = url or last_launch_url(directory)
    if not url:
        raise ConfigError("no server to bench", "pass its URL, or run `bake launch` in this directory first")
    options = BenchOptions(
        url=url,
        p99_ms=p99_ms,
        levels=parse_levels(levels),
        seconds=duration,
        warmup_s=warmup,
        client=client,
        image=image,
        prompt=prompt,
        parameters=parameters,
        api_key=env.api_key,
    )
    result = _measure(options)
    drawn = None if no_plot else save_plot(result, plot or directory / DEFAULT_PLOT)
    written = None
    if write:
        written = config.file or directory / CONFIG_FILE
        write_recommendation(result, written)
    _print(result, drawn, written, as_json=as_json)


def parse_levels(text: str) -> tuple[int, ...]:
    """`--concurrency 1,2,4,8` as numbers (empty: the default ramp)."""
    try:
        return tuple(int(level) for level in text.split(",") if level.strip())
    except ValueError:
        raise ConfigError(
            f"--concurrency {text!r} is not a list of numbers", "pass e.g. --concurrency 1,2,4,8"
        ) from None


def _measure(options: BenchOptions) -> BenchResult:
    """The bench, with progress bars on a terminal and a line per level otherwise."""
    if not sys.stderr.isatty():
        return bench(options, LineProgress(sys.stderr))
    progress = LiveProgress(Console(stderr=True))
    progress.start()
    try:
        return bench(options, progress)
    finally:
        progress.stop()


def _print(result: BenchResult, plot: Path | None, written: Path | None, *, as_json: bool) -> None:
    if as_json:
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
            f"wrote     [serve] max_batch_size, max_wait_ms, max_queue into {written}; rebuild "
            "(`bake build`) to bake them in, or launch with -e BAKE_MAX_BATCH_SIZE=... now"
        )
