"""The `kubernetes` target: Knative Service and KServe ServingRuntime + InferenceService manifests, and
`kubectl apply`.

Manifests are checked field by field, against the vendored Knative/KServe schemas (tests/fixtures/kubernetes,
strict: an unknown or misplaced field fails), and against the Knative webhook rules a schema cannot express.
`apply_manifests` runs the real kubectl when one is installed, against a local API server that validates
what kubectl sends (tests/fixtures/kube_api.py), against a dead server, and as a missing binary.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bake.errors import ConfigError, LaunchFailed
from bake.labels import ImageFacts
from bake.launch.kubernetes import (
    KubernetesOptions,
    apply_manifests,
    manifests_yaml,
    render_manifests,
    write_manifests,
)
from fly.spec import FlyServiceSpec, concurrency_limits, estimated_memory_mb
from serve.contract import routes
from serve.contract.errors import SettingsError
from serve.contract.settings import ServeSettings
from tests.fixtures.kube_api import (
    KNATIVE,
    KNATIVE_SCHEMA,
    KSERVE,
    KSERVE_SCHEMA,
    SCHEMAS,
    SCHEMAS_DIR,
    SERVING_RUNTIME_SCHEMA,
    KubeApiServer,
    schema_errors,
    write_kubeconfig,
)

IMAGE = "ghcr.io/acme/resnet-50:3f2a9c1"
SHA = "0123456789abcdef0123456789abcdef01234567"
SERVE = {
    "BAKE_MAX_BATCH_SIZE": "8",
    "BAKE_MAX_QUEUE": "256",
    "BAKE_TIMEOUT_S": "30.0",
    "BAKE_DRAIN_TIMEOUT_S": "30.0",
    "BAKE_IDLE_TIMEOUT_S": "300.0",
    "PORT": "8080",
}
KUBECTL = shutil.which("kubectl") or "kubectl"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def kubectl_minor_version() -> int:
    """The installed kubectl's minor version (0 when there is none, or it does not say)."""
    if shutil.which("kubectl") is None:
        return 0
    report = subprocess.run(
        [KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False
    )
    try:
        return int(re.sub(r"\D", "", json.loads(report.stdout)["clientVersion"]["minor"]))
    except (ValueError, KeyError):
        return 0


needs_kubectl_1_27 = pytest.mark.skipif(
    kubectl_minor_version() < 27,
    reason="kubectl 1.27+ checks server dry-run support in OpenAPI v3; the local API server serves no v2",
)


def image_facts(
    device: str = "cpu",
    *,
    serve: dict[str, str] | None = None,
    weights_bytes: int = 102_000_000,
    port: int = 8080,
) -> ImageFacts:
    return ImageFacts(
        model="microsoft/resnet-50",
        revision="main",
        commit_sha=SHA,
        task="image-classification",
        device=device,
        weights={"model.safetensors": "ab" * 32},
        weights_bytes=weights_bytes,
        serve=ServeSettings.from_environment({**(SERVE if serve is None else serve), "PORT": str(port)}),
        bake_version="0.1.0",
    )


def render_all(device: str = "cpu", **options: Any) -> list[dict[str, Any]]:
    return render_manifests(image_facts(device), IMAGE, KubernetesOptions(name="resnet-50", **options))


def render(device: str = "cpu", **options: Any) -> dict[str, Any]:
    """The Knative Service, or with kserve=True the ServingRuntime (which holds the container)."""
    documents = render_all(device, **options)
    assert [document["kind"] for document in documents] == (
        ["ServingRuntime", "InferenceService"] if options.get("kserve") else ["Service"]
    )
    return documents[0]


def container_of(document: dict[str, Any]) -> dict[str, Any]:
    if document["kind"] == "Service":
        containers = document["spec"]["template"]["spec"]["containers"]
    else:
        containers = document["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in keys_anywhere(item)}
    if isinstance(value, list):
        return {key for item in value for key in keys_anywhere(item)}
    return set()


# --- the Knative Service ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_knative_service_scales_to_zero_with_limits_from_the_batch_settings(device: str) -> None:
    service = render(device)
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"
    metadata = service["metadata"]
    assert (metadata["name"], metadata["namespace"]) == ("resnet-50", "default")
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "resnet-50",
        "app.kubernetes.io/managed-by": "bake",
    }
    assert metadata["annotations"]["bake.dev/model"] == "microsoft/resnet-50"
    assert metadata["annotations"]["bake.dev/commit-sha"] == SHA
    template = service["spec"]["template"]
    assert template["metadata"]["labels"] == metadata["labels"]
    assert template["metadata"]["annotations"] == {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": "8",
        "autoscaling.knative.dev/target-utilization-percentage": "100",
        "autoscaling.knative.dev/min-scale": "0",
        "autoscaling.knative.dev/max-scale": "1",
        "autoscaling.knative.dev/scale-down-delay": "5m",
    }
    revision = template["spec"]
    assert revision["containerConcurrency"] == 8 + 256
    assert revision["timeoutSeconds"] == 30 + 10
    assert "terminationGracePeriodSeconds" not in keys_anywhere(service)  # Knative refuses it


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_container_serves_the_image_with_probes_resources_and_no_idle_exit(device: str) -> None:
    container = container_of(render(device))
    assert container["name"] == "user-container"
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert container["env"] == [
        {"name": "BAKE_IDLE_TIMEOUT_S", "value": "0"},
        {"name": "BAKE_MODEL_NAME", "value": "resnet-50"},
    ]
    assert container["readinessProbe"] == {"httpGet": {"path": "/ready", "port": 8080}}
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/health", "port": 8080},
        "initialDelaySeconds": 10,
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 6,
    }
    memory = f"{estimated_memory_mb(102_000_000)}Mi"
    assert memory == "1280Mi"  # 2 x 97 MiB + 1024 MiB, rounded up to 256 MiB
    expected_limits: dict[str, Any] = {"memory": memory}
    if device == "cuda":
        expected_limits["nvidia.com/gpu"] = 1
    assert container["resources"] == {"requests": {"cpu": "1", "memory": memory}, "limits": expected_limits}
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_cpu_images_ask_for_no_gpu_anywhere() -> None:
    for kserve in (False, True):
        assert "nvidia.com/gpu" not in keys_anywhere(render_all("cpu", kserve=kserve))
        assert "nvidia.com/gpu" in keys_anywhere(render_all("cuda", kserve=kserve))
        assert {"tolerations", "nodeSelector", "affinity"}.isdisjoint(
            keys_anywhere(render_all("cuda", kserve=kserve))
        )


