"""The `bake` command line as a person meets it, without building an image: one error line with the fix
and the documented exit status for every failure (library errors included), `--verbose` for the whole
story, colour only on a terminal and never with NO_COLOR, `--config` and DOCKER_HOST on the management
commands, examples at the end of every `--help`, and `bake init`'s file.

Every run is the real CLI in a subprocess; the terminal ones run on a real pseudo-terminal
(`tests.fixtures.terminal`), Ctrl-C included.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit

from tests.fixtures.docker import BASE_IMAGE, docker, ensure_base_image, run_bake
from tests.fixtures.terminal import TerminalRun, colour_codes, run_in_terminal

COMMANDS = ("init", "build", "launch", "ps", "logs", "stop", "predict", "bench", "doctor")
CLOSED = "http://127.0.0.1:9"
"""A URL where nothing listens (the discard port)."""


def error_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The only line on stderr, which must be bake's error line; no traceback."""
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bake: error: "), result.stderr
    return lines[0]


def test_an_unreachable_server_is_one_line_with_the_fix(tmp_path: Path) -> None:
    line = error_line(run_bake(["predict", "--url", CLOSED, "a cat"], {}, tmp_path), 1)
    assert line == (
        f"bake: error: no answer from {CLOSED} ([Errno 111] Connection refused): "
        "check that the server runs there (`bake ps`) and the URL (--url)"
    )


def test_verbose_tells_the_whole_story_before_the_same_line(tmp_path: Path) -> None:
    quiet = run_bake(["predict", "--url", CLOSED, "a cat"], {}, tmp_path)
    for args in (
        ["-v", "predict", "--url", CLOSED, "a cat"],
        ["predict", "--url", CLOSED, "a cat", "--verbose"],
    ):
        result = run_bake(args, {}, tmp_path)
        assert result.returncode == 1
        assert "Traceback (most recent call last)" in result.stderr
        assert "httpx.ConnectError" in result.stderr, "the library's error that bake turned into its own"
        assert "httpcore.connection DEBUG" in result.stderr, "the debug log"
        assert result.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


def test_bad_usage_and_settings_exit_2(tmp_path: Path) -> None:
    line = error_line(run_bake(["predict", "--url", "not-a-url", "a cat"], {}, tmp_path), 2)
    assert (
        line == "bake: error: --url 'not-a-url' is not an http(s) URL: pass e.g. --url http://127.0.0.1:8080"
    )
    unwritable = tmp_path / "missing-dir" / "bake.toml"
    line = error_line(run_bake(["init", "--path", str(unwritable)], {}, tmp_path), 2)
    assert f"cannot write {unwritable} (No such file or directory)" in line and "--path" in line
    usage = run_bake(["build", "--progress", "fancy"], {}, tmp_path)
    assert usage.returncode == 2 and "Invalid value for '--progress'" in usage.stderr
    assert "Traceback" not in usage.stderr


def test_a_bug_still_ends_in_one_line_and_verbose_shows_it(tmp_path: Path) -> None:
    """The last-resort handler of `main`: a command that fails in a way bake did not foresee (here, one
    whose callback is replaced by a division by zero) still prints one line, with how to see more."""
    program = (
        "import sys, bake.cli as cli\n"
        "cli.cli.commands['ps'].callback = lambda **flags: 1 / 0\n"
        "sys.argv = ['bake', *sys.argv[1:]]\n"
        "cli.main()\n"
    )
    command = [sys.executable, "-c", program]
    result = subprocess.run([*command, "ps"], capture_output=True, text=True, cwd=tmp_path)
    assert error_line(result, 1) == (
        "bake: error: unexpected ZeroDivisionError: division by zero: "
        "rerun with --verbose for the whole story, and please report it"
    )
    verbose = subprocess.run([*command, "-v", "ps"], capture_output=True, text=True, cwd=tmp_path)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "in <lambda>" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].endswith("the traceback is above, and please report it")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for connection in accepted:
        connection.close()


