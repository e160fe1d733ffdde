"""The `bake` command line, which behaves like docker's and cog's.

- Every error is one line on stderr, `bake: error: <what is wrong>: <how to fix it>`, never a traceback
  (`--verbose` prints the traceback too, and the debug log); exit status 0 ok, 1 failure, 2 bad setting or
  usage, 130 interrupted (the rule of `serve.contract.errors`).
- Results go to stdout (`--json` for scripts), progress and logs to stderr; live views and colour only on a
  terminal, never with NO_COLOR (`bake.terminal`).
- Every command that reads bake.toml takes `--config`; every `--help` ends with examples.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from huggingface_hub.utils import disable_progress_bars

from bake import __version__, doctor, terminal
from bake.bench import command as bench_cli
from bake.build import BuiltImage, build
from bake.build_display import PROGRESS_MODES, display_for
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
from serve.contract.errors import FAILURE_EXIT_CODE, INTERRUPTED_EXIT_CODE, UserError
from serve.contract.image import SBOM as SBOM_IN_IMAGE
from serve.contract.labels import MODEL

_KINDS = {"str": str, "int": int, "float": float, "list": str}
_HOST_FLAG = find("launch.docker_host").dest
_host_option = click.option(
    "--host",
    "docker_host",
    default=None,
    help="Docker engine (default: $DOCKER_HOST, else the local socket).",
)
"""The engine flag of the commands that manage launched containers (ps, logs, stop, predict)."""
_config_option = click.option(
    "--config", "config_file", type=click.Path(path_type=Path), default=None, help="bake.toml to read."
)
"""--config for the commands that take few or none of the bake.toml settings as flags."""


def _json_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON (for scripts).")


def _examples(*commands: str) -> str:
    """The end of a command's --help: examples, kept as written."""
    return "\b\nExamples:\n" + "\n".join(f"  $ {command}" for command in commands)


@dataclass
class Session:
    """What one run of `bake` shares between the command line and `main`."""

    verbose: bool = False


