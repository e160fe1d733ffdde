"""`bake build` end to end with a real Docker engine and BuildKit.

A tiny model published on the local Hub (privately: the build needs a token) is built into an image,
which then serves with `--network none --read-only` as a non-root user (also with every capability dropped
and no-new-privileges), answers like transformers' pipeline on the same weights, carries its provenance in
labels, and holds only the files it needs: a slim virtualenv (no installer, no build tools, no tests, no
symbol tables) whose bytecode is what the server imports. The token is nowhere: not in a layer, the history,
a label, the build's output, the build cache (the download cache mount) or an error. Next to the project the
build writes the image's SBOM (CycloneDX), and pip-audit finds no known vulnerability with a fix among the
image's Python packages.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from PIL import Image
from transformers import pipeline

from serve.contract.image import SBOM
from tests.fixtures import images
from tests.fixtures.docker import (
    build_settings_toml,
    bytecode_at_start,
    docker,
    ensure_base_image,
    labels,
    predict_inside,
    request_inside,
    run_bake,
    run_offline,
)
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TOKEN = "hf_e2e_token_" + uuid.uuid4().hex
REPO = "e2e/tiny-resnet"
PHOTO = images.photo(200, 150)


@dataclass
class Project:
    """A directory with a bake.toml for this environment, and the environment pointing at the local Hub."""

    path: Path
    env: dict[str, str]

    def bake(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return run_bake(args, {**self.env, **extra_env}, self.path)


@dataclass
class Built:
    tag: str
    sha: str
    output: str
    model_dir: Path


@pytest.fixture(scope="module")
def project(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Project:
    ensure_base_image()
    path = tmp_path_factory.mktemp("project")
    (path / "bake.toml").write_text(build_settings_toml())
    env = hub.client_env()
    return Project(path, env)


@pytest.fixture(scope="module")
def built(project: Project, hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    model_dir = make_image_classifier(
        tmp_path_factory.mktemp("model") / "resnet",
        "resnet",
        image_size=64,
        extra_formats=("bin", "flax", "tf", "onnx"),
    )
    sha = hub.add_repo(REPO, model_dir, token=TOKEN)
    tag = f"bake-e2e/tiny-resnet:{uuid.uuid4().hex[:8]}"
    result = project.bake("build", "--model", REPO, "--tag", tag, HF_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr[-4000:]
    yield Built(tag, sha, result.stdout + result.stderr, model_dir)
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.fixture
def container(built: Built) -> Iterator[str]:
    name = f"bake-e2e-{uuid.uuid4().hex[:8]}"
    run_offline(built.tag, name)
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def reference(model_dir: Path, data: bytes) -> list[dict]:
    return pipeline("image-classification", model=str(model_dir))(Image.open(io.BytesIO(data)), top_k=10)


def assert_same_scores(actual: list[dict], expected: list[dict]) -> None:
    assert [item["label"] for item in actual] == [item["label"] for item in expected]
    for got, want in zip(actual, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)


def test_the_build_reports_the_image_model_and_commit(built: Built) -> None:
    assert f"image     {built.tag}" in built.output
    assert f"revision  main -> {built.sha}" in built.output
    assert f"bake launch {built.tag}" in built.output


def test_image_serves_offline_read_only_as_non_root_like_the_pipeline(built: Built, container: str) -> None:
    result = predict_inside(container, PHOTO)
    assert_same_scores(result["answer"], reference(built.model_dir, PHOTO))
    info = result["info"]
    assert (
        info["model"] == REPO and info["commit_sha"] == built.sha and info["task"] == "image-classification"
    )
    assert docker("exec", container, "id", "-u").stdout.strip() == b"10001"
    env = docker("image", "inspect", built.tag, "--format", "{{json .Config.Env}}").stdout.decode()
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env


def test_the_image_speaks_every_protocol_offline(container: str) -> None:
    """Hugging Face, Cog and the Open Inference Protocol give the same labels, inside a --network none
    container (the OpenAI images API is in the text-to-image image's test)."""
    photo = base64.b64encode(PHOTO).decode()
    hf, cog, metadata, oip = request_inside(
        container,
        {"path": "/predict?top_k=3", "data": photo},
        {"path": "/predictions", "json": {"input": {"image": f"data:image/jpeg;base64,{photo}", "top_k": 3}}},
        {"path": "/v2/models/tiny-resnet"},
        {
            "path": "/v2/models/tiny-resnet/infer",
            "json": {
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [photo]}],
                "parameters": {"top_k": 3},
            },
        },
    )
    labels_hf = [item["label"] for item in hf.json()]
    assert (
        cog.json()["status"] == "succeeded" and [item["label"] for item in cog.json()["output"]] == labels_hf
    )
    assert metadata.json()["name"] == "tiny-resnet"
    assert oip.json()["outputs"][0]["data"] == labels_hf


