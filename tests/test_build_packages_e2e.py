"""`bake build` against real package indexes: where a CPU image's torch comes from, and what an index costs.

The project is set up as a company with a PyPI mirror builds: `--pip-index-url` is PyPI itself (through this
machine's proxy) and no wheel folder is given, so nothing but bake's own rules keeps PyPI's CUDA torch out of
a CPU image. PyTorch's CPU index is a local mirror (tests.fixtures.package_index, on 127.0.0.1) serving this
machine's torch 2.13.0+cpu wheel, or a wheel that claims to be one and is a CUDA build, or nothing at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import images
from tests.fixtures.docker import (
    BASE_IMAGE,
    HOST_CA_BUNDLE,
    LOCAL_WHEELS,
    TORCH_VERSION,
    buildkit_runs,
    docker,
    ensure_base_image,
    predict_inside,
    run_bake,
)
from tests.fixtures.models import make_image_classifier
from tests.fixtures.package_index import PackageIndex
from tests.fixtures.servers import free_port
from tests.fixtures.wheels import make_wheel

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TORCH_FACTS = """
import importlib.metadata, json, torch
names = sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda,
                  "nvidia": [n for n in names if n.startswith("nvidia-")], "file": torch.__file__}))
"""


@dataclass
class Project:
    path: Path
    model: Path
    torch_index: PackageIndex

    def build(
        self, *args: str, index_url: str = "https://pypi.org/simple"
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        """`bake build` of the tiny model into a fresh tag (removed at the end of the module)."""
        tag = f"bake-e2e-slim/packages:{uuid.uuid4().hex[:8]}"
        result = run_bake(
            ["build", "--model", str(self.model), "--tag", tag, "--pip-index-url", index_url, *args],
            {},
            self.path,
        )
        _tags.append(tag)
        return tag, result


_tags: list[str] = []


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    ensure_base_image()
    path = tmp_path_factory.mktemp("packages")
    (path / "bake.toml").write_text(f'[build]\nbase_image = "{BASE_IMAGE}"\nca_cert = "{HOST_CA_BUNDLE}"\n')
    model = make_image_classifier(path / "tiny-resnet", "resnet", image_size=64)
    wheel = next(LOCAL_WHEELS.glob(f"torch-{TORCH_VERSION}+cpu-*.whl"))
    with PackageIndex([wheel]) as torch_index:
        yield Project(path, model, torch_index)
    for tag in _tags:
        subprocess.run(["docker", "rmi", "-f", tag], check=False, capture_output=True)


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("bake: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def deps_cached(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether every BuildKit run of the build (a compiling build has two) took the deps stage from cache."""
    runs = [log for log in buildkit_runs(result.stderr) if "deps" in log.stage_of_step.values()]
    return bool(runs) and all(log.stage_cached("deps") for log in runs)


@pytest.fixture(scope="module")
def built(project: Project) -> str:
    closed = f"http://127.0.0.1:{free_port()}/simple"
    tag, result = project.build("--torch-index-url", project.torch_index.url, "--pip-extra-index-url", closed)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"bake: warning: the extra package index {closed} cannot be reached" in result.stderr
    return tag


def test_a_cpu_image_takes_a_cpu_torch_from_the_torch_index_whatever_the_package_index(
    project: Project, built: str
) -> None:
    facts = json.loads(docker("run", "--rm", "--entrypoint", "python", built, "-c", TORCH_FACTS).stdout)
    assert facts == {
        "version": f"{TORCH_VERSION}+cpu",
        "cuda": None,
        "nvidia": [],
        "file": "/opt/bake/venv/lib/python3.11/site-packages/torch/__init__.py",
    }
    assert any(
        request.startswith("GET /files/torch-2.13.0%2Bcpu-") for request in project.torch_index.requests
    )
    name = f"bake-e2e-slim-{uuid.uuid4().hex[:8]}"
    try:
        docker("run", "-d", "--name", name, "--network", "none", built)
        assert predict_inside(name, images.photo(200, 150))["answer"][0]["label"]
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)


