"""The `kubernetes` target: a Knative Service (or a KServe InferenceService) for the image, applied with
kubectl.

This is the path for GPU fleets larger than one machine. Everything is derived from what the image says about
itself (`bake.labels.ImageFacts`), with the same reasoning as the Fly target (`fly.spec`):

- Scale to zero: Knative's own autoscaler (class `kpa.autoscaling.knative.dev`, the one that can reach zero)
  scales on in-flight requests, with `min-scale` 0 by default and a `scale-down-delay` before the last pod
  goes. While no pod runs, Knative's activator holds the requests and starts one.
- Concurrency, counted in requests: soft target = one full batch (`BAKE_MAX_BATCH_SIZE`) at 100% target
  utilization, hard `containerConcurrency` = batch + queue bound (see `_concurrency`).
- Time: `timeoutSeconds` = the longer of the request deadline (`BAKE_TIMEOUT_S`) and the drain
  (`BAKE_DRAIN_TIMEOUT_S`) + 10 s (see `_timeout_seconds`).
- Memory: requested and limited to the Fly estimate, 2 x the weights + 1 GiB (`fly.spec.estimated_memory_mb`).
  One CPU requested and no CPU limit: torch sizes its thread pools from the node's cores, and a CFS quota
  below that throttles every forward pass.
- GPU: a CUDA image gets an `nvidia.com/gpu: 1` limit, nothing else. No toleration or nodeSelector: GPU
  taints differ per cluster (GKE and clusters with the ExtendedResourceToleration admission plugin add the
  toleration for pods that ask for `nvidia.com/gpu` themselves), and Knative refuses both fields unless the
  operator enabled `kubernetes.podspec-tolerations` / `kubernetes.podspec-nodeselector`.
- Probes: readiness `GET /ready` (warmed up) with no period, which makes Knative's queue-proxy probe it
  aggressively so a cold start is routed the moment warm-up ends (Knative then forbids `timeoutSeconds` and
  `failureThreshold` on it); liveness `GET /health`, which answers while the model loads (it loads on a
  worker thread), so it needs no warm-up allowance.
- Idle: `BAKE_IDLE_TIMEOUT_S=0` in the container. Scaling to zero is Knative's job; a container that exits
  by itself, even with status 0, is restarted by the kubelet and ends in CrashLoopBackOff.
- Secrets (`BAKE_API_KEY`, ...) come from Kubernetes Secrets through `secretKeyRef`, never inline.
- Model name: `BAKE_MODEL_NAME` is the Service's (or InferenceService's) name, so the Open Inference Protocol
  route `/v2/models/<name>/infer` is the one KServe builds for that InferenceService.

With `--kserve` there are two objects, in the order they must be applied:

- A ServingRuntime of the same name, `serving.kserve.io/v1alpha1`, that holds the container above (named
  `kserve-container`, the one KServe's runtime merge looks for), lists one model format, `bake` (no
  `autoSelect`: only an InferenceService that names this runtime uses it), and `protocolVersions: [v2]`.
- The InferenceService, whose predictor is a `model` with `modelFormat: {name: bake}`, `runtime: <name>` and
  `protocolVersion: v2`, and no `storageUri` (the weights are in the image, so no storage initializer runs).
  A custom `containers:` predictor has no protocol field; `v2` here is what KServe's transformer (the
  predictor protocol it passes on) and InferenceGraph (a step's URL, `/v2/models/<name>/infer`) go by.
  The scaling fields stay on the predictor.

KServe re-reconciles an InferenceService when its ServingRuntime's spec changes (since v0.16, the version
that also names the Knative mode `Knative`), so a new image rolls out by applying both again. KServe reads
the runtime's container as a Go template (`{{.Name}}` and the like), so `env` values with `{{` are refused.

Field names follow Knative Serving's `serving.knative.dev/v1` API and its webhook's rules
(knative/serving pkg/apis/serving/k8s_validation.go, pkg/apis/autoscaling/annotation_validation.go) and
KServe's API (kserve/kserve pkg/apis/serving/v1beta1/component.go, predictor_model.go,
pkg/apis/serving/v1alpha1/servingruntime_types.go).
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bake import __version__
from bake.errors import ConfigError, LaunchFailed
from bake.labels import ImageFacts
from bake.launch.names import DNS_1035_LABEL, KSERVE_PREDICTOR_SUFFIX
from fly.spec import Concurrency, estimated_memory_mb
from serve.contract import routes
from serve.contract.errors import require
from serve.contract.settings import API_KEY_ENV, OFFLINE_ENV, env_name

KNATIVE_API_VERSION = "serving.knative.dev/v1"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
KSERVE_RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
KSERVE_PROTOCOL = "v2"
"""KServe's name for the Open Inference Protocol over REST (pkg/constants `ProtocolV2`)."""
KSERVE_MODEL_FORMAT = "bake"
"""The one model format bake's ServingRuntimes support: a bake image, weights included."""
ANNOTATION_PREFIX = "bake.dev/"
"""Where bake's own annotations live (the Kubernetes form of the images' `dev.bake.` labels)."""
AUTOSCALING = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
KSERVE_DEPLOYMENT_MODE = "Knative"
"""KServe's name (since v0.16) for its Knative mode, the only one that scales to zero; KServe's default is now
`Standard` (plain Deployments). KServe before v0.16 calls it `Serverless` and compares this annotation with
the mode it recorded, so re-applying there needs the annotation changed to `Serverless`."""
KNATIVE_CONTAINER = "user-container"
"""Knative's default name for the serving container."""
KSERVE_CONTAINER = "kserve-container"
"""The container KServe takes from a ServingRuntime (pkg/constants `InferenceServiceContainerName`)."""
PORT_NAME = "http1"
"""Knative accepts only "http1" or "h2c" (or no name) for the serving port; the server speaks HTTP/1.1."""
KNATIVE_RESERVED_PORTS = frozenset({8008, 8012, 8013, 8022, 9090, 9091})
"""Ports the queue-proxy sidecar listens on (profiling, HTTP/1, HTTP/2, admin, autoscaler and user
metrics)."""
KNATIVE_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
"""Variables Knative sets itself; PORT is the container port, which is the image's port."""
IDLE_ENV = env_name("idle_timeout_s")
MODEL_NAME_ENV = env_name("model_name")
TARGET_UTILIZATION_PERCENT = 100
TIMEOUT_MARGIN_S = 10
SCALE_DOWN_DELAY_MAX_S = 3600
"""Knative refuses a scale-down delay longer than its longest window, 1 h."""
CPU_REQUEST = "1"
GPU_RESOURCE = "nvidia.com/gpu"
LIVENESS = {"initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
"""A minute without an answer from /health before the kubelet restarts the container."""
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The "restricted" Pod Security profile; the image runs as uid 10001 and needs no capability."""
APPLY_TIMEOUT_S = 300

_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SECRET_SUFFIXES = ("_TOKEN", "_PASSWORD", "_SECRET", "_API_KEY")
_KLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+\] ")
_UNREACHABLE = (
    "Unable to connect to the server",
    "The connection to the server",
    "connection refused",
    "dial tcp",
    "no such host",
    "i/o timeout",
    "failed to download openapi",
)


@dataclass(frozen=True)
class KubernetesOptions:
    """How to run the image on a cluster; every value is checked here and a bad one raises `ConfigError`."""

    name: str
    """The Service's (or InferenceService's and its ServingRuntime's) name, and the model's name in the Open
    Inference Protocol: a DNS-1035 label, which is what Kubernetes requires of the Service objects Knative
    creates under that name."""
    namespace: str = "default"
    kserve: bool = False
    """Write a KServe ServingRuntime and InferenceService instead of a Knative Service."""
    min_scale: int = 0
    max_scale: int = 1
    scale_down_delay: str = "5m"
    """How long traffic must stay low before Knative removes a pod (the last one included): a Go duration
    between 0s and 1h, in whole seconds."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra runtime environment; it overrides the image's own. Secrets do not belong here."""
    secret_env: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Variable -> (Secret name, key), e.g. {"BAKE_API_KEY": ("resnet-api", "key")}."""

    def __post_init__(self) -> None:
        require(
            ConfigError,
            len(self.name) <= 63 and DNS_1035_LABEL.match(self.name) is not None,
            f"invalid Kubernetes name {self.name!r}",
            "use at most 63 lowercase letters, digits and dashes, starting with a letter and ending with a "
            "letter or digit",
        )
        require(
            ConfigError,
            not self.kserve or len(self.name + KSERVE_PREDICTOR_SUFFIX) <= 63,
            f"the name {self.name!r} is too long for KServe, which adds {KSERVE_PREDICTOR_SUFFIX!r} to it",
            f"use at most {63 - len(KSERVE_PREDICTOR_SUFFIX)} characters",
        )
        require(
            ConfigError,
            len(self.namespace) <= 63 and _DNS_1123_LABEL.match(self.namespace) is not None,
            f"invalid namespace {self.namespace!r}",
            "use at most 63 lowercase letters, digits and dashes, starting and ending with a letter or digit",
        )
        require(
            ConfigError,
            self.min_scale >= 0,
            f"min_scale is {self.min_scale}",
            "use 0 (scale to zero) or more",
        )
        require(
            ConfigError,
            self.max_scale >= max(1, self.min_scale),
            f"max_scale is {self.max_scale} (min_scale {self.min_scale})",
            "use at least 1 and at least min_scale",
        )
        delay = _duration_seconds(self.scale_down_delay)
        require(
            ConfigError,
            delay is not None and 0 <= delay <= SCALE_DOWN_DELAY_MAX_S and delay == round(delay),
            f"invalid scale_down_delay {self.scale_down_delay!r}",
            "use a duration of whole seconds between 0s and 1h, such as 90s, 5m or 1h",
        )
        for name, value in self.env.items():
            _check_env_name(name)
            require(
                ConfigError,
                not _looks_secret(name),
                f"{name} would be written into the manifest in clear",
                f"store it in a Secret (kubectl create secret generic NAME --from-literal=KEY=...) and pass "
                f"{name} as secret_env",
            )
            if name == IDLE_ENV:
                require(
                    ConfigError,
                    _is_zero(value),
                    f"{IDLE_ENV}={value} would make the container exit when idle, which Kubernetes restarts "
                    f"as a crash",
                    "leave it out: Knative scales idle services to zero (scale_down_delay)",
                )
            if name in OFFLINE_ENV:
                require(
                    ConfigError,
                    value == OFFLINE_ENV[name],
                    f"env sets {name}={value!r}",
                    f"leave {name} out: a bake image always runs with {name}={OFFLINE_ENV[name]}",
                )
            if self.kserve:
                require(
                    ConfigError,
                    name != MODEL_NAME_ENV or value == self.name,
                    f"env sets {MODEL_NAME_ENV}={value!r}, but KServe sends requests to "
                    f"/v2/models/{self.name}/infer, after the InferenceService's name",
                    f"leave {MODEL_NAME_ENV} out: the manifests set it to {self.name!r}",
                )
                require(
                    ConfigError,
                    "{{" not in value,
                    f"env gives {name} a value with '{{{{', which KServe reads as a Go template in the "
                    f"ServingRuntime's container",
                    "leave the braces out",
                )
        for name, (secret, key) in self.secret_env.items():
            _check_env_name(name)
            require(
                ConfigError,
                name not in (IDLE_ENV, MODEL_NAME_ENV),
                f"{name} is no secret: the manifests set it themselves",
                f"leave {name} out of secret_env",
            )
            require(
                ConfigError,
                name not in self.env,
                f"{name} is in both env and secret_env",
                "give it only once",
            )
            require(
                ConfigError,
                len(secret) <= 253 and _DNS_1123_SUBDOMAIN.match(secret) is not None,
                f"invalid Secret name {secret!r} for {name}",
                "use the name of a Secret in the same namespace (lowercase letters, digits, '-' and '.')",
            )
            require(
                ConfigError,
                _SECRET_KEY.match(key) is not None,
                f"invalid Secret key {key!r} for {name}",
                "use a key of the Secret (letters, digits, '-', '_' and '.')",
            )


def _concurrency(facts: ImageFacts) -> Concurrency:
    """The per-pod request limits, the Knative form of `fly.spec.concurrency_limits`.

    Target (soft) = `BAKE_MAX_BATCH_SIZE`: a pod with a full batch in flight runs at its best throughput, so
    the autoscaler adds pods when the average pod has more than one batch in flight (target utilization is
    set to 100%: Knative's default 70% would start another GPU pod before the first one's batches are full).
    `containerConcurrency` (hard) = `BAKE_MAX_BATCH_SIZE + BAKE_MAX_QUEUE`: the server holds one batch on
    the device and `BAKE_MAX_QUEUE` requests waiting, and answers 503 to the next one; with this limit
    Knative's queue-proxy and activator buffer the excess (and the autoscaler sees it) instead.
    """
    batch, queue = facts.serve.max_batch_size, facts.serve.max_queue
    return Concurrency(soft_limit=batch, hard_limit=batch + queue)


def _timeout_seconds(facts: ImageFacts) -> int:
    """The revision's `timeoutSeconds`: max(`BAKE_TIMEOUT_S`, `BAKE_DRAIN_TIMEOUT_S`) + 10 s.

    Longer than the server's own deadline, so a slow request gets the server's 504 (JSON, with the reason)
    rather than the proxy's. Knative also uses this value as the pod's `terminationGracePeriodSeconds` (and
    refuses that field in the Service), so it must cover the drain after SIGTERM as well.
    """
    longest = max(facts.serve.timeout_s, facts.serve.drain_timeout_s)
    return math.ceil(longest) + TIMEOUT_MARGIN_S


def render_manifests(facts: ImageFacts, image: str, options: KubernetesOptions) -> list[dict]:
    """The objects that run `image` (built by bake, described by `facts`) on a Knative or KServe cluster, in
    the order to apply them."""
    if not image.strip():
        raise ConfigError("the image reference is empty", "pass the image bake built, pushed to a registry")
    if facts.device not in ("cpu", "cuda"):
        raise ConfigError(
            f"the image's device {facts.device!r} is neither cpu nor cuda", "rebuild it with bake"
        )
    if facts.port in KNATIVE_RESERVED_PORTS:
        raise ConfigError(
            f"the image listens on port {facts.port}, which Knative's queue-proxy uses",
            "rebuild the image with another --port, such as 8080",
        )
    metadata = {
        "name": options.name,
        "namespace": options.namespace,
        "labels": _labels(options),
        "annotations": {
            ANNOTATION_PREFIX + "model": facts.model,
            ANNOTATION_PREFIX + "revision": facts.revision,
            ANNOTATION_PREFIX + "commit-sha": facts.commit_sha,
            ANNOTATION_PREFIX + "task": facts.task,
            ANNOTATION_PREFIX + "version": __version__,
        },
    }
    if options.kserve:
        return [
            _serving_runtime(copy.deepcopy(metadata), facts, image, options),
            _inference_service(metadata, facts, options),
        ]
    return [_knative_service(metadata, facts, image, options)]


def _knative_service(
    metadata: dict[str, Any], facts: ImageFacts, image: str, options: KubernetesOptions
) -> dict:
    limits = _concurrency(facts)
    autoscaling = {
        AUTOSCALING + "class": KPA_CLASS,
        AUTOSCALING + "metric": "concurrency",
        AUTOSCALING + "target": str(limits.soft_limit),
        AUTOSCALING + "min-scale": str(options.min_scale),
        AUTOSCALING + "max-scale": str(options.max_scale),
        **_autoscaling_extras(options),
    }
    revision = {
        "containerConcurrency": limits.hard_limit,
        "timeoutSeconds": _timeout_seconds(facts),
        "containers": [_container(KNATIVE_CONTAINER, facts, image, options)],
    }
    return {
        "apiVersion": KNATIVE_API_VERSION,
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "template": {
                "metadata": {"labels": _labels(options), "annotations": autoscaling},
                "spec": revision,
            }
        },
    }


def _serving_runtime(
    metadata: dict[str, Any], facts: ImageFacts, image: str, options: KubernetesOptions
) -> dict:
    """The runtime the InferenceService names: the container, the `bake` model format and protocol v2."""
    return {
        "apiVersion": KSERVE_RUNTIME_API_VERSION,
        "kind": "ServingRuntime",
        "metadata": metadata,
        "spec": {
            "supportedModelFormats": [{"name": KSERVE_MODEL_FORMAT}],
            "protocolVersions": [KSERVE_PROTOCOL],
            "containers": [_container(KSERVE_CONTAINER, facts, image, options)],
        },
    }


def _inference_service(metadata: dict[str, Any], facts: ImageFacts, options: KubernetesOptions) -> dict:
    """A predictor that runs the model on the ServingRuntime of the same name, speaking protocol v2. KServe
    turns the scaling fields into the Knative annotations, and copies the InferenceService's own annotations
    (the ones it has no field for) onto the revision."""
    limits = _concurrency(facts)
    metadata["annotations"].update(
        {"serving.kserve.io/deploymentMode": KSERVE_DEPLOYMENT_MODE, **_autoscaling_extras(options)}
    )
    predictor = {
        "model": {
            "modelFormat": {"name": KSERVE_MODEL_FORMAT},
            "runtime": options.name,
            "protocolVersion": KSERVE_PROTOCOL,
        },
        "minReplicas": options.min_scale,
        "maxReplicas": options.max_scale,
        "scaleMetric": "concurrency",
        "scaleTarget": limits.soft_limit,
        "containerConcurrency": limits.hard_limit,
        "timeout": _timeout_seconds(facts),
    }
    return {
        "apiVersion": KSERVE_API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


def _autoscaling_extras(options: KubernetesOptions) -> dict[str, str]:
    """Annotations with no KServe field: the scale-down delay, and the soft target used up to 100%."""
    return {
        AUTOSCALING + "target-utilization-percentage": str(TARGET_UTILIZATION_PERCENT),
        AUTOSCALING + "scale-down-delay": options.scale_down_delay,
    }


def manifests_yaml(documents: list[dict]) -> str:
    """`documents` as multi-document YAML, keys in the order they were built, after a header comment."""
    header = [f"# Written by bake {__version__}; apply with: kubectl apply -f <this file>"]
    for document in documents:
        metadata = document["metadata"]
        model = metadata.get("annotations", {}).get(ANNOTATION_PREFIX + "model")
        served = f" serving {model}" if model else ""
        header.append(
            f"# {document['apiVersion']} {document['kind']} "
            f"{metadata['namespace']}/{metadata['name']}{served}"
        )
    body = yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=4096, allow_unicode=True
    )
    return "\n".join(header) + "\n" + body


def write_manifests(path: Path, documents: list[dict]) -> Path:
    """Write `documents` to `path` as YAML (creating its directory) and return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifests_yaml(documents))
    return path