def test_the_image_serves_the_playground_and_the_docs_offline(container: str) -> None:
    """The playground's files and Swagger UI's come from the image itself, inside a --network none
    container; a browser gets the page at /, any other client Cog's discovery document."""
    page, script, style, docs, swagger, discovery = request_inside(
        container,
        {"path": "/", "headers": {"Accept": "text/html"}},
        {"path": "/playground/playground.js"},
        {"path": "/playground/playground.css"},
        {"path": "/docs"},
        {"path": "/docs/assets/swagger-ui-bundle.js"},
        {"path": "/"},
    )
    source = REPO_ROOT / "serve" / "playground"
    assert (page.status, page.body) == (200, (source / "index.html").read_bytes())
    assert script.body == (source / "static" / "playground.js").read_bytes()
    assert style.body == (source / "static" / "playground.css").read_bytes()
    assert docs.status == 200 and b'src="/docs/assets/swagger-ui-bundle.js"' in docs.body
    assert b"cdn." not in docs.body and swagger.status == 200 and b"SwaggerUIBundle" in swagger.body
    assert discovery.json()["predictions_url"] == "/predictions"


def test_labels_carry_the_commit_task_weight_hashes_and_settings(built: Built) -> None:
    found = labels(built.tag)
    assert found["dev.bake.model"] == REPO and found["dev.bake.commit-sha"] == built.sha
    assert found["org.opencontainers.image.revision"] == built.sha
    assert found["dev.bake.task"] == "image-classification" and found["dev.bake.device"] == "cpu"
    weights = (built.model_dir / "model.safetensors").read_bytes()
    assert f'"model.safetensors": "{hashlib.sha256(weights).hexdigest()}"' in found["dev.bake.weights"]
    assert '"BAKE_MAX_BATCH_SIZE": "8"' in found["dev.bake.serve"]


def test_hf_home_holds_only_the_needed_files(built: Built) -> None:
    listing = docker(
        "run", "--rm", "--entrypoint", "find", built.tag, "/opt/bake/hf", "-type", "l", "-o", "-type", "f"
    )
    files = sorted(
        line.split(f"/snapshots/{built.sha}/", 1)[1]
        for line in listing.stdout.decode().splitlines()
        if "/snapshots/" in line
    )
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    blobs = [line for line in listing.stdout.decode().splitlines() if "/blobs/" in line]
    assert len(blobs) == 3, "one blob per file, no second copy of the weights"


def test_the_token_is_nowhere_in_the_image_or_its_history(built: Built) -> None:
    saved = subprocess.run(["docker", "save", built.tag], capture_output=True, check=True).stdout
    assert TOKEN.encode() not in saved
    history = docker("history", "--no-trunc", built.tag).stdout
    assert TOKEN.encode() not in history
    assert TOKEN.encode() not in docker("image", "inspect", built.tag).stdout