def test_scale_settings_reach_the_annotations() -> None:
    annotations = render(min_scale=1, max_scale=4, scale_down_delay="15m")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["autoscaling.knative.dev/min-scale"] == "1"
    assert annotations["autoscaling.knative.dev/max-scale"] == "4"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "15m"


# --- the KServe InferenceService ------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_inference_service_runs_the_same_container_through_its_serving_runtime(device: str) -> None:
    runtime, isvc = render_all(device, kserve=True, max_scale=3)
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    assert (runtime["metadata"]["name"], runtime["metadata"]["namespace"]) == ("resnet-50", "default")
    assert runtime["metadata"]["labels"] == isvc["metadata"]["labels"]
    assert runtime["metadata"]["annotations"]["bake.dev/commit-sha"] == SHA
    assert "serving.kserve.io/deploymentMode" not in runtime["metadata"]["annotations"]
    spec = dict(runtime["spec"])
    containers = spec.pop("containers")
    assert spec == {"supportedModelFormats": [{"name": "bake"}], "protocolVersions": ["v2"]}
    knative_container = container_of(render(device, max_scale=3))
    assert containers == [{**knative_container, "name": "kserve-container"}]

    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == "resnet-50"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert annotations["autoscaling.knative.dev/scale-down-delay"] == "5m"
    assert annotations["autoscaling.knative.dev/target-utilization-percentage"] == "100"
    assert annotations["bake.dev/model"] == "microsoft/resnet-50"
    assert isvc["spec"]["predictor"] == {
        "model": {"modelFormat": {"name": "bake"}, "runtime": "resnet-50", "protocolVersion": "v2"},
        "minReplicas": 0,
        "maxReplicas": 3,
        "scaleMetric": "concurrency",
        "scaleTarget": 8,
        "containerConcurrency": 264,
        "timeout": 40,
    }
    assert "storageUri" not in keys_anywhere(isvc)  # the weights are in the image: no storage initializer


def kserve_runtime_problems(isvc: dict[str, Any], runtime: dict[str, Any]) -> list[str]:
    """Why KServe would not run `isvc` on `runtime`, in the words of its controller's checks
    (pkg/controller/v1beta1/inferenceservice/components/predictor.go `reconcileModel` and `buildPodSpec`,
    pkg/apis/serving/v1beta1/predictor_model.go `RuntimeSupportsModel`, pkg/apis/serving/v1alpha1/
    servingruntime_types.go `IsProtocolVersionSupported`); empty when it would."""
    model = isvc["spec"]["predictor"]["model"]
    spec = runtime["spec"]
    problems = []
    if model.get("runtime") != runtime["metadata"]["name"]:
        problems.append("Waiting for runtime to become available")
    if spec.get("disabled"):
        problems.append("Specified runtime is disabled")
    protocols = spec.get("protocolVersions") or []
    if "protocolVersion" in model and protocols and model["protocolVersion"] not in protocols:
        problems.append("Specified runtime does not support specified protocol version")
    wanted = model["modelFormat"]
    labels = {f"mt:{item['name']}" for item in spec["supportedModelFormats"]} | {
        f"mt:{item['name']}:{item['version']}" for item in spec["supportedModelFormats"] if "version" in item
    }
    label = f"mt:{wanted['name']}" + (f":{wanted['version']}" if "version" in wanted else "")
    if label not in labels:
        problems.append("Specified runtime does not support specified framework/version")
    if "kserve-container" not in [container["name"] for container in spec["containers"]]:
        problems.append("failed to find kserve-container in ServingRuntime containers")
    return problems


def test_kserve_runs_the_model_on_its_runtime_with_protocol_v2() -> None:
    runtime, isvc = render_all(kserve=True)
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert kserve_runtime_problems(isvc, runtime) == []
    assert "autoSelect" not in keys_anywhere(runtime)  # no other InferenceService picks this runtime
    for mutate, problem in [
        (lambda r, i: r["spec"].update(protocolVersions=["v1"]), "protocol version"),
        (lambda r, i: i["spec"]["predictor"]["model"].update(runtime="other"), "runtime to become available"),
        (
            lambda r, i: i["spec"]["predictor"]["model"]["modelFormat"].update(version="1"),
            "framework/version",
        ),
        (lambda r, i: container_of(r).update(name="user-container"), "kserve-container"),
    ]:
        broken_runtime, broken_isvc = copy.deepcopy(runtime), copy.deepcopy(isvc)
        mutate(broken_runtime, broken_isvc)
        assert any(problem in found for found in kserve_runtime_problems(broken_isvc, broken_runtime)), (
            problem
        )