def apply_manifests(
    path: Path, *, kubectl: str = "kubectl", context: str | None = None, dry_run: bool = False
) -> str:
    """`kubectl apply -f path` and kubectl's report; raises `LaunchFailed` with kubectl's reason.

    With `dry_run`, the objects go to the cluster with `--dry-run=server`: the API server and the Knative or
    KServe admission webhooks check them in full, and nothing is stored.
    """
    command = [kubectl, "apply", "--filename", str(path)]
    if context:
        command += ["--context", context]
    if dry_run:
        command.append("--dry-run=server")
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=APPLY_TIMEOUT_S,
            check=False,
        )
    except OSError as error:
        raise LaunchFailed(
            f"cannot run {kubectl!r}: {error.strerror or error}",
            "install kubectl (https://kubernetes.io/docs/tasks/tools/) or pass the path to it",
        ) from error
    except subprocess.TimeoutExpired as error:
        raise LaunchFailed(
            f"kubectl apply did not finish in {APPLY_TIMEOUT_S} s",
            "check that the cluster answers: kubectl cluster-info",
        ) from error
    if result.returncode != 0:
        raise _apply_failure(_kubectl_error(result.stderr or result.stdout), path, context)
    return result.stdout


def _container(name: str, facts: ImageFacts, image: str, options: KubernetesOptions) -> dict[str, Any]:
    memory = f"{estimated_memory_mb(facts.weights_bytes)}Mi"
    limits: dict[str, Any] = {"memory": memory}
    if facts.device == "cuda":
        limits[GPU_RESOURCE] = 1
    fixed = {IDLE_ENV: "0", MODEL_NAME_ENV: options.env.get(MODEL_NAME_ENV, options.name)}
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in fixed.items()]
    env += [{"name": key, "value": value} for key, value in sorted(options.env.items()) if key not in fixed]
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": secret_key}}}
        for key, (secret, secret_key) in sorted(options.secret_env.items())
    ]
    return {
        "name": name,
        "image": image,
        "ports": [{"name": PORT_NAME, "containerPort": facts.port}],
        "env": env,
        "resources": {"requests": {"cpu": CPU_REQUEST, "memory": memory}, "limits": limits},
        "readinessProbe": {"httpGet": {"path": routes.READY, "port": facts.port}},
        "livenessProbe": {"httpGet": {"path": routes.HEALTH, "port": facts.port}, **LIVENESS},
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML that spells every value out (no `&anchor`/`*alias`, which some tools reject)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _labels(options: KubernetesOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.name, "app.kubernetes.io/managed-by": "bake"}


def _duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration ("90s", "1m30s", "0"), or None when it is not one."""
    if text == "0":
        return 0.0
    if _DURATION.match(text) is None:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))


def _check_env_name(name: str) -> None:
    require(
        ConfigError,
        _ENV_NAME.match(name) is not None,
        f"invalid environment variable name {name!r}",
        "use letters, digits and underscores, not starting with a digit",
    )
    require(
        ConfigError,
        name not in KNATIVE_RESERVED_ENV,
        f"{name} is set by Knative itself",
        "leave it out (PORT is the image's port; rebuild with --port to change it)",
    )


def _looks_secret(name: str) -> bool:
    return name == API_KEY_ENV or name.endswith(_SECRET_SUFFIXES)


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


def _kubectl_error(output: str) -> str:
    """kubectl's error on one line: its first meaningful line (no client-go log lines, server warnings or hint
    to turn validation off), followed by the `* field: reason` lines it lists for an invalid object."""
    lines = [line.strip() for line in output.splitlines()]
    for index, line in enumerate(lines):
        if not line or _KLOG_LINE.match(line) or line.startswith("Warning:"):
            continue
        causes = []
        for cause in lines[index + 1 :]:
            if not cause.startswith("* "):
                break
            causes.append(cause.removeprefix("* "))
        line = line.split("; if you choose to ignore these errors", 1)[0].removeprefix("error: ")
        return " ".join([line, "; ".join(causes)]) if causes else line
    return "kubectl printed no error message"


def _apply_failure(reason: str, path: Path, context: str | None) -> LaunchFailed:
    if reason == "EOF":  # kubectl found no credentials and tried to prompt for a username
        return LaunchFailed(
            "kubectl has no credentials for the cluster",
            "add them to the context in your kubeconfig (kubectl config view --minify shows it)",
        )
    if "no matches for kind" in reason or "ensure CRDs are installed" in reason:
        return LaunchFailed(
            f"the cluster does not know these resources: {reason}",
            "install Knative Serving (https://knative.dev/docs/install/) for a Knative Service, or KServe "
            "(https://kserve.github.io/website/) for --kserve",
        )
    if any(marker in reason for marker in _UNREACHABLE):
        reason = reason[reason.find("dial tcp") :] if "dial tcp" in reason else reason
        which = f"context {context!r}" if context else "the current context (kubectl config current-context)"
        return LaunchFailed(
            f"kubectl cannot reach the cluster: {reason}",
            f"check {which} and that its API server answers: kubectl cluster-info",
        )
    return LaunchFailed(
        f"kubectl apply failed: {reason}", f"fix what it reports; the manifests are in {path}"
    )