def test_a_code_only_change_rebuilds_without_fetching_the_weights(
    built: Built, project: Project, tmp_path: Path
) -> None:
    changed = tmp_path / "src"
    shutil.copytree(REPO_ROOT / "serve", changed / "serve", ignore=shutil.ignore_patterns("__pycache__"))
    marker = f"code change {uuid.uuid4().hex}"
    (changed / "serve" / "marker.py").write_text(f'"""{marker}"""\n')
    tag = built.tag + "-code"
    # `serve` from the changed copy, bake itself from this checkout
    pythonpath = f"{changed}{os.pathsep}{REPO_ROOT}"
    result = project.bake("build", "--model", REPO, "--tag", tag, HF_TOKEN=TOKEN, PYTHONPATH=pythonpath)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "(from the build cache)" in result.stdout, "the weights stage must be cached"
        inside = docker("run", "--rm", "--entrypoint", "cat", tag, "/opt/bake/app/serve/marker.py").stdout
        assert marker.encode() in inside
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_a_settings_change_rebuilds_without_fetching_the_weights(built: Built, project: Project) -> None:
    tag = built.tag + "-settings"
    result = project.bake("build", "--model", REPO, "--tag", tag, "--max-batch-size", "4", HF_TOKEN=TOKEN)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "(from the build cache)" in result.stdout
        assert '"BAKE_MAX_BATCH_SIZE": "4"' in labels(tag)["dev.bake.serve"]
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_a_local_directory_is_baked_through_a_named_context(project: Project, tmp_path: Path) -> None:
    model_dir = make_image_classifier(tmp_path / "my-convnext", "convnext", image_size=64)
    tag = f"bake-e2e/local:{uuid.uuid4().hex[:8]}"
    result = project.bake("build", "--model", str(model_dir), "--tag", tag)
    name = f"bake-e2e-local-{uuid.uuid4().hex[:8]}"
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        assert labels(tag)["dev.bake.revision"] == "local"
        docker("run", "-d", "--name", name, "--network", "none", tag)
        assert_same_scores(predict_inside(name, PHOTO)["answer"], reference(model_dir, PHOTO))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_a_bin_only_repository_is_converted_to_safetensors(
    project: Project, hub: HubServer, tmp_path: Path
) -> None:
    model_dir = make_image_classifier(tmp_path / "vit-bin", "vit", image_size=64, weights_format="bin")
    hub.add_repo("e2e/vit-bin-only", model_dir)
    tag = f"bake-e2e/vit-bin:{uuid.uuid4().hex[:8]}"
    result = project.bake("build", "--model", "e2e/vit-bin-only", "--tag", tag)
    name = f"bake-e2e-bin-{uuid.uuid4().hex[:8]}"
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        listing = docker("run", "--rm", "--entrypoint", "find", tag, "/opt/bake/hf").stdout.decode()
        assert "model.safetensors" in listing and ".bin" not in listing
        docker("run", "-d", "--name", name, "--network", "none", tag)
        assert_same_scores(predict_inside(name, PHOTO)["answer"], reference(model_dir, PHOTO))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


SLIM_FACTS = r"""
import hashlib, json, os, struct
venv = "/opt/bake/venv"
site = venv + "/lib/python3.11/site-packages"
def sections(path):
    with open(path, "rb") as elf:
        data = elf.read(64)
        shoff, = struct.unpack_from("<Q", data, 0x28)
        size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
        elf.seek(shoff)
        headers = [struct.unpack("<IIQQQQIIQQ", elf.read(size)) for _ in range(count)]
        elf.seek(headers[names_index][4])
        names = elf.read(headers[names_index][5])
    return sorted(names[h[0]:names.index(b"\0", h[0])].decode() for h in headers)
seen, duplicates, stubs, tests = {}, [], [], []
for root, dirs, files in os.walk(venv):
    in_package = os.path.isfile(os.path.join(root, "__init__.py"))
    tests += [os.path.join(root, d) for d in dirs if d == "tests" and in_package]
    for name in files:
        path = os.path.join(root, name)
        stubs += [path] if name.endswith(".pyi") else []
        if not os.path.islink(path) and os.path.getsize(path) >= 65536:
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            duplicates += [(seen[digest], path)] if digest in seen else []
            seen.setdefault(digest, path)
print(json.dumps({
    "top": sorted(os.listdir(site)), "bin": sorted(os.listdir(venv + "/bin")),
    "torch_bin": sorted(os.listdir(site + "/torch/bin")), "torch": sorted(os.listdir(site + "/torch")),
    "libtorch_sections": sections(site + "/torch/lib/libtorch_cpu.so"), "duplicates": duplicates,
    "stubs": stubs, "tests": tests, "tools": os.path.exists("/opt/bake/tools"),
}))
"""


