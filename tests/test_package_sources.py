"""Where the image's packages come from, and the probe of every configured index before a build.

Indexes are real HTTP(S) servers on 127.0.0.1 (tests.fixtures.package_index): one that serves, a closed port,
a port that accepts connections and never answers, one that answers 503, and one with a self-signed
certificate.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from bake.config import BuildSpec, Config, load_config
from bake.doctor import check_package_sources
from bake.env import read_environment
from bake.errors import BuildFailed
from bake.package_sources import (
    CPU_TORCH_VERSION,
    PYPI,
    TORCH_CPU_INDEX,
    PackageSources,
    check_reachable,
    configured_sources,
    probe,
    redact,
    torchvision_version,
)
from tests.fixtures.package_index import PackageIndex, self_signed_certificate
from tests.fixtures.servers import free_port
from tests.fixtures.wheels import make_wheel


def build_spec(tmp_path: Path, **flags: object) -> BuildSpec:
    toml = tmp_path / "bake.toml"
    toml.write_text("")
    return load_config(flags, read_environment({}), toml).build


@pytest.fixture
def index(tmp_path: Path) -> Iterator[PackageIndex]:
    with PackageIndex(
        [make_wheel(tmp_path / "wheels", "tiny_pkg", "1.0", {"tiny_pkg.py": "x = 1\n"})]
    ) as server:
        yield server


@pytest.fixture
def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}/simple"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/simple"


@pytest.fixture
def failing_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def test_a_serving_index_answers_one_head(index: PackageIndex) -> None:
    assert probe(index.url, ca_cert=None) is None
    assert index.requests == ["HEAD /simple/"]


def test_a_closed_port_fails_at_once(closed_url: str) -> None:
    began = time.monotonic()
    reason = probe(closed_url, ca_cert=None, timeout=5)
    assert reason is not None and reason.startswith("connection failed")
    assert time.monotonic() - began < 2


def test_an_index_that_never_answers_costs_the_timeout_only(silent_url: str) -> None:
    began = time.monotonic()
    assert probe(silent_url, ca_cert=None, timeout=0.5) == "no answer within 0.5 s"
    assert time.monotonic() - began < 3


def test_a_server_error_is_unreachable(failing_url: str) -> None:
    assert probe(failing_url, ca_cert=None) == "HTTP 503"


def test_tls_is_verified_against_the_ca_bundle(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with PackageIndex([], tls=(cert, key)) as server:
        assert probe(server.url, ca_cert=None) == "its TLS certificate is not trusted"
        assert probe(server.url, ca_cert=cert) is None


def test_only_http_indexes_are_probed() -> None:
    assert probe("file:///srv/wheels/simple", ca_cert=None) is None


def test_an_unreachable_extra_index_is_left_out_with_a_warning(
    tmp_path: Path, index: PackageIndex, closed_url: str
) -> None:
    spec = build_spec(tmp_path, pip_index_url=index.url, pip_extra_index_url=(closed_url, index.url + "/"))
    sources, warnings = check_reachable(
        configured_sources(spec, cpu_torch=False), ca_cert=None, remote_engine=False
    )
    assert sources.extra_index_urls == (index.url + "/",)
    assert len(warnings) == 1 and closed_url in warnings[0] and "left out" in warnings[0]


def test_an_unreachable_package_index_stops_the_build_with_the_flag_that_fixes_it(
    tmp_path: Path, closed_url: str
) -> None:
    spec = build_spec(tmp_path, pip_index_url=closed_url)
    with pytest.raises(BuildFailed) as failed:
        check_reachable(configured_sources(spec, cpu_torch=False), ca_cert=None, remote_engine=False)
    assert str(failed.value).startswith(
        f"the package index {closed_url} cannot be reached (connection failed"
    )
    assert "pass --pip-index-url with a mirror you can reach, or --pip-find-links" in str(failed.value)


def test_an_untrusted_certificate_asks_for_the_ca_bundle(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with PackageIndex([], tls=(cert, key)) as server:
        spec = build_spec(tmp_path, pip_index_url=server.url)
        with pytest.raises(BuildFailed, match="not trusted.*pass --ca-cert with the CA bundle"):
            check_reachable(configured_sources(spec, cpu_torch=False), ca_cert=None, remote_engine=False)


def test_with_a_wheel_folder_an_unreachable_index_is_skipped(tmp_path: Path, closed_url: str) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    spec = build_spec(tmp_path, pip_index_url=closed_url, pip_find_links=str(wheels))
    sources, warnings = check_reachable(
        configured_sources(spec, cpu_torch=False), ca_cert=None, remote_engine=False
    )
    assert sources.package_args() == ["--no-index", "--find-links", "/wheels"]
    assert warnings == [
        f"the package index {closed_url} cannot be reached (connection failed: "
        + warnings[0].split("(connection failed: ", 1)[1]
    ]
    assert "installing from the --pip-find-links folder alone" in warnings[0]


def test_an_unreachable_torch_index_without_a_local_wheel_stops_the_build(
    tmp_path: Path, index: PackageIndex, closed_url: str
) -> None:
    spec = build_spec(tmp_path, pip_index_url=index.url, torch_index_url=closed_url)
    with pytest.raises(BuildFailed) as failed:
        check_reachable(configured_sources(spec, cpu_torch=True), ca_cert=None, remote_engine=False)
    message = str(failed.value)
    assert message.startswith(f"PyTorch's CPU wheel index {closed_url} cannot be reached")
    assert "never takes torch from the package index" in message
    assert (
        f"pass --torch-index-url with a mirror of {TORCH_CPU_INDEX}, or --pip-find-links with a folder "
        f"holding torch-{CPU_TORCH_VERSION}+cpu-*.whl" in message
    )


def test_a_local_cpu_torch_wheel_is_preferred_and_no_torch_index_is_asked(
    tmp_path: Path, index: PackageIndex, closed_url: str
) -> None:
    wheels = tmp_path / "local"
    wheels.mkdir()
    (wheels / f"torch-{CPU_TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    spec = build_spec(
        tmp_path, pip_index_url=index.url, torch_index_url=closed_url, pip_find_links=str(wheels)
    )
    sources, warnings = check_reachable(
        configured_sources(spec, cpu_torch=True), ca_cert=None, remote_engine=False
    )
    assert warnings == []
    assert sources.torch_requirement == f"torch=={CPU_TORCH_VERSION}+cpu"
    assert sources.torch_args() == ["--no-index", "--find-links", "/wheels"]


def test_a_remote_engine_only_warns(tmp_path: Path, closed_url: str) -> None:
    spec = build_spec(tmp_path, pip_index_url=closed_url, torch_index_url=closed_url)
    configured = configured_sources(spec, cpu_torch=True)
    sources, warnings = check_reachable(configured, ca_cert=None, remote_engine=True)
    assert sources == configured
    assert warnings == [warnings[0]] and "the remote Docker engine may reach it" in warnings[0]


def test_credentials_never_reach_messages_or_the_description(tmp_path: Path) -> None:
    port = free_port()
    secret_url = f"http://build-bot:s3cret-token@127.0.0.1:{port}/simple"
    spec = build_spec(tmp_path, pip_index_url=secret_url)
    sources = configured_sources(spec, cpu_torch=False)
    assert "s3cret" not in sources.describe() and f"http://***@127.0.0.1:{port}/simple" in sources.describe()
    assert secret_url in sources.package_args()
    with pytest.raises(BuildFailed) as failed:
        check_reachable(sources, ca_cert=None, remote_engine=False)
    assert "s3cret" not in str(failed.value) and "build-bot" not in str(failed.value)


@pytest.mark.parametrize(
    ("device", "torch_version", "convert", "pin"),
    [
        ("cpu", "", False, f"torch=={CPU_TORCH_VERSION}+cpu"),
        ("cpu", "2.12.0", False, "torch==2.12.0+cpu"),
        ("cpu", "2.12.0+cpu", False, "torch==2.12.0+cpu"),
        ("cuda", "2.9.1", True, f"torch=={CPU_TORCH_VERSION}+cpu"),
        ("cuda", "", False, None),
    ],
)
def test_the_cpu_torch_pin(
    tmp_path: Path, device: str, torch_version: str, convert: bool, pin: str | None
) -> None:
    spec = build_spec(tmp_path, device=device, torch_version=torch_version)
    sources = configured_sources(spec, cpu_torch=device == "cpu" or convert)
    assert sources.torch_requirement == pin
    assert sources.torch_args() == ([] if pin is None else ["--index-url", TORCH_CPU_INDEX])


@pytest.mark.parametrize(
    ("torch", "torchvision"), [("2.13.0", "0.28.0"), ("2.9.1", "0.24.1"), ("2.0.1+cpu", "0.15.1")]
)
def test_torchvision_goes_with_its_torch_release(torch: str, torchvision: str) -> None:
    assert torchvision_version(torch) == torchvision


def test_a_cpu_torchvision_comes_with_the_cpu_torch_and_a_local_folder_must_hold_both(tmp_path: Path) -> None:
    wheels = tmp_path / "local"
    wheels.mkdir()
    (wheels / f"torch-{CPU_TORCH_VERSION}+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    spec = build_spec(tmp_path, pip_find_links=str(wheels))
    sources = configured_sources(spec, cpu_torch=True, cpu_torchvision=True)
    assert sources.cpu_builds == (f"torch=={CPU_TORCH_VERSION}+cpu", "torchvision==0.28.0+cpu")
    assert sources.torch_args() == ["--index-url", TORCH_CPU_INDEX, "--find-links", "/wheels"], (
        "the folder lacks torchvision's wheel"
    )
    assert f"torch=={CPU_TORCH_VERSION}+cpu torchvision==0.28.0+cpu: --index-url" in sources.describe()
    (wheels / "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    local = configured_sources(spec, cpu_torch=True, cpu_torchvision=True)
    assert local.torch_args() == ["--no-index", "--find-links", "/wheels"]
    assert configured_sources(spec, cpu_torch=True).cpu_builds == (f"torch=={CPU_TORCH_VERSION}+cpu",)


def test_defaults_are_pypi_and_pytorchs_cpu_index(tmp_path: Path) -> None:
    sources = configured_sources(build_spec(tmp_path), cpu_torch=True)
    assert sources == PackageSources(PYPI, (), False, f"torch=={CPU_TORCH_VERSION}+cpu", TORCH_CPU_INDEX)
    assert sources.urls == (PYPI, TORCH_CPU_INDEX)


def test_redact_keeps_urls_without_credentials() -> None:
    assert redact("https://mirror.example/simple") == "https://mirror.example/simple"
    assert redact("https://token@mirror.example:8443/simple") == "https://***@mirror.example:8443/simple"


def doctor_config(tmp_path: Path, **flags: object) -> Config:
    toml = tmp_path / "bake.toml"
    toml.write_text("")
    return load_config(flags, read_environment({}), toml)


def test_doctor_names_where_the_packages_and_the_cpu_torch_come_from(
    tmp_path: Path, index: PackageIndex, closed_url: str
) -> None:
    wheels = tmp_path / "wheels"
    (wheels / f"torch-{CPU_TORCH_VERSION}+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    environment = read_environment({})
    local = check_package_sources(
        doctor_config(tmp_path, pip_index_url=index.url, pip_find_links=str(wheels)), environment
    )
    assert (local.status, local.detail) == (
        "ok",
        f"packages from {index.url} (uv); torch=={CPU_TORCH_VERSION}+cpu from the --pip-find-links folder",
    )
    config = doctor_config(
        tmp_path, pip_index_url=index.url, pip_extra_index_url=(closed_url,), torch_index_url=index.url
    )
    warned = check_package_sources(config, environment)
    assert warned.status == "warn" and f"torch=={CPU_TORCH_VERSION}+cpu from {index.url}" in warned.detail
    assert f"the extra package index {closed_url} cannot be reached" in warned.detail and warned.fix
    cuda = check_package_sources(doctor_config(tmp_path, pip_index_url=index.url, device="cuda"), environment)
    assert cuda.status == "ok" and cuda.detail.endswith("; the base image's own torch")


def test_doctor_fails_when_the_cpu_torch_has_no_reachable_source(
    tmp_path: Path, index: PackageIndex, closed_url: str
) -> None:
    config = doctor_config(tmp_path, pip_index_url=index.url, torch_index_url=closed_url, installer="pip")
    check = check_package_sources(config, read_environment({}))
    assert check.status == "fail" and check.detail.startswith(
        f"PyTorch's CPU wheel index {closed_url} cannot"
    )
    assert check.fix.startswith("pass --torch-index-url with a mirror of")
    remote = check_package_sources(config, read_environment({"DOCKER_HOST": "ssh://builder@box"}))
    assert remote.status == "warn" and "the remote Docker engine may reach it" in remote.detail