@pytest.mark.parametrize("kserve", [False, True], ids=["knative", "kserve"])
def test_the_v2_model_name_is_the_name_kserve_routes_by(kserve: bool) -> None:
    """KServe sends protocol-v2 requests to /v2/models/<model name>/infer (pkg/constants `PredictPath`), the
    model name being the InferenceService's unless the model's env or args name another
    (pkg/controller/v1beta1/inferenceservice/utils/utils.go `GetModelName`, `GetPredictorEndpoint`); the
    runtime, reading the container's environment, serves that same route."""
    documents = render_manifests(image_facts(), IMAGE, KubernetesOptions("tiny-resnet", kserve=kserve))
    if kserve:
        assert {"env", "args"}.isdisjoint(documents[-1]["spec"]["predictor"]["model"])
    environment = {
        item["name"]: item["value"] for item in container_of(documents[0])["env"] if "value" in item
    }
    settings = ServeSettings.from_environment(environment)
    assert settings.model_name == documents[-1]["metadata"]["name"] == "tiny-resnet"
    kserve_route = f"/v2/models/{documents[-1]['metadata']['name']}/infer"
    assert routes.OIP_INFER.format(model_name=settings.model_name) == kserve_route


# --- numbers derived from the image's labels ------------------------------------------------------------


@pytest.mark.parametrize(
    ("serve", "target", "hard", "timeout"),
    [
        (
            {
                "BAKE_MAX_BATCH_SIZE": "4",
                "BAKE_MAX_QUEUE": "12",
                "BAKE_TIMEOUT_S": "120",
                "BAKE_DRAIN_TIMEOUT_S": "10",
            },
            4,
            16,
            130,
        ),
        (
            {
                "BAKE_MAX_BATCH_SIZE": "1",
                "BAKE_MAX_QUEUE": "1",
                "BAKE_TIMEOUT_S": "5.5",
                "BAKE_DRAIN_TIMEOUT_S": "60",
            },
            1,
            2,
            70,
        ),
        ({}, 8, 264, 40),  # an image without serve labels: bake's defaults
    ],
)
def test_limits_follow_the_image_labels(serve: dict[str, str], target: int, hard: int, timeout: int) -> None:
    for kserve in (False, True):
        document = render_manifests(image_facts(serve=serve), IMAGE, KubernetesOptions("m", kserve=kserve))[
            -1
        ]
        if kserve:
            predictor = document["spec"]["predictor"]
            got = (predictor["scaleTarget"], predictor["containerConcurrency"], predictor["timeout"])
        else:
            template = document["spec"]["template"]
            got = (
                int(template["metadata"]["annotations"]["autoscaling.knative.dev/target"]),
                template["spec"]["containerConcurrency"],
                template["spec"]["timeoutSeconds"],
            )
        assert got == (target, hard, timeout)


def test_concurrency_and_memory_are_fly_s_numbers() -> None:
    facts = image_facts(
        serve={**SERVE, "BAKE_MAX_BATCH_SIZE": "16", "BAKE_MAX_QUEUE": "64"}, weights_bytes=7 * 2**30
    )
    fly = FlyServiceSpec(
        app="m",
        image=IMAGE,
        max_batch_size=16,
        max_queue=64,
        warmup_seconds=0,
        drain_seconds=30,
        weights_bytes=facts.weights_bytes,
    )
    service = render_manifests(facts, IMAGE, KubernetesOptions("m"))[0]
    template = service["spec"]["template"]
    limits = concurrency_limits(fly)
    assert int(template["metadata"]["annotations"]["autoscaling.knative.dev/target"]) == limits.soft_limit
    assert template["spec"]["containerConcurrency"] == limits.hard_limit
    memory = container_of(service)["resources"]["limits"]["memory"]
    assert memory == f"{estimated_memory_mb(facts.weights_bytes)}Mi" == f"{2 * 7 * 1024 + 1024}Mi"


@pytest.mark.parametrize("label", ["eight", "-1", "nan", "0"])
def test_unusable_serve_label_is_refused(label: str) -> None:
    """The labels are read once, with the runtime's parser, before any target sees them."""
    labels = image_facts().to_labels(base_image="b", source=None)
    labels["dev.bake.serve"] = json.dumps({**SERVE, "BAKE_MAX_BATCH_SIZE": label})
    with pytest.raises(SettingsError, match="BAKE_MAX_BATCH_SIZE"):
        ImageFacts.from_labels(labels)


def test_port_knative_reserves_device_and_image_are_checked() -> None:
    with pytest.raises(ConfigError, match="port 8012"):
        render_manifests(image_facts(port=8012), IMAGE, KubernetesOptions("m"))
    with pytest.raises(ConfigError, match="neither cpu nor cuda"):
        render_manifests(image_facts(device="rocm"), IMAGE, KubernetesOptions("m"))
    with pytest.raises(ConfigError, match="image reference is empty"):
        render_manifests(image_facts(), " ", KubernetesOptions("m"))
    service = render_manifests(image_facts(port=9000), IMAGE, KubernetesOptions("m"))[0]
    container = container_of(service)
    assert container["ports"][0]["containerPort"] == 9000
    assert (
        container["readinessProbe"]["httpGet"]["port"]
        == container["livenessProbe"]["httpGet"]["port"]
        == 9000
    )


# --- environment and secrets ----------------------------------------------------------------------------