def test_the_image_ships_a_slim_virtualenv(built: Built) -> None:
    facts = json.loads(docker("run", "--rm", "--entrypoint", "python", built.tag, "-c", SLIM_FACTS).stdout)
    top = facts["top"]
    for gone in (
        "pip",
        "setuptools",
        "wheel",
        "_distutils_hack",
        "pkg_resources",
        "hf_xet",
        "typer",
        "rich",
        "watchfiles",
        "websockets",
        "dotenv",
    ):
        assert gone not in top and not any(name.startswith(f"{gone}-") for name in top), gone
    assert {"torch", "transformers", "sympy", "uvicorn", "uvloop"} <= set(top)
    assert not [name for name in facts["bin"] if name.startswith("pip") or name in ("uv", "uvx")]
    assert not facts["tools"], "the installer's own virtualenv stays in the build"
    assert facts["torch_bin"] == ["torch_shm_manager"]
    assert "include" not in facts["torch"] and "test" not in facts["torch"] and "share" not in facts["torch"]
    assert ".symtab" not in facts["libtorch_sections"] and ".dynsym" in facts["libtorch_sections"]
    assert facts["duplicates"] == [] and facts["stubs"] == [] and facts["tests"] == []


def test_the_server_starts_from_compiled_bytecode(built: Built) -> None:
    compiled, from_source = bytecode_at_start(
        built.tag, {"path": "/predict", "data": base64.b64encode(PHOTO).decode()}
    )
    # The image serves the compiled forward pass: torch and the web stack, no transformers (1277 modules).
    assert len(compiled) > 1000 and not any(path.startswith("transformers/") for path in compiled), len(
        compiled
    )
    model_specific = [path for path in from_source if path.startswith("transformers/models/resnet/")]
    assert len(from_source) - len(model_specific) <= 10, from_source


def test_the_image_serves_with_every_capability_dropped_read_only_and_no_new_privileges(
    built: Built,
) -> None:
    name = f"bake-e2e-hardened-{uuid.uuid4().hex[:8]}"
    run_offline(built.tag, name, "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
    try:
        result = predict_inside(name, PHOTO)
        assert_same_scores(result["answer"], reference(built.model_dir, PHOTO))
        status = docker("exec", name, "cat", "/proc/1/status").stdout.decode()
        assert re.search(r"^Uid:\s+10001\s", status, re.MULTILINE), "PID 1 runs as the image's user"
        assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE) and re.search(
            r"^NoNewPrivs:\s+1$", status, re.M
        )
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_the_token_is_in_no_label_log_line_or_build_cache(
    built: Built, project: Project, tmp_path: Path
) -> None:
    assert TOKEN not in built.output, "the build's output (every log line of every step)"
    assert not any(TOKEN in value for value in labels(built.tag).values())
    # The weights step downloads through a BuildKit cache mount that outlives the build: grep it from a
    # probe build that mounts the same cache (the token reaches the probe as a secret, never a layer).
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {ensure_base_image()}\n"
        f"ARG NONCE={uuid.uuid4().hex}\n"
        "RUN --mount=type=cache,target=/root/.cache/huggingface,sharing=locked \\\n"
        "    --mount=type=secret,id=token \\\n"
        "    find /root/.cache/huggingface -type f | grep -q . && echo CACHE-HAS-'FILES'; \\\n"
        "    if grep -rqF -f /run/secrets/token /root/.cache/huggingface; then echo TOKEN-'FOUND'; fi\n"
    )
    probe = subprocess.run(
        [
            "docker",
            "buildx",
            "build",
            "--progress",
            "plain",
            "--secret",
            f"id=token,src={secret}",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "CACHE-HAS-FILES" in probe.stderr and "TOKEN-FOUND" not in probe.stderr
    assert TOKEN not in probe.stderr


def test_a_wrong_token_is_refused_without_repeating_it(project: Project) -> None:
    wrong = "hf_wrong_token_" + uuid.uuid4().hex
    result = project.bake("build", "--model", REPO, "--tag", "bake-e2e/never:1", HF_TOKEN=wrong)
    assert result.returncode == 1
    assert wrong not in result.stdout + result.stderr and wrong[-12:] not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("bake: error: ")


def sbom_of(built: Built, project: Project) -> dict:
    line = next(line for line in built.output.splitlines() if line.startswith("sbom "))
    path = Path(line.split()[1])
    assert path.parent == project.path / ".bake" / "sbom" and path.is_file()
    return json.loads(path.read_text())


def test_the_build_writes_the_images_sbom_next_to_the_project(built: Built, project: Project) -> None:
    document = sbom_of(built, project)
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(document)) is None
    assert document["metadata"]["component"]["name"] == REPO
    assert document["metadata"]["component"]["version"] == built.sha
    versions = {
        c["name"].lower(): c["version"] for c in document["components"] if "pkg:pypi/" in c.get("purl", "")
    }
    inside = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/bake/venv/bin/python", built.tag, "-c",
        "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower(): d.version "
        "for d in m.distributions()}))",
    ).stdout  # fmt: skip
    installed = json.loads(inside)
    for name in ("torch", "transformers", "fastapi", "uvicorn", "pillow", "safetensors"):
        assert versions[name] == installed[name], name
    assert any(c.get("purl", "").startswith("pkg:deb/debian/libc6@") for c in document["components"])
    in_image = docker("run", "--rm", "--entrypoint", "cat", built.tag, SBOM).stdout
    assert json.loads(in_image)["serialNumber"] == document["serialNumber"]


