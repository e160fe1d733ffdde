"""`bake launch --target kubernetes` from the CLI: manifests from the image's labels, next to bake.toml."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures.docker import built_project, run_bake

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    registry = "registry.example:5000/bake-k8s/tiny"
    with built_project(tmp_path_factory.mktemp("k8s"), "resnet", registry, "--max-batch-size", "4") as built:
        yield built


def test_knative_manifests_are_written_from_the_labels(image: tuple[Path, str]) -> None:
    path, tag = image
    result = run_bake(
        ["launch", tag, "--target", "kubernetes", "--name", "tiny", "--max-scale", "3"], {}, path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = path / "k8s" / "tiny.yaml"
    shown = "k8s/tiny.yaml"  # next to bake.toml, shown relative to where bake runs
    assert f"wrote {shown}" in result.stdout and f"kubectl apply -f {shown}" in result.stdout
    [service] = list(yaml.safe_load_all(manifest.read_text()))
    assert service["kind"] == "Service" and service["apiVersion"] == "serving.knative.dev/v1"
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "3"
    assert template["spec"]["containerConcurrency"] == 4 + 256
    [container] = template["spec"]["containers"]
    assert container["image"] == tag and container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"name": "BAKE_MODEL_NAME", "value": "tiny"} in container["env"]


def test_kserve_and_secret_env(image: tuple[Path, str]) -> None:
    path, tag = image
    result = run_bake(
        [
            "launch",
            tag,
            "--target",
            "kubernetes",
            "--name",
            "tiny-kserve",
            "--kserve",
            "--secret-env",
            "BAKE_API_KEY=bake-keys:api",
        ],
        {},
        path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [runtime, service] = list(yaml.safe_load_all((path / "k8s" / "tiny-kserve.yaml").read_text()))
    assert (runtime["kind"], service["kind"]) == ("ServingRuntime", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model == {"modelFormat": {"name": "bake"}, "runtime": "tiny-kserve", "protocolVersion": "v2"}
    assert runtime["metadata"]["name"] == "tiny-kserve" and runtime["spec"]["protocolVersions"] == ["v2"]
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container" and container["image"] == tag
    assert {"name": "BAKE_MODEL_NAME", "value": "tiny-kserve"} in container["env"]
    reference = next(item for item in container["env"] if item["name"] == "BAKE_API_KEY")
    assert reference["valueFrom"]["secretKeyRef"] == {"name": "bake-keys", "key": "api"}


def test_an_inline_api_key_is_refused(image: tuple[Path, str]) -> None:
    path, tag = image
    result = run_bake(
        ["launch", tag, "--target", "kubernetes", "--name", "tiny"], {"BAKE_API_KEY": "s3cret"}, path
    )
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "--secret-env BAKE_API_KEY=SECRET:KEY" in line and "s3cret" not in result.stderr