def test_extra_env_comes_after_the_idle_override_and_secrets_come_from_secret_refs() -> None:
    options: dict[str, Any] = {
        "env": {"BAKE_LOG_LEVEL": "debug", "BAKE_JPEG_DRAFT": "1"},
        "secret_env": {"BAKE_API_KEY": ("resnet-api", "key"), "OTHER_TOKEN": ("tokens", "other.token")},
    }
    for kserve in (False, True):
        document = render(kserve=kserve, **options)
        assert container_of(document)["env"] == [
            {"name": "BAKE_IDLE_TIMEOUT_S", "value": "0"},
            {"name": "BAKE_MODEL_NAME", "value": "resnet-50"},
            {"name": "BAKE_JPEG_DRAFT", "value": "1"},
            {"name": "BAKE_LOG_LEVEL", "value": "debug"},
            {"name": "BAKE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "resnet-api", "key": "key"}}},
            {"name": "OTHER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "other.token"}}},
        ]


@pytest.mark.parametrize("name", ["BAKE_API_KEY", "HF_TOKEN", "DB_PASSWORD", "OPENAI_API_KEY", "APP_SECRET"])
def test_secrets_are_never_inline(name: str) -> None:
    with pytest.raises(ConfigError, match="secret_env") as error:
        KubernetesOptions("m", env={name: "hunter2"})
    assert "hunter2" not in str(error.value)


def test_idle_timeout_cannot_be_turned_back_on() -> None:
    with pytest.raises(ConfigError, match="BAKE_IDLE_TIMEOUT_S=300.*crash"):
        KubernetesOptions("m", env={"BAKE_IDLE_TIMEOUT_S": "300"})
    env = container_of(render(env={"BAKE_IDLE_TIMEOUT_S": "0"}))["env"]
    assert [item["name"] for item in env] == ["BAKE_IDLE_TIMEOUT_S", "BAKE_MODEL_NAME"]
    assert env[0] == {"name": "BAKE_IDLE_TIMEOUT_S", "value": "0"}


@pytest.mark.parametrize(
    ("env", "secret_env", "match"),
    [
        ({"PORT": "9000"}, {}, "set by Knative"),
        ({"K_SERVICE": "x"}, {}, "set by Knative"),
        ({}, {"K_REVISION": ("s", "k")}, "set by Knative"),
        ({"HF_HUB_OFFLINE": "0"}, {}, "HF_HUB_OFFLINE"),
        ({"TRANSFORMERS_OFFLINE": ""}, {}, "TRANSFORMERS_OFFLINE"),
        ({"1ABC": "x"}, {}, "invalid environment variable name"),
        ({"A=B": "x"}, {}, "invalid environment variable name"),
        ({"X": "1"}, {"X": ("s", "k")}, "both env and secret_env"),
        ({}, {"BAKE_API_KEY": ("Bad_Secret", "k")}, "invalid Secret name"),
        ({}, {"BAKE_API_KEY": ("s", "bad/key")}, "invalid Secret key"),
        ({}, {"BAKE_MODEL_NAME": ("s", "k")}, "BAKE_MODEL_NAME is no secret"),
        ({}, {"BAKE_IDLE_TIMEOUT_S": ("s", "k")}, "BAKE_IDLE_TIMEOUT_S is no secret"),
    ],
)
def test_unusable_environment_is_refused(
    env: dict[str, str], secret_env: dict[str, tuple[str, str]], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        KubernetesOptions("m", env=env, secret_env=secret_env)


def test_offline_flags_may_be_restated() -> None:
    env = container_of(render(env={"HF_HUB_OFFLINE": "1"}))["env"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env


def test_the_model_name_follows_the_service_unless_knative_is_told_otherwise() -> None:
    env = container_of(render(env={"BAKE_MODEL_NAME": "resnet"}))["env"]
    assert [item for item in env if item["name"] == "BAKE_MODEL_NAME"] == [
        {"name": "BAKE_MODEL_NAME", "value": "resnet"}
    ]
    restated = container_of(render(kserve=True, env={"BAKE_MODEL_NAME": "resnet-50"}))["env"]
    assert [item["name"] for item in restated].count("BAKE_MODEL_NAME") == 1
    with pytest.raises(ConfigError, match="KServe sends requests to /v2/models/resnet-50/infer") as error:
        KubernetesOptions("resnet-50", kserve=True, env={"BAKE_MODEL_NAME": "resnet"})
    assert "leave BAKE_MODEL_NAME out" in str(error.value)


def test_kserve_refuses_values_it_would_read_as_templates() -> None:
    with pytest.raises(ConfigError, match="BAKE_LOG_LEVEL a value with '[{][{]'.*Go template"):
        KubernetesOptions("m", kserve=True, env={"BAKE_LOG_LEVEL": "{{.Name}}"})
    assert KubernetesOptions("m", env={"BAKE_LOG_LEVEL": "{{.Name}}"}).env  # Knative templates nothing


# --- option validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "resnet-50", "r2d2", "a" * 63])
def test_valid_names(name: str) -> None:
    assert render_manifests(image_facts(), IMAGE, KubernetesOptions(name))[0]["metadata"]["name"] == name


@pytest.mark.parametrize(
    "name", ["", "Resnet", "resnet_50", "resnet.50", "-resnet", "resnet-", "50-resnet", "a" * 64, "résnet"]
)
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid Kubernetes name") as error:
        KubernetesOptions(name)
    assert "63 lowercase letters, digits and dashes" in str(error.value)


def test_kserve_names_leave_room_for_the_predictor_suffix() -> None:
    assert KubernetesOptions("a" * 53, kserve=True).name == "a" * 53
    with pytest.raises(ConfigError, match="too long for KServe.*at most 53"):
        KubernetesOptions("a" * 54, kserve=True)


@pytest.mark.parametrize("namespace", ["", "Default", "ns_1", "a" * 64, "-ns"])
def test_invalid_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ConfigError, match="invalid namespace"):
        KubernetesOptions("m", namespace=namespace)


@pytest.mark.parametrize("delay", ["0", "0s", "90s", "5m", "1m30s", "1h", "60m", "1.5m", "3600000ms"])
def test_valid_scale_down_delays(delay: str) -> None:
    assert KubernetesOptions("m", scale_down_delay=delay).scale_down_delay == delay


@pytest.mark.parametrize("delay", ["", "5", "5 m", "5M", "1h1s", "61m", "1.5s", "-1s", "+5m", "1d", "abc"])
def test_invalid_scale_down_delays_are_refused(delay: str) -> None:
    with pytest.raises(ConfigError, match="scale_down_delay"):
        KubernetesOptions("m", scale_down_delay=delay)


@pytest.mark.parametrize(("min_scale", "max_scale"), [(-1, 1), (0, 0), (2, 1)])
def test_invalid_scale_bounds_are_refused(min_scale: int, max_scale: int) -> None:
    with pytest.raises(ConfigError, match="scale"):
        KubernetesOptions("m", min_scale=min_scale, max_scale=max_scale)


# --- the published schemas, and the Knative webhook's own rules -----------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("kserve", [False, True], ids=["knative", "kserve"])
def test_manifests_conform_to_the_published_schemas(device: str, kserve: bool) -> None:
    documents = render_all(
        device,
        kserve=kserve,
        env={"BAKE_LOG_LEVEL": "debug"},
        secret_env={"BAKE_API_KEY": ("resnet-api", "key")},
    )
    schemas = [SERVING_RUNTIME_SCHEMA, KSERVE_SCHEMA] if kserve else [KNATIVE_SCHEMA]
    for document, schema in zip(documents, schemas, strict=True):
        assert schema_errors(document, schema) == [], document["kind"]
    assert knative_webhook_violations(documents) == []


def test_the_schemas_are_strict() -> None:
    service = render("cuda")
    revision = service["spec"]["template"]["spec"]
    for mutate, where in [
        (
            lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
            "terminationGrace",
        ),
        (lambda d: d["spec"]["template"]["spec"].update(containerconcurrency=1), "containerconcurrency"),
        (lambda d: container_of(d).update(lifecycle={}), "lifecycle"),
        (lambda d: container_of(d)["ports"][0].update(hostPort=80), "hostPort"),
        (lambda d: container_of(d)["readinessProbe"]["httpGet"].update(port=[8080]), "port"),
        (lambda d: container_of(d)["resources"]["limits"].update(memory="1.2 GB"), "memory"),
    ]:
        broken = copy.deepcopy(service)
        mutate(broken)
        assert any(where in error for error in schema_errors(broken, KNATIVE_SCHEMA)), where
    assert revision == render("cuda")["spec"]["template"]["spec"]  # the original is untouched
    runtime, isvc = render_all(kserve=True)
    for mutate, where in [
        (lambda d: d["spec"]["predictor"].update(scaleMetric="latency"), "scaleMetric"),
        (lambda d: d["spec"]["predictor"].update(minReplicas=-1), "minReplicas"),
        (lambda d: d["spec"]["predictor"].update(terminationGracePeriodSeconds=30), "terminationGrace"),
        (lambda d: d["spec"].update(predictors={}), "predictors"),
        (lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="V2"), "protocolVersion"),
        (lambda d: d["spec"]["predictor"]["model"].update(name="m"), "'name' was unexpected"),
        (lambda d: d["spec"]["predictor"]["model"].update(lifecycle={}), "lifecycle"),
        (lambda d: d["spec"]["predictor"]["model"].update(modelFormat={}), "'name' is a required property"),
        (lambda d: d["spec"]["predictor"]["model"].update(protocol="v2"), "'protocol' was unexpected"),
    ]:
        broken = copy.deepcopy(isvc)
        mutate(broken)
        assert any(where in error for error in schema_errors(broken, KSERVE_SCHEMA)), where
    for mutate, where in [
        (lambda d: container_of(d).update(stdin=True), "stdin"),
        (lambda d: container_of(d).pop("name"), "'name' is a required property"),
        (lambda d: d["spec"].update(containers=[]), "containers"),
        (lambda d: d["spec"].update(protocolVersions=["http"]), "protocolVersions"),
        (lambda d: d["spec"].update(protocolVersion="v2"), "'protocolVersion' was unexpected"),
        (lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0), "priority"),
        (lambda d: d["spec"].update(terminationGracePeriodSeconds=30), "terminationGrace"),
        (lambda d: d.update(apiVersion="serving.kserve.io/v1beta1"), "apiVersion"),
    ]:
        broken = copy.deepcopy(runtime)
        mutate(broken)
        assert any(where in error for error in schema_errors(broken, SERVING_RUNTIME_SCHEMA)), where


KNATIVE_RESERVED_PORTS = {8008, 8012, 8013, 8022, 9090, 9091}
KNATIVE_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}