def test_the_deps_stage_is_rebuilt_when_the_package_index_changes_and_only_then(
    project: Project, built: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/simple"
    _, same = project.build("--torch-index-url", project.torch_index.url, "--pip-extra-index-url", closed)
    assert same.returncode == 0, same.stderr[-3000:]
    assert deps_cached(same), (
        "the same sources (the unreachable extra index left out again) must reuse the "
        + (
            "layer:\n"
            + "\n".join(line for line in same.stderr.splitlines() if re.match(r"#\d+ (\[|CACHED)", line))
        )
    )
    _, changed = project.build(
        "--torch-index-url", project.torch_index.url, index_url="https://pypi.org/simple/"
    )
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert not deps_cached(changed), "another --pip-index-url must not reuse the deps layer"


def test_a_torch_that_is_not_a_cpu_build_fails_the_build_with_one_line(
    project: Project, tmp_path: Path
) -> None:
    fake = make_wheel(
        tmp_path,
        "torch",
        f"{TORCH_VERSION}+cpu",
        {
            "torch/__init__.py": f"__version__ = '{TORCH_VERSION}+cpu'\nfrom torch import version\n",
            "torch/version.py": "cuda = '12.8'\n",
        },
    )
    with PackageIndex([fake]) as mislabelled:
        _, result = project.build("--torch-index-url", mislabelled.url)
    one_line_error(
        result,
        f"torch {TORCH_VERSION}+cpu in this CPU image is a CUDA 12.8 build",
        "pass --torch-index-url with an index of PyTorch's CPU wheels",
    )


def test_an_unreachable_torch_index_stops_the_build_before_it_starts(project: Project) -> None:
    closed = f"http://127.0.0.1:{free_port()}/simple"
    began = time.monotonic()
    _, result = project.build("--torch-index-url", closed)
    one_line_error(
        result,
        f"PyTorch's CPU wheel index {closed} cannot be reached",
        "--torch-index-url",
        "--pip-find-links",
    )
    assert "#1 " not in result.stderr, "no build step ran"
    assert time.monotonic() - began < 60


def test_an_index_that_stops_answering_fails_within_the_capped_retries(project: Project) -> None:
    with PackageIndex([], stall=True) as stalled:
        began = time.monotonic()
        _, result = project.build(
            "--torch-index-url", project.torch_index.url, "--pip-extra-index-url", stalled.url
        )
        elapsed = time.monotonic() - began
    one_line_error(result, "a package index stopped answering during the build", "given up after 2 retries")
    assert elapsed < 240, f"{elapsed:.0f} s"


def test_a_torch_version_the_index_lacks_fails_with_the_resolvers_reason(project: Project) -> None:
    _, result = project.build("--torch-index-url", project.torch_index.url, "--torch-version", "2.12.0")
    line = one_line_error(
        result,
        "the image's Python packages could not be installed: "
        "Because there is no version of torch==2.12.0+cpu",
        "check --pip-index-url",
    )
    assert "unsatisfiable: check" in line


def test_an_index_without_uv_asks_for_it_or_for_the_pip_installer(project: Project) -> None:
    base = f"bake-e2e-slim/base:{uuid.uuid4().hex[:8]}"  # a base no build has used: the tools step must run
    docker(
        "build",
        "--quiet",
        "--tag",
        base,
        "-",
        input=f"FROM {BASE_IMAGE}\nRUN echo {base} > /etc/x\n".encode(),
    )
    _tags.append(base)
    with PackageIndex([]) as empty:
        _, result = project.build(
            "--torch-index-url", project.torch_index.url, "--base-image", base, index_url=empty.url
        )
    one_line_error(
        result, "the installer uv could not be installed from the package index", "--installer pip"
    )


def test_a_cuda_image_reuses_the_base_images_torch_and_checks_its_build(project: Project) -> None:
    # A base image whose python has its own torch, as PyTorch's CUDA images do; this one is the CPU build, so
    # the check must refuse it for a CUDA image (and the installer must not fetch PyPI's torch instead).
    base = f"bake-e2e-slim/torch-base:{uuid.uuid4().hex[:8]}"
    wheel = next(LOCAL_WHEELS.glob(f"torch-{TORCH_VERSION}+cpu-*.whl"))
    dockerfile = (  # bake's base has no installed pip: run the pip wheel python3-venv bundles
        f"FROM {BASE_IMAGE}\nRUN --mount=type=bind,from=wheels,target=/wheels --mount=type=secret,id=ca "
        'PIP_CERT=/run/secrets/ca python3 "$(echo /usr/share/python-wheels/pip-*.whl)/pip" install '
        f"--break-system-packages --no-cache-dir /wheels/{wheel.name}\n"
    )
    subprocess.run(
        [
            "docker",
            "buildx",
            "build",
            "--load",
            "--tag",
            base,
            "--build-context",
            f"wheels={LOCAL_WHEELS}",
            "--secret",
            f"id=ca,src={HOST_CA_BUNDLE}",
            "-",
        ],
        input=dockerfile.encode(),
        check=True,
        capture_output=True,
        timeout=900,
    )
    _tags.append(base)
    docker("run", "--rm", "--entrypoint", "python3", base, "-c", "import torch")
    _, result = project.build("--device", "cuda", "--base-image", base)
    one_line_error(
        result,
        f"torch {TORCH_VERSION}+cpu in this CUDA image is a CPU build",
        "pass --base-image with a CUDA torch",
    )
    assert " + torch==" not in result.stderr, "the base image's torch is reused, not installed again"


def test_keep_build_tools_keeps_pip_and_torchs_headers(project: Project) -> None:
    tag, result = project.build("--torch-index-url", project.torch_index.url, "--keep-build-tools")
    assert result.returncode == 0, result.stderr[-3000:]
    pip = docker(
        "run", "--rm", "--entrypoint", "/opt/bake/venv/bin/python", tag, "-m", "pip", "--version"
    ).stdout
    assert b"/opt/bake/venv/lib/python3.11/site-packages/pip" in pip
    docker(
        "run",
        "--rm",
        "--entrypoint",
        "test",
        tag,
        "-f",
        "/opt/bake/venv/lib/python3.11/site-packages/torch/include/ATen/ATen.h",
    )


def test_the_pip_installer_builds_a_slim_image_that_serves(project: Project) -> None:
    tag, result = project.build("--torch-index-url", project.torch_index.url, "--installer", "pip")
    assert result.returncode == 0, result.stderr[-3000:]
    venv = "/opt/bake/venv/lib/python3.11/site-packages"
    listing = docker("run", "--rm", "--entrypoint", "ls", tag, venv).stdout.decode().split()
    assert (
        "torch" in listing and "pip" not in listing and not any(name.startswith("pip-") for name in listing)
    )
    facts = json.loads(docker("run", "--rm", "--entrypoint", "python", tag, "-c", TORCH_FACTS).stdout)
    assert facts["version"] == f"{TORCH_VERSION}+cpu" and facts["cuda"] is None
    name = f"bake-e2e-slim-{uuid.uuid4().hex[:8]}"
    try:
        docker("run", "-d", "--name", name, "--network", "none", tag)
        assert predict_inside(name, images.photo(200, 150))["answer"][0]["label"]
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)