def test_pip_audit_finds_no_known_vulnerability_with_a_fix_in_the_image(
    built: Built, project: Project, tmp_path: Path
) -> None:
    """pip-audit (PyPI's vulnerability records) over every Python package of the image, pinned as the SBOM
    lists it. Where a network hides a version's record (this one passes PyPI's per-project JSON but not the
    per-version one), the project's record applies to a pin that is the project's latest release, and the
    packages left unaudited are printed by name (docs/reliability.md records which, and the full audit)."""
    document = sbom_of(built, project)
    pins = sorted(
        {
            (c["name"], c["version"].split("+", 1)[0])
            for c in document["components"]
            if "pkg:pypi/" in c.get("purl", "")
        }
    )
    requirements = tmp_path / "image-requirements.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in pins))
    report = audit(requirements, tmp_path)
    fixable = [
        f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {', '.join(vuln['fix_versions'])})"
        for dep in report
        for vuln in dep.get("vulns", [])
        if vuln.get("fix_versions")
    ]
    audited = [dep for dep in report if "skip_reason" not in dep]
    unaudited = sorted(dep["skip_reason"].rsplit(": ", 1)[-1] for dep in report if "skip_reason" in dep)
    print(
        f"pip-audit: {len(audited)} of {len(pins)} packages audited, {len(fixable)} fixable vulnerabilities;"
        f" not audited: {', '.join(unaudited) or 'none'}"
    )
    assert not fixable, fixable
    assert audited, "at least the packages whose pin is their latest release are audited"


def audit(requirements: Path, tmp_path: Path) -> list[dict]:
    """pip-audit's report (one entry per package), completed from PyPI's per-project records where the
    per-version ones cannot be fetched."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("pip-audit")),
            "--requirement", str(requirements), "--no-deps", "--disable-pip", "--format", "json",
            "--progress-spinner", "off", "--cache-dir", str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)["dependencies"]
    for dep in report:
        if "skip_reason" not in dep:
            continue
        name, version = dep["name"], dep["skip_reason"].rsplit("(", 1)[-1].rstrip(")")
        project = httpx.get(f"https://pypi.org/pypi/{name}/json", timeout=30)
        if project.status_code == 200 and project.json()["info"]["version"] == version:
            vulns = project.json().get("vulnerabilities") or []
            dep.pop("skip_reason")
            dep |= {
                "version": version,
                "vulns": [{"id": v["id"], "fix_versions": v.get("fixed_in") or []} for v in vulns],
            }
    return report