def knative_webhook_violations(documents: list[dict[str, Any]]) -> list[str]:
    """The checks of Knative's admission webhook that no schema states (knative/serving
    pkg/apis/serving/k8s_validation.go and pkg/apis/autoscaling/annotation_validation.go), on a Knative
    Service or on what KServe makes of a ServingRuntime and an InferenceService."""
    problems = []
    document = documents[-1]
    container = container_of(documents[0])
    if document["kind"] == "Service":
        annotations = document["spec"]["template"]["metadata"]["annotations"]
    else:  # KServe writes these from the predictor's fields and the InferenceService's annotations
        predictor = document["spec"]["predictor"]
        annotations = {
            **document["metadata"]["annotations"],
            "autoscaling.knative.dev/min-scale": str(predictor["minReplicas"]),
            "autoscaling.knative.dev/max-scale": str(predictor["maxReplicas"]),
            "autoscaling.knative.dev/metric": predictor["scaleMetric"],
            "autoscaling.knative.dev/target": str(predictor["scaleTarget"]),
        }
    min_scale = int(annotations["autoscaling.knative.dev/min-scale"])
    max_scale = int(annotations["autoscaling.knative.dev/max-scale"])
    if min_scale < 0 or (max_scale != 0 and max_scale < min_scale):
        problems.append("max-scale is less than min-scale")
    if (
        annotations.get("autoscaling.knative.dev/class", "kpa.autoscaling.knative.dev")
        != "kpa.autoscaling.knative.dev"
    ):
        problems.append("only the KPA scales to zero")
    if annotations["autoscaling.knative.dev/metric"] not in ("concurrency", "rps"):
        problems.append("KPA scales on concurrency or rps")
    if float(annotations["autoscaling.knative.dev/target"]) < 0.01:
        problems.append("target should be at least 0.01")
    if not 1 <= float(annotations["autoscaling.knative.dev/target-utilization-percentage"]) <= 100:
        problems.append("target-utilization-percentage out of 1..100")
    delay = go_duration_seconds(annotations["autoscaling.knative.dev/scale-down-delay"])
    if not 0 <= delay <= 3600 or delay != round(delay):
        problems.append("scale-down-delay out of 0s..1h or not whole seconds")
    port = container["ports"][0]
    if len(container["ports"]) != 1 or port.get("name", "") not in ("", "http1", "h2c"):
        problems.append("one port named '', http1 or h2c")
    if port["containerPort"] in KNATIVE_RESERVED_PORTS:
        problems.append("reserved port")
    if container["name"] == "queue-proxy":
        problems.append("reserved container name")
    if KNATIVE_RESERVED_ENV & {variable["name"] for variable in container["env"]}:
        problems.append("reserved environment variable")
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        probe_port = probe["httpGet"]["port"]
        if isinstance(probe_port, str) and probe_port != port.get("name"):
            problems.append(f"{probe_name}: probe port must match container port")
    readiness = container["readinessProbe"]
    if readiness.get("periodSeconds", 0) == 0 and {"failureThreshold", "timeoutSeconds"} & set(readiness):
        problems.append("failureThreshold/timeoutSeconds are disallowed when periodSeconds is zero")
    return problems