def test_ctrl_c_during_a_wait_exits_130_saying_what_was_left(tmp_path: Path, silent_server: str) -> None:
    run = TerminalRun(["predict", "--url", silent_server, "a cat"], {}, tmp_path)
    assert not run.read_until(b"bake: error", timeout=2), "it waits for the answer"
    run.interrupt()
    assert run.wait(timeout=30) == 130
    # The terminal echoes the Ctrl-C as ^C where the cursor is: before the progress bar drew (a loaded
    # machine), that is the start of the error's line.
    assert [line for line in run.lines() if line][-1].removeprefix("^C") == (
        f"bake: error: stopped waiting for {silent_server}: "
        "nothing to clean up: the server drops a request once its client leaves"
    )
    assert "Traceback" not in run.text


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    args = ["predict", "--url", CLOSED, "a cat"]
    on_terminal = run_in_terminal(args, {}, tmp_path, timeout=60)
    assert on_terminal.exit_code == 1
    assert colour_codes(on_terminal.text), "the error word is red on a terminal"
    assert [line for line in on_terminal.lines() if line][-1].startswith("bake: error: no answer from")
    no_color = run_in_terminal(args, {"NO_COLOR": "1"}, tmp_path, timeout=60)
    assert no_color.exit_code == 1 and colour_codes(no_color.text) == []
    assert no_color.screen() == on_terminal.screen()
    piped = run_bake(args, {}, tmp_path)
    assert "\x1b[" not in piped.stderr


def test_every_help_ends_with_examples(tmp_path: Path) -> None:
    for command in ("", *COMMANDS):
        result = run_bake([command, "--help"] if command else ["--help"], {}, tmp_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.rstrip().splitlines()
        examples = lines.index("  Examples:")
        assert all(line.startswith("    $ bake ") for line in lines[examples + 1 :]), (command, lines)
        assert len(lines) > examples + 1 and (not command or f"$ bake {command}" in lines[-1])
        assert "-v, --verbose" in result.stdout, f"bake {command} takes --verbose"
    assert (
        "0 ok, 1 failure, 2 bad setting or usage, 130 interrupted"
        in run_bake(["--help"], {}, tmp_path).stdout
    )


def test_init_writes_each_section_and_its_description_once(tmp_path: Path) -> None:
    result = run_bake(["init", "--model", "microsoft/resnet-50"], {}, tmp_path)
    assert result.returncode == 0 and result.stdout == "wrote bake.toml; edit it, then run: bake build\n"
    text = (tmp_path / "bake.toml").read_text()
    document = tomlkit.parse(text).unwrap()
    assert document == {"model": {"id": "microsoft/resnet-50"}, "build": {}, "serve": {}, "launch": {}}
    lines = text.splitlines()
    for section in document:
        header = lines.index(f"[{section}]")
        description = lines[header + 1]
        assert lines.count(f"[{section}]") == 1 and lines.count(description) == 1, section
        assert description.startswith("# ") and not description.startswith("# #")
    assert "\n\n\n" not in text, "no doubled blank lines"
    again = run_bake(["init"], {}, tmp_path)
    assert (
        error_line(again, 2)
        == "bake: error: bake.toml already exists: edit it, or pass --force to overwrite it"
    )


@pytest.mark.docker
@pytest.mark.parametrize("command", [["ps"], ["logs", "x"], ["stop", "x"], ["predict", "x"]])
def test_config_and_docker_host_reach_the_management_commands(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    line = error_line(run_bake([*command, "--config", str(missing)], {}, tmp_path), 2)
    assert (
        line
        == f"bake: error: config file {missing} does not exist: create it with `bake init` or fix the path"
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "bake.toml").write_text(f'[launch]\ndocker_host = "unix://{tmp_path}/from-toml.sock"\n')
    line = error_line(run_bake([*command, "--config", str(other / "bake.toml")], {}, tmp_path), 1)
    assert f"no Docker engine answers at unix://{tmp_path}/from-toml.sock" in line
    line = error_line(run_bake(command, {"DOCKER_HOST": f"unix://{tmp_path}/from-env.sock"}, tmp_path), 1)
    assert f"no Docker engine answers at unix://{tmp_path}/from-env.sock" in line


@pytest.mark.docker
def test_an_engine_that_refuses_is_one_line_too(tmp_path: Path) -> None:
    """A bake-labelled container whose command does not exist: `docker start` fails in the Docker SDK."""
    ensure_base_image()
    name = f"bake-cli-test-{uuid.uuid4().hex[:8]}"
    labels = ["--label", "dev.bake.launched=1", "--label", "dev.bake.host-port=9"]
    docker("create", "--name", name, *labels, BASE_IMAGE, "/no/such/program")
    try:
        line = error_line(run_bake(["launch", "--wake", "--name", name], {}, tmp_path), 1)
        assert line.startswith(f"bake: error: docker could not start {name}: ")
        assert line.endswith(f": see `bake logs {name}`") and "/no/such/program" in line
        assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode == 0
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
