"""Hostile input on every route of every protocol (issue 13): the corpus of `tests/hostile/requests/`, and
property-based fuzzing from the server's own OpenAPI document.

Two real servers (`python -m serve`: a tiny image classifier, a tiny text-to-image pipeline) get every request
of the corpus: truncated, corrupt and bomb images of every format, absurd image headers, hostile JSON,
prompts, multipart forms, and HTTP-level attacks over raw sockets (request smuggling shapes, slow-loris
heads and bodies, oversized heads). Meanwhile valid requests of every protocol flow without pause. Then:

- every hostile request got its expected 4xx (the odd-but-valid images: 200, equal to transformers'
  pipeline), never a 5xx, always with a JSON body in its protocol's error shape;
- every valid request got the same answer as before the corpus;
- each server's resident memory is back within 5 % of what it was before the corpus.

schemathesis (its real CLI, `st run`) reads `/openapi.json` from the same two servers and generates requests
for every operation: examples from the schemas, their boundaries and violations (coverage phase), random valid
and invalid data (fuzzing) and chains of calls (stateful). At least 2000 cases in all; the run must find no
5xx and no answer the document does not describe (its status, content type, headers and body schema).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from transformers import pipeline

from serve.connection import HEADER_TIMEOUT_S
from serve.contract import routes
from tests.fixtures import images
from tests.fixtures.models import make_text_to_image_pipeline
from tests.fixtures.servers import ServerProcess
from tests.hostile import payloads
from tests.hostile.corpus import Answer, Case, error_message, load_cases, parse_json, send

pytestmark = pytest.mark.slow

CASES = load_cases()
TIMEOUT_S = 8
"""The servers' request deadline: a trickled or stalled body is answered 408 after it."""
MEMORY_TOLERANCE = 0.05
PHOTO = images.photo(120, 90, seed=11)
PHOTO_B64 = base64.b64encode(PHOTO).decode()
SERVER_ENV = {
    "BAKE_MAX_BATCH_SIZE": "4",
    "BAKE_MAX_WAIT_MS": "5",
    "BAKE_MAX_BODY_BYTES": str(4 * 2**20),
    "BAKE_TIMEOUT_S": str(TIMEOUT_S),
    "BAKE_WORKERS": "2",
    "BAKE_CPU_THREADS": "1",
    "BAKE_MAX_STEPS": "3",
    "BAKE_MAX_IMAGE_AREA": "4096",
    # Cog webhooks the fuzzer makes up may only go to this machine (where nothing listens).
    "BAKE_WEBHOOK_HOSTS": "127.0.0.1",
}
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MIN_FUZZ_CASES = 2000


@dataclass
class Served:
    url: str
    server: ServerProcess
    model_dir: Path
    name: str

    def rss(self) -> int:
        assert self.server.process is not None
        return psutil.Process(self.server.process.pid).memory_info().rss


@pytest.fixture(scope="module")
def classifier(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile-classifier")
    env = {**SERVER_ENV, "BAKE_MODEL": str(tiny_models["resnet"]), "BAKE_MODEL_NAME": "resnet"}
    with ServerProcess(env, root / "server.log") as server:
        yield Served(server.url, server, tiny_models["resnet"], "resnet")


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile-generator")
    model = make_text_to_image_pipeline(root / "tiny-sd")
    env = {**SERVER_ENV, "BAKE_MODEL": str(model), "BAKE_MODEL_NAME": "tiny-sd"}
    with ServerProcess(env, root / "server.log") as server:
        yield Served(server.url, server, model, "tiny-sd")


# ---- valid traffic that keeps flowing while the corpus is sent ----

Probe = Callable[[], Any]


def classifier_probes(url: str) -> dict[str, Probe]:
    """One valid request per protocol; each returns what must stay the same (labels and rounded scores)."""

    def labels(items: list[dict[str, Any]]) -> list[tuple[str, float]]:
        return [(item["label"], item["score"]) for item in items]

    def oip() -> Any:
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [PHOTO_B64]}
        body = httpx.post(url + "/v2/models/resnet/infer", json={"inputs": [tensor]}, timeout=30).json()
        outputs = {output["name"]: output["data"] for output in body["outputs"]}
        return list(zip(outputs["label"], outputs["score"]))

    return {
        "hf raw": lambda: labels(httpx.post(url + "/predict", content=PHOTO, timeout=30).json()),
        "hf json": lambda: labels(httpx.post(url + "/", json={"inputs": PHOTO_B64}, timeout=30).json()),
        "cog": lambda: labels(
            httpx.post(url + "/predictions", json={"input": {"image": PHOTO_B64}}, timeout=30).json()[
                "output"
            ]
        ),
        "oip": oip,
    }