@pytest.mark.parametrize("kserve", [False, True], ids=["knative", "kserve"])
def test_the_webhook_checks_catch_what_knative_refuses(kserve: bool) -> None:
    documents = render_all(kserve=kserve)
    for mutate, problem in [
        (lambda d: container_of(d[0])["readinessProbe"].update(timeoutSeconds=1), "periodSeconds is zero"),
        (lambda d: container_of(d[0])["ports"][0].update(name="http"), "one port"),
        (lambda d: container_of(d[0])["ports"][0].update(containerPort=8012), "reserved port"),
        (lambda d: container_of(d[0])["env"].append({"name": "PORT", "value": "1"}), "reserved environment"),
        (lambda d: container_of(d[0])["livenessProbe"]["httpGet"].update(port="web"), "probe port"),
        (
            lambda d: autoscaling_of(d[-1]).update({"autoscaling.knative.dev/scale-down-delay": "2h"}),
            "scale-down-delay",
        ),
        (lambda d: scale_bounds(d[-1], min_scale=3), "max-scale is less than min-scale"),
    ]:
        broken = copy.deepcopy(documents)
        mutate(broken)
        assert any(problem in found for found in knative_webhook_violations(broken)), problem


def autoscaling_of(document: dict[str, Any]) -> dict[str, str]:
    """Where the Knative annotations that have no KServe field go."""
    if document["kind"] == "Service":
        return document["spec"]["template"]["metadata"]["annotations"]
    return document["metadata"]["annotations"]


def scale_bounds(document: dict[str, Any], *, min_scale: int) -> None:
    if document["kind"] == "Service":
        autoscaling_of(document)["autoscaling.knative.dev/min-scale"] = str(min_scale)
    else:
        document["spec"]["predictor"]["minReplicas"] = min_scale


def go_duration_seconds(text: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d*)?)(ns|us|ms|s|m|h)", text)
    return 0.0 if text == "0" else math.fsum(float(number) * units[unit] for number, unit in parts)


def test_the_vendored_schemas_are_the_ones_described_in_sources() -> None:
    sources = (SCHEMAS_DIR / "SOURCES.md").read_text()
    for name in SCHEMAS:
        section = sources.split(f"## {name}", 1)[1]
        expected = re.search(r"sha256 ([0-9a-f]{64})", section)
        assert expected is not None, name
        assert hashlib.sha256((SCHEMAS_DIR / name).read_bytes()).hexdigest() == expected.group(1), name


# --- YAML -----------------------------------------------------------------------------------------------