def _set_verbose(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        session = ctx.find_object(Session)
        if session is not None:
            session.verbose = True
        terminal.configure_logging(verbose=True)


def _verbose_option() -> click.Option:
    """-v/--verbose, taken before the command (`bake -v build`) or after it (`bake build -v`)."""
    return click.Option(
        ["-v", "--verbose"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbose,
        help="The whole story: debug logging, and an error's traceback.",
    )


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


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=_examples(
        "bake build --model microsoft/resnet-50",
        "bake launch",
        "bake predict cat.jpg",
        "bake -v doctor",
    ),
)
@click.version_option(__version__, prog_name="bake")
def cli() -> None:
    """Turn a Hugging Face model into a production container image, serve it batched, launch it.

    Exit status: 0 ok, 1 failure, 2 bad setting or usage, 130 interrupted.
    """


@cli.command(epilog=_examples("bake init", "bake init --model microsoft/resnet-50 --path deploy/bake.toml"))
@click.option("--path", type=click.Path(path_type=Path), default=Path("bake.toml"), show_default=True)
@click.option("--model", default=None, help="Model id or directory to write into [model] id.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, model: str | None, force: bool) -> None:
    """Write a commented bake.toml listing every setting."""
    write_config(path, {"model.id": model} if model else None, force=force)
    click.echo(f"wrote {path}; edit it, then run: bake build")


@cli.command(
    "build",
    epilog=_examples(
        "bake build --model microsoft/resnet-50",
        "bake build --model ./my-model --tag registry.example.com/resnet:1 --push",
        "bake build --progress plain --no-cache --json > image.json",
    ),
)
@with_options("model", "build", "serve")
@click.option(
    "--progress",
    type=click.Choice(PROGRESS_MODES),
    default="auto",
    show_default=True,
    help="auto: a live view on a terminal, BuildKit's plain log otherwise; plain: that log always; "
    "quiet: only errors and the result.",
)
@click.option(
    "--no-cache", is_flag=True, help="Run every build step again (the weights are fetched again too)."
)
@_json_option("the image reference, size and labels")
def build_command(progress: str, no_cache: bool, as_json: bool, **flags: Any) -> None:
    """Build an image with the model's weights baked in (BuildKit; deps -> weights -> runtime)."""
    config = configure(flags)
    display = display_for(progress, sys.stderr)  # type: ignore[arg-type]
    built = build(config, read_environment(), display=display, cache=not no_cache)
    record_build(project_dir(config), built.tag, built.facts.model)
    sbom = None if built.pushed else save_sbom(docker_client(), built.tag, project_dir(config))
    if as_json:
        click.echo(json.dumps({**built.as_dict(), "sbom": str(sbom) if sbom else None}, indent=2))
    else:
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


@cli.command(
    "launch",
    epilog=_examples(
        "bake launch",
        "bake launch bake/resnet-50:1a2b3c4d5e6f --host-port 9000 -e BAKE_IDLE_TIMEOUT_S=300",
        "bake launch --target docker --host ssh://me@gpu-box",
        "bake launch --target kubernetes --kserve --apply",
    ),
)
@click.argument("image", required=False)
@with_options("launch")
@click.option("-e", "--env", "env_pairs", multiple=True, help="Runtime setting for the container, KEY=VALUE.")
@click.option("--wake", is_flag=True, help="Start the (idle-stopped) container again instead of launching.")
@click.option("--dry-run", is_flag=True, help="fly/kubernetes: write (and print) the files, deploy nothing.")
@click.option(
    "--kserve",
    is_flag=True,
    help="kubernetes: a KServe InferenceService (Open Inference Protocol v2, with its ServingRuntime) "
    "instead of a Knative Service.",
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
        outcome = launch_commands.wake(config, read_environment(), config.launch.name or None, sys.stderr)
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


@cli.command("ps", epilog=_examples("bake ps", "bake ps --host ssh://me@gpu-box", "bake ps --json"))
@_host_option
@_config_option
@_json_option("the containers")
def ps_command(docker_host: str | None, config_file: Path | None, as_json: bool) -> None:
    """List the containers bake launched on an engine."""
    config = configure({_HOST_FLAG: docker_host, "config_file": config_file})
    client, address = launch_commands.engine(config, read_environment())
    containers = [
        {
            "name": container.name,
            "status": container.state.status or "?",
            "url": docker_target.url_of(container, address),
            "model": (container.config.labels or {}).get(MODEL, "?"),
            "image": (container.config.labels or {}).get(docker_target.IMAGE, "?"),
        }
        for container in docker_target.list_launched(client)
    ]
    if as_json:
        click.echo(json.dumps(containers, indent=2))
        return
    rows = [("NAME", "STATUS", "URL", "MODEL", "IMAGE")] + [tuple(row.values()) for row in containers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@cli.command(
    "logs",
    epilog=_examples("bake logs bake-resnet-50-1a2b3c", "bake logs -f --tail 20 bake-resnet-50-1a2b3c"),
)
@click.argument("name")
@_host_option
@_config_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
def logs_command(
    name: str, docker_host: str | None, config_file: Path | None, follow: bool, tail: int | None
) -> None:
    """Print a launched container's logs."""
    config = configure({_HOST_FLAG: docker_host, "config_file": config_file})
    client, _ = launch_commands.engine(config, read_environment())
    docker_target.print_logs(client, name, sys.stdout, follow=follow, tail=tail)


@cli.command(
    "stop", epilog=_examples("bake stop bake-resnet-50-1a2b3c", "bake stop --rm bake-resnet-50-1a2b3c")
)
@click.argument("name")
@_host_option
@_config_option
@click.option("--rm", "remove", is_flag=True, help="Also remove the container.")
def stop_command(name: str, docker_host: str | None, config_file: Path | None, remove: bool) -> None:
    """Stop a launched container gracefully (it drains in-flight requests first)."""
    config = configure({_HOST_FLAG: docker_host, "config_file": config_file})
    client, _ = launch_commands.engine(config, read_environment())
    docker_target.stop(client, name, remove=remove)
    click.echo(f"stopped {name}" + (" and removed it" if remove else ""))


@cli.command(
    "predict",
    epilog=_examples(
        "bake predict cat.jpg -p top_k=3",
        'bake predict "a fox in the snow" -p num_inference_steps=4 -p seed=7 -o fox.png',
        "bake predict --url http://gpu-box:8080 cat.jpg --json",
    ),
)
@click.argument("value", metavar="INPUT")
@click.option("--name", default=None, help="Container to ask (default: the only bake container).")
@click.option("--url", default=None, help="Ask this server instead of a container on an engine.")
@_host_option
@_config_option
@click.option("-p", "--param", "params", multiple=True, help="Request parameter KEY=VALUE (e.g. top_k=3).")
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write an image answer (default: output.png).",
)
@_json_option("the answer (labels, or the files written), the URL and the time taken")
def predict_command(
    value: str,
    name: str | None,
    url: str | None,
    docker_host: str | None,
    config_file: Path | None,
    params: tuple[str, ...],
    output_path: Path | None,
    as_json: bool,
) -> None:
    """Send INPUT (an image file, or a prompt) to a launched model; starts it first if it idled out."""
    config = configure({_HOST_FLAG: docker_host, "config_file": config_file})
    parameters = {key: _json_value(raw) for key, raw in _key_values(params, "--param").items()}
    prediction = launch_commands.predict(
        config,
        read_environment(),
        name=name,
        url=url,
        value=value,
        parameters=parameters,
        output_path=output_path,
        stream=sys.stderr,
    )
    click.echo(json.dumps(prediction.as_dict(), indent=2) if as_json else prediction.text())


@cli.command(
    "bench",
    epilog=_examples(
        "bake bench",
        "bake bench http://127.0.0.1:8080 --p99-ms 250 --write",
        "bake bench --concurrency 1,2,4 --duration 5 --json",
    ),
)
@click.argument("url", required=False)
@click.option("--p99-ms", type=float, default=None, help="p99 budget (default: 4 x a lone request's).")
@click.option("--concurrency", "levels", default="", help="Levels, e.g. 1,2,4 (default: 1 .. 4 x max batch).")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per level.")
@click.option("--warmup", type=float, default=3.0, show_default=True, help="Unmeasured load first (s).")
@click.option(
    "--client",
    type=click.Choice(["auto", "wrk", "httpx"]),
    default="auto",
    show_default=True,
    help="Load generator (auto: wrk when installed).",
)
@click.option(
    "--input",
    "image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Image to send (image tasks; default: a generated 640x480 photo).",
)
@click.option("--prompt", default=None, help="Prompt to send (text-to-image).")
@click.option("-p", "--param", "params", multiple=True, help="Request parameter KEY=VALUE (e.g. top_k=3).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the PNG plot (default: .bake/bench.png).",
)
@click.option("--no-plot", is_flag=True, help="Write no PNG.")
@click.option("--write", is_flag=True, help="Write the recommended [serve] settings into bake.toml.")
@_json_option("the results")
@_config_option
def bench_command(params: tuple[str, ...], config_file: Path | None, **flags: Any) -> None:
    """Load a running server (default: the one `bake launch` last started) at rising concurrency, and
    recommend max_batch_size, max_wait_ms and the Fly / Knative concurrency limits for a p99 budget."""
    parameters = {key: _json_value(raw) for key, raw in _key_values(params, "--param").items()}
    bench_cli.run(configure({"config_file": config_file}), read_environment(), parameters=parameters, **flags)


@cli.command(
    "doctor", epilog=_examples("bake doctor", "bake doctor --device cuda --target fly", "bake doctor --json")
)
@option_decorator(find("model.id"))
@option_decorator(find("build.device"))
@option_decorator(find("build.base_image"))
@option_decorator(find("build.pip_index_url"))
@option_decorator(find("build.pip_extra_index_url"))
@option_decorator(find("build.pip_find_links"))
@option_decorator(find("build.torch_index_url"))
@option_decorator(find("build.torch_version"))
@option_decorator(find("build.ca_cert"))
@option_decorator(find("build.installer"))
@option_decorator(find("launch.target"))
@option_decorator(find("launch.docker_host"))
@_json_option("the checks")
@_config_option
def doctor_command(as_json: bool, **flags: Any) -> None:
    """Check that this machine has what the configured build and launch need; exit 1 if it does not."""
    checks = doctor.run_checks(configure(flags), read_environment())
    click.echo(doctor.report(checks, as_json=as_json))
    if doctor.failed(checks):
        sys.exit(1)


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
        f"weights   {facts.weights_bytes / 2**20:.1f} MiB, {len(facts.weights)} "
        + ("file" if len(facts.weights) == 1 else "files")
        + (" (from the build cache)" if built.weights_cached else "")
    )
    click.echo(f"sbom      {sbom if sbom else 'in the image, ' + SBOM_IN_IMAGE} (CycloneDX)")
    click.echo(f"forward   {built.compiled}")
    click.echo(f"\nnext:     bake launch {built.tag}")


for _command in cli.commands.values():
    _command.params.append(_verbose_option())
cli.params.append(_verbose_option())


def main() -> None:
    """Console entry point: run the CLI; turn every error into one line on stderr and its exit status."""
    session = Session()
    terminal.configure_logging(verbose=False)
    disable_progress_bars()  # huggingface_hub's own bars while bake resolves a model: bake shows its own
    try:
        result = cli.main(prog_name="bake", standalone_mode=False, obj=session)
    except UserError as error:  # bake's, fly's and the contract's: they say what to do
        _fail(session, error, str(error), error.exit_code)
    except click.exceptions.Abort as error:  # Ctrl-C (or end of input) where no wait handled it
        _fail(session, error, "interrupted", INTERRUPTED_EXIT_CODE)
    except click.UsageError as error:  # a flag or argument click refuses: one line, with the help to read
        command = error.ctx.command_path if error.ctx is not None else "bake"
        _fail(session, error, f"{error.format_message()} (see `{command} --help`)", error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        _fail(session, error, f"{error.strerror or error}{where}: check the path and its permissions")
    except Exception as error:  # a bug: still one line, and how to get the whole story
        more = "the traceback is above" if session.verbose else "rerun with --verbose for the whole story"
        _fail(session, error, f"unexpected {type(error).__name__}: {error}: {more}, and please report it")
    sys.exit(result if isinstance(result, int) else 0)


def _fail(session: Session, error: BaseException, message: str, exit_code: int = FAILURE_EXIT_CODE) -> None:
    """Print `message` as bake's one error line (after the traceback with --verbose) and exit."""
    if session.verbose:
        error.__suppress_context__ = False  # the library error that bake turned into this one, too
        traceback.print_exception(type(error), error, error.__traceback__)
    terminal.print_error(" ".join(message.split()))
    sys.exit(exit_code)