def generator_probes(url: str) -> dict[str, Probe]:
    """A seeded prompt over the Hugging Face and OpenAI routes; each returns the image's pixels."""
    parameters = {"width": 32, "height": 32, "num_inference_steps": 2, "seed": 7}

    def pixels(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    def openai() -> np.ndarray:
        body = {"prompt": "a red fox", "size": "32x32", "num_inference_steps": 2, "seed": 7}
        answer = httpx.post(url + "/v1/images/generations", json=body, timeout=60).json()
        return pixels(base64.b64decode(answer["data"][0]["b64_json"]))

    return {
        "hf": lambda: pixels(
            httpx.post(
                url + "/predict", json={"inputs": "a red fox", "parameters": parameters}, timeout=60
            ).content
        ),
        "openai": openai,
    }


def same(expected: Any, actual: Any) -> bool:
    """Equal images (within 2 levels: batching may round differently) or labels (scores within 1e-3)."""
    if isinstance(expected, np.ndarray):
        return expected.shape == actual.shape and float(np.abs(expected - actual).max()) <= 2
    return [label for label, _ in expected] == [label for label, _ in actual] and all(
        abs(want - got) <= 1e-3 for (_, want), (_, got) in zip(expected, actual)
    )


@dataclass
class Traffic:
    """Valid requests of every protocol, sent in turn from a thread, each answer compared with the first."""

    probes: dict[str, Probe]
    references: dict[str, Any] = field(default_factory=dict)
    answered: int = 0
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.references = {name: probe() for name, probe in self.probes.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, probe in self.probes.items():
                try:
                    answer = probe()
                except Exception as error:  # any failure of a valid request is what this records
                    self.failures.append(f"{name}: {type(error).__name__}: {error}")
                    continue
                self.answered += 1
                if not same(self.references[name], answer):
                    self.failures.append(f"{name}: the answer changed")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


# ---- fuzzing from the OpenAPI document ----


def fuzz(served: Served, tmp_path: Path, max_examples: int) -> dict:
    """Run `st run` against the server's OpenAPI document; return its JSON report."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "schemathesis.toml"
    # Path parameters naming the model get its name (other names are 404s: the corpus has them).
    config.write_text(f'[parameters]\n"path.model_name" = "{served.name}"\n"path.model_version" = "1"\n')
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(config),
            "run",
            served.url + "/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(max_examples),
            "--seed",
            "13",
            "--workers",
            "1",  # CPython 3.11 can fail parsing hypothesis' lambdas from several threads at once
            "--request-timeout",
            "60",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert report.is_file(), result.stdout[-5000:] + result.stderr[-3000:]
    document = json.loads(report.read_text())
    assert document["exit_code"] == 0 and not document["failures"] and not document["errors"], result.stdout[
        -8000:
    ]
    return document


def test_every_route_fuzzed_from_the_openapi_document_answers_as_documented(
    classifier: Served, generator: Served, tmp_path: Path
) -> None:
    reports = [
        fuzz(classifier, tmp_path / "classifier", max_examples=35),
        fuzz(generator, tmp_path / "generator", max_examples=25),
    ]
    for report in reports:
        operations = report["operations"]
        assert operations["tested"] == operations["total"] >= 20, operations
        assert report["test_cases"]["errored"] == 0 and report["test_cases"]["with_failures"] == 0
    generated = sum(report["test_cases"]["generated"] for report in reports)
    print(f"schemathesis: {generated} cases, no failure")
    assert generated >= MIN_FUZZ_CASES, f"only {generated} cases were generated"


# ---- the corpus ----


def test_the_corpus_covers_every_protocol_and_every_attack() -> None:
    assert len(CASES) >= 60
    paths = {case.path.split("?")[0] for case in CASES if case.raw is None}
    for path in (routes.PREDICT, routes.ROOT, routes.COG_PREDICTIONS, routes.OPENAI_IMAGES, routes.METRICS):
        assert path in paths, path
    assert any(path.startswith("/v2/models/") and path.endswith("/infer") for path in paths)
    used = {case.payload for case in CASES}
    assert set(payloads.PAYLOADS) <= used, f"payloads no case sends: {set(payloads.PAYLOADS) - used}"
    raw = [case for case in CASES if case.raw is not None]
    assert len(raw) >= 15 and any(case.trickle for case in raw)
    for case in CASES:
        assert case.why and case.expect and case.server in ("classifier", "generator"), case.name
        assert all(400 <= status < 500 for status in case.expect) or case.check == "pipeline", case.name


def test_hostile_requests_get_4xx_json_while_valid_ones_stay_correct_and_memory_returns(
    classifier: Served, generator: Served
) -> None:
    servers = {"classifier": classifier, "generator": generator}
    reference = pipeline("image-classification", model=str(classifier.model_dir))
    with (
        Traffic(classifier_probes(classifier.url)) as warm,
        Traffic(generator_probes(generator.url)) as warm2,
    ):
        time.sleep(3)  # every code path of the valid requests has run a few times: the memory baseline
    assert not warm.failures and not warm2.failures
    baseline = {name: served.rss() for name, served in servers.items()}

    failures: list[str] = []
    with (
        Traffic(classifier_probes(classifier.url)) as classifier_traffic,
        Traffic(generator_probes(generator.url)) as generator_traffic,
        ThreadPoolExecutor(8) as slow_pool,
    ):
        slow = {
            case.name: slow_pool.submit(send, case, servers[case.server].url) for case in CASES if case.slow
        }
        for case in CASES:
            if not case.slow:
                failures += check(case, send(case, servers[case.server].url), reference)
        for case in CASES:
            if case.slow:
                answer = slow[case.name].result()
                failures += check(case, answer, reference)
                if case.trickle is not None:
                    limit = (HEADER_TIMEOUT_S if "headers" in (case.error or "") else TIMEOUT_S) + 5
                    if answer.seconds > limit:
                        failures.append(
                            f"{case.name}: answered after {answer.seconds:.1f} s, not within {limit} s"
                        )
    assert not failures, "\n".join(failures)
    for traffic in (classifier_traffic, generator_traffic):
        assert not traffic.failures, traffic.failures[:10]
        assert traffic.answered >= 2 * len(traffic.probes), "valid requests must keep flowing"

    for name, served in servers.items():
        assert httpx.get(served.url + "/ready").status_code == 200
        assert "Traceback" not in served.server.log(), served.server.log()[-3000:]
        after = settled_rss(served, baseline[name])
        assert after <= baseline[name] * (1 + MEMORY_TOLERANCE), (
            f"{name}: RSS {after / 2**20:.0f} MiB after the corpus, {baseline[name] / 2**20:.0f} MiB before"
        )


def settled_rss(served: Served, baseline: int, wait_s: float = 20.0) -> int:
    """The server's RSS once it is back within the tolerance of `baseline`, or after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        rss = served.rss()
        if rss <= baseline * (1 + MEMORY_TOLERANCE) or time.monotonic() > deadline:
            return rss
        time.sleep(1)


def check(case: Case, answer: Answer, reference: Callable[..., Any]) -> list[str]:
    """What is wrong with `answer` to `case` (nothing: an empty list)."""
    statuses = [status for status, _, _ in answer.responses]
    if statuses != case.expect:
        bodies = [body[:200] for _, _, body in answer.responses]
        return [f"{case.name}: got {statuses} {bodies}, expected {case.expect} ({case.why})"]
    problems = []
    for status, headers, body in answer.responses:
        document = parse_json(body)
        if not headers.get("content-type", "").startswith("application/json") or document is None:
            problems.append(f"{case.name}: the {status} answer is not JSON: {body[:200]!r}")
            continue
        if status == 200 and case.check == "pipeline":
            image = Image.open(io.BytesIO(payloads.get(case.payload or "")))
            expected = [(item["label"], item["score"]) for item in reference(image, top_k=5)]
            if not same(expected, [(item["label"], item["score"]) for item in document]):
                problems.append(f"{case.name}: {document} differs from the pipeline's {expected}")
            continue
        message = error_message(document)
        if message is None:
            problems.append(f"{case.name}: no error message in {json.dumps(document)[:200]}")
        elif case.error and case.error.lower() not in message.lower():
            problems.append(f"{case.name}: {case.error!r} is not in the error {message[:300]!r}")
    return problems