def test_yaml_round_trips_with_a_header_and_stable_order() -> None:
    documents = [
        render("cuda", secret_env={"BAKE_API_KEY": ("resnet-api", "key")}),
        *render_all("cpu", kserve=True),
    ]
    text = manifests_yaml(documents)
    assert list(yaml.safe_load_all(text)) == documents
    lines = text.splitlines()
    assert lines[0].startswith("# Written by bake ") and "kubectl apply -f" in lines[0]
    assert lines[1:4] == [
        "# serving.knative.dev/v1 Service default/resnet-50 serving microsoft/resnet-50",
        "# serving.kserve.io/v1alpha1 ServingRuntime default/resnet-50 serving microsoft/resnet-50",
        "# serving.kserve.io/v1beta1 InferenceService default/resnet-50 serving microsoft/resnet-50",
    ]
    assert text.count("\n---\n") == 3
    assert "&id" not in text and "*id" not in text  # shared objects are spelt out, not aliased
    assert text == manifests_yaml(copy.deepcopy(documents))
    first = yaml.safe_load_all(text).__next__()
    assert list(first) == ["apiVersion", "kind", "metadata", "spec"]
    assert "min-scale: '0'" in text  # annotation values stay strings


def test_write_manifests_creates_the_directory(tmp_path: Path) -> None:
    documents = [render()]
    path = write_manifests(tmp_path / "deploy" / "resnet-50.yaml", documents)
    assert path == tmp_path / "deploy" / "resnet-50.yaml"
    assert path.read_text() == manifests_yaml(documents)


# --- kubectl --------------------------------------------------------------------------------------------


def test_missing_kubectl_says_how_to_install_it(tmp_path: Path) -> None:
    path = write_manifests(tmp_path / "m.yaml", [render()])
    with pytest.raises(LaunchFailed, match="install kubectl") as error:
        apply_manifests(path, kubectl=str(tmp_path / "no-such-kubectl"))
    assert "\n" not in str(error.value)
    assert "no-such-kubectl" in str(error.value)


def fake_kubectl(directory: Path, *, stdout: str = "", stderr: str = "", code: int = 0) -> Path:
    """An executable that records its arguments in `directory`/args.json and answers like kubectl would."""
    script = directory / "kubectl"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(directory / 'args.json')!r}, 'w'))\n"
        f"sys.stdout.write({stdout!r})\nsys.stderr.write({stderr!r})\nsys.exit({code})\n"
    )
    script.chmod(0o755)
    return script


def test_apply_runs_kubectl_with_the_context_and_a_server_dry_run(tmp_path: Path) -> None:
    path = write_manifests(tmp_path / "m.yaml", [render()])
    report = "service.serving.knative.dev/resnet-50 created (server dry run)\n"
    kubectl = fake_kubectl(tmp_path, stdout=report, stderr="Warning: a deprecation\n")
    assert apply_manifests(path, kubectl=str(kubectl), context="lab", dry_run=True) == report
    arguments = json.loads((tmp_path / "args.json").read_text())
    assert arguments == ["apply", "--filename", str(path), "--context", "lab", "--dry-run=server"]
    apply_manifests(path, kubectl=str(kubectl))
    assert json.loads((tmp_path / "args.json").read_text()) == ["apply", "--filename", str(path)]


UNREACHABLE_STDERR = (
    'E1122 06:47:17.591743   29975 memcache.go:265] "Unhandled Error" err="couldn\'t get resource list"\n'
    "Warning: policy/v1beta1 PodSecurityPolicy is deprecated\n"
    'error: error validating "m.yaml": error validating data: failed to download openapi: Get '
    '"https://10.0.0.1:6443/openapi/v2?timeout=32s": dial tcp 10.0.0.1:6443: i/o timeout; if you choose '
    "to ignore these errors, turn validation off with --validate=false\n"
)
FORBIDDEN_STDERR = (
    'Error from server (Forbidden): error when creating "m.yaml": services.serving.knative.dev is '
    'forbidden: User "dev" cannot create resource "services" in API group "serving.knative.dev"\n'
)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (UNREACHABLE_STDERR, "kubectl cannot reach the cluster: dial tcp 10.0.0.1:6443: i/o timeout: check"),
        (FORBIDDEN_STDERR, "kubectl apply failed: Error from server (Forbidden): error when creating"),
        ("", "kubectl apply failed: kubectl printed no error message"),
    ],
    ids=["unreachable", "forbidden", "silent"],
)
def test_apply_failures_are_one_line_with_kubectl_s_reason(
    tmp_path: Path, stderr: str, expected: str
) -> None:
    path = write_manifests(tmp_path / "m.yaml", [render()])
    with pytest.raises(LaunchFailed) as error:
        apply_manifests(path, kubectl=str(fake_kubectl(tmp_path, stderr=stderr, code=1)))
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


def test_a_kubectl_that_cannot_run_says_so(tmp_path: Path) -> None:
    path = write_manifests(tmp_path / "m.yaml", [render()])
    not_executable = tmp_path / "kubectl"
    not_executable.write_text("")
    with pytest.raises(LaunchFailed, match="Permission denied.*install kubectl"):
        apply_manifests(path, kubectl=str(not_executable))


