"""The CLI with bad configuration (issue 13): every mistake is one line on stderr with its fix, exit status 2,
and nothing is written (no state, no build context, no fly.toml or manifests).

The real entry point (`bake.cli.main`) runs in-process with its argv; the unreadable-file case runs `bake`
in a subprocess (as root without the capabilities that let root read any file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bake import cli
from tests.fixtures.servers import REPO_ROOT

PEM = Path("/etc/ssl/certs/ca-certificates.crt")


def run_cli(
    args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    """`bake ARGS` in `cwd`: (exit status, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["bake", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return int(exited.value.code or 0), capsys.readouterr().err


def listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def assert_one_line_error(status: int, stderr: str, fragment: str) -> None:
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bake: error: "), stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr


BAD_FILES = {
    "toml syntax": ("[model\nid = 1\n", "cannot read"),
    "not utf-8": (b"[model]\nid = '\xff\xfe'\n", "cannot read"),
    "unknown table, close to one": (
        "[serv]\nmax_batch_size = 4\n",
        "unknown table [serv]: did you mean serve?",
    ),
    "unknown table": ("[gpu]\ncount = 4\n", "unknown table [gpu]: use one of build, launch, model, serve"),
    "unknown key, close to one": ("[serve]\nmax_batchsize = 4\n", "did you mean max_batch_size?"),
    "unknown key, misspelt": (
        "[build]\nbase_imge = 'x'\n",
        "unknown key build.base_imge: did you mean base_image?",
    ),
    "unknown key": ("[launch]\nreplicas = 3\n", "unknown key launch.replicas: use one of"),
    "a table that is a value": ("serve = 3\n", "serve = 3 is not a table"),
    "wrong type: string for an integer": ('[serve]\nmax_batch_size = "eight"\n', "is not an integer"),
    "wrong type: float for an integer": ("[serve]\nmax_queue = 2.5\n", "max_queue"),
    "wrong type: string for a boolean": ('[build]\npush = "maybe"\n', "build.push"),
    "wrong type: number for a list": ("[build]\npip_extra_index_url = 3\n", "pip_extra_index_url"),
    "wrong type: table for a string": ("[model]\nid = { org = 'x' }\n", "model.id"),
    "out of range": ("[serve]\nport = 70000\n", "above the maximum 65535"),
    "missing CA file": ('[model]\nid = "org/name"\n[build]\nca_cert = "no-such.pem"\n', "is not a file"),
    "CA file is a directory": ('[model]\nid = "org/name"\n[build]\nca_cert = "."\n', "is not a file"),
    "CA file holds no certificate": (
        '[model]\nid = "org/name"\n[build]\nca_cert = "bake.toml"\n',
        "holds no PEM certificate",
    ),
    "missing wheel directory": (
        '[model]\nid = "org/name"\n[build]\npip_find_links = "wheels"\n',
        "not a directory",
    ),
    "missing model directory": ('[model]\nid = "./my-model"\n', "--model ./my-model is not a directory"),
}


@pytest.mark.parametrize(("content", "fragment"), BAD_FILES.values(), ids=list(BAD_FILES))
def test_a_bad_bake_toml_is_one_line_exit_2_and_nothing_is_written(
    content: str | bytes,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    path = tmp_path / "bake.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = listing(tmp_path)
    status, stderr = run_cli(["build"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(status, stderr, fragment)
    assert listing(tmp_path) == before, "a refused command must write nothing"


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["build", "--config", "missing.toml"], {}, "config file missing.toml does not exist"),
        (["build", "--model", "org/name"], {"BAKE_MAX_BATCH_SIZE": "lots"}, "BAKE_MAX_BATCH_SIZE='lots'"),
        (
            ["build", "--model", "org/name", "--ca-cert", "/no/such.pem"],
            {},
            "--ca-cert /no/such.pem is not a file",
        ),
        (["build", "--modle", "org/name"], {}, "'--model'"),  # among click's did-you-mean suggestions
        (
            ["launch", "--target", "fly", "--dry-run", "--fly-region", "Paris"],
            {},
            "invalid Fly region 'Paris'",
        ),
        (["launch", "--target", "kubernetes", "--dry-run", "--host-port", "0"], {}, "--host-port 0"),
    ],
    ids=["missing config", "bad variable", "missing CA flag", "unknown flag", "fly region", "port"],
)
def test_bad_flags_and_variables_are_one_line_exit_2_and_nothing_is_written(
    args: list[str],
    env: dict[str, str],
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, stderr = run_cli(args, tmp_path, monkeypatch, capsys)
    assert_one_line_error(status, stderr, fragment)
    assert listing(tmp_path) == [], "a refused command must write nothing (no fly.toml, no k8s/, no .bake/)"


def test_an_unreadable_ca_file_is_one_line_exit_2(tmp_path: Path) -> None:
    """The CA bundle exists but this user cannot read it. Root reads anything, so as root the command runs
    without the capabilities that override file permissions (util-linux `setpriv`)."""
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_bytes(PEM.read_bytes()[:4096])
    bundle.chmod(0o000)
    (tmp_path / "bake.toml").write_text('[model]\nid = "org/name"\n[build]\nca_cert = "corporate-ca.pem"\n')
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    before = listing(tmp_path)
    result = subprocess.run(
        [*as_user, sys.executable, "-m", "bake", "build"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(
        result.returncode, result.stderr, "corporate-ca.pem cannot be read: Permission denied"
    )
    assert listing(tmp_path) == before