@pytest.fixture
def kube_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private kubectl cache; tests point KUBECONFIG at their own servers."""
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kube-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@needs_kubectl_1_27
@pytest.mark.parametrize("kserve", [False, True], ids=["knative", "kserve"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_kubectl_server_dry_run_sends_exactly_the_manifests(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch, kserve: bool, device: str
) -> None:
    documents = render_all(device, kserve=kserve, secret_env={"BAKE_API_KEY": ("resnet-api", "key")})
    path = write_manifests(kube_env / "resnet-50.yaml", documents)
    with KubeApiServer() as api:
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(kube_env / "config", {"fake": api.url}, "fake"))
        )
        output = apply_manifests(path, kubectl=KUBECTL, dry_run=True)
    if kserve:
        expected = [
            ("servingruntime.serving.kserve.io", "serving.kserve.io/v1alpha1", "servingruntimes"),
            ("inferenceservice.serving.kserve.io", "serving.kserve.io/v1beta1", "inferenceservices"),
        ]
    else:
        expected = [("service.serving.knative.dev", "serving.knative.dev/v1", "services")]
    assert output.strip().splitlines() == [
        f"{kind}/resnet-50 created (server dry run)" for kind, _, _ in expected
    ]
    created = api.created()
    assert [request.path for request in created] == [
        f"/apis/{group}/namespaces/default/{plural}" for _, group, plural in expected
    ]
    for request, document in zip(created, documents, strict=True):
        assert request.query["dryRun"] == "All"
        assert request.query["fieldValidation"] == "Strict"
        sent = copy.deepcopy(request.body)
        last_applied = sent["metadata"]["annotations"].pop("kubectl.kubernetes.io/last-applied-configuration")
        assert sent == document
        assert yaml.safe_load(last_applied) == document


@needs_kubectl
def test_kubectl_applies_for_real_in_the_given_context(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifests(kube_env / "m.yaml", [render()])
    with KubeApiServer() as api:
        contexts = {"dead": f"http://127.0.0.1:{closed_port()}", "lab": api.url}
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(kube_env / "config", contexts, "dead")))
        output = apply_manifests(path, kubectl=KUBECTL, context="lab")
    assert output.strip() == "service.serving.knative.dev/resnet-50 created"
    [created] = api.created()
    assert "dryRun" not in created.query


@needs_kubectl
def test_kubectl_reports_every_reason_the_server_refuses(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = render()
    service["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    container_of(service)["lifecycle"] = {"preStop": {}}
    path = write_manifests(kube_env / "m.yaml", [service])
    with KubeApiServer() as api:
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(kube_env / "config", {"fake": api.url}, "fake"))
        )
        with pytest.raises(LaunchFailed) as error:
            apply_manifests(path, kubectl=KUBECTL)
    message = str(error.value)
    assert message.startswith('kubectl apply failed: The Service "resnet-50" is invalid: ')
    assert "'terminationGracePeriodSeconds' was unexpected" in message
    assert "'lifecycle' was unexpected" in message
    assert "\n" not in message
    assert message.endswith(f"the manifests are in {path}")


@needs_kubectl
def test_kubectl_on_a_cluster_without_knative(kube_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_manifests(kube_env / "m.yaml", [render()])
    with KubeApiServer(resources=()) as api:
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(kube_env / "config", {"fake": api.url}, "fake"))
        )
        with pytest.raises(LaunchFailed, match="install Knative Serving") as error:
            apply_manifests(path, kubectl=KUBECTL)
    assert 'no matches for kind "Service" in version "serving.knative.dev/v1"' in str(error.value)


@needs_kubectl
def test_kubectl_reports_a_serving_runtime_the_server_refuses(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, isvc = render_all(kserve=True)
    runtime["spec"]["protocolVersions"] = ["V2"]
    path = write_manifests(kube_env / "m.yaml", [runtime, isvc])
    with KubeApiServer() as api:
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(kube_env / "config", {"fake": api.url}, "fake"))
        )
        with pytest.raises(LaunchFailed) as error:
            apply_manifests(path, kubectl=KUBECTL, dry_run=True)
    message = str(error.value)
    assert 'ServingRuntime "resnet-50" is invalid' in message
    assert "'V2' is not one of ['v1', 'v2', 'grpc-v1', 'grpc-v2']" in message
    assert "\n" not in message
    assert [request.path.rsplit("/", 1)[1] for request in api.created()] == [
        "servingruntimes",
        "inferenceservices",
    ]  # kubectl goes on with the next object, which the server accepts


@needs_kubectl
def test_kubectl_on_a_kserve_without_serving_runtimes(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifests(kube_env / "m.yaml", render_all(kserve=True))
    with KubeApiServer(resources=(KNATIVE, KSERVE)) as api:
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(kube_env / "config", {"fake": api.url}, "fake"))
        )
        with pytest.raises(LaunchFailed, match="does not know these resources.*KServe") as error:
            apply_manifests(path, kubectl=KUBECTL)
    assert 'no matches for kind "ServingRuntime" in version "serving.kserve.io/v1alpha1"' in str(error.value)


@needs_kubectl
def test_kubectl_against_a_dead_server_is_one_clear_line(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifests(kube_env / "m.yaml", [render()])
    url = f"https://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(kube_env / "config", {"prod": url}, "prod")))
    with pytest.raises(LaunchFailed, match="kubectl cannot reach the cluster") as error:
        apply_manifests(path, kubectl=KUBECTL, context="prod")
    message = str(error.value)
    assert "\n" not in message
    assert "refused" in message
    assert "context 'prod'" in message and "kubectl cluster-info" in message
    assert "--validate=false" not in message  # kubectl's hint would be the wrong advice here
    assert not re.search(r"[IWEF]\d{4} \d\d:", message)  # no client-go log lines


@needs_kubectl
def test_kubectl_without_credentials_does_not_wait_for_a_username(
    kube_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_manifests(kube_env / "m.yaml", [render()])
    url = f"https://127.0.0.1:{closed_port()}"
    config = write_kubeconfig(kube_env / "config", {"prod": url}, "prod", token=None)
    monkeypatch.setenv("KUBECONFIG", str(config))
    with pytest.raises(LaunchFailed, match="kubectl has no credentials for the cluster.*kubeconfig"):
        apply_manifests(path, kubectl=KUBECTL)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
