"""The forward pass compiled at build time (serve.compile) and served with torch alone (serve.compiled).

The compiler runs from a directory holding only `COMPILER_FILES` (as in the image's compile stage); the
runtime starts from its output in a fresh process without importing transformers and answers like
transformers' pipeline; models that cannot be compiled, and archives made for something else, fall back to
loading with transformers and say why.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    pipeline,
)

from serve.compile import (
    BATCH_TOLERANCE,
    TOLERANCE,
    NotCompilable,
    batch_difference,
    compile_classifier,
    run,
    score_difference,
)
from serve.contract.compiled import (
    ARCHIVE_FILE,
    COMPILER_FILES,
    MANIFEST_FILE,
    TORCHSCRIPT,
    Manifest,
    Report,
    Rewrite,
)
from serve.contract.settings import Settings
from serve.device import choose_placement
from serve.model_source import locate_model
from serve.tasks.image_classification import ClassificationParameters, ImageClassification
from serve.tracing import TracedForward, load_frozen
from serve.transforms import build_image_transform
from tests.fixtures import images
from tests.fixtures.models import make_image_classifier
from tests.fixtures.servers import REPO_ROOT

PICTURES = {
    "landscape-jpeg": images.photo(200, 150),
    "portrait-png": images.photo(90, 160, seed=3, fmt="PNG"),
    "grayscale": images.grayscale_png(70, 70),
}
TOP_K = ClassificationParameters(top_k=10)

# Runs in a fresh interpreter: start the runtime on the compiled model, answer every picture, and say
# whether transformers was imported on the way.
_SERVE_SCRIPT = """
import asyncio, base64, json, sys
from serve.contract.settings import Settings
from serve.runtime import Runtime, State

async def main():
    runtime = Runtime(Settings.from_env())
    async with runtime.lifespan(None):
        while runtime.state is State.LOADING:
            await asyncio.sleep(0.05)
        assert runtime.state is State.READY, runtime.error
        params = runtime.parameters({"top_k": 10})
        answers = {}
        for name, data in json.loads(sys.stdin.read()).items():
            answers[name] = await runtime.predict(base64.b64decode(data), params)
        details = runtime.info()["task_details"]
    print(json.dumps({"answers": answers, "details": details, "transformers": "transformers" in sys.modules}))

asyncio.run(main())
"""


def isolated_compiler(root: Path) -> Path:
    """A copy of exactly the files the image's compile stage gets (`COMPILER_FILES`) under `root`."""
    for name in COMPILER_FILES:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, target)
    return root


def compile_in_subprocess(model_dir: Path, out: Path, code_root: Path) -> subprocess.CompletedProcess[str]:
    """`python -m serve.compile` as the compile stage runs it, with only `code_root` on the path."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    command = [
        sys.executable,
        "-m",
        "serve.compile",
        "--model-dir",
        str(model_dir),
        "--model",
        str(model_dir),
    ]
    command += ["--max-batch-size", "8", "--out", str(out)]
    return subprocess.run(command, env=env, cwd=code_root, capture_output=True, text=True, timeout=300)


def load_task(model_dir: Path, compiled: Path, **settings: object) -> ImageClassification:
    """The task loaded (and optimized) as the runtime does, with `compiled` as the image's artifact."""
    config = Settings(model=str(model_dir), compiled=str(compiled), **settings)  # type: ignore[arg-type]
    task = ImageClassification(
        locate_model(str(model_dir), "main", offline=True), config, choose_placement("cpu", "float32")
    )
    task.load()
    task.optimize([1, 2, 4, 8][: config.max_batch_size.bit_length()])
    return task


def reference(model_dir: Path) -> dict[str, list[dict]]:
    classify = pipeline("image-classification", model=str(model_dir))
    return {name: classify(Image.open(io.BytesIO(data)), top_k=10) for name, data in PICTURES.items()}


def assert_same_answers(actual: dict[str, list[dict]], expected: dict[str, list[dict]]) -> None:
    for name, want in expected.items():
        got = actual[name]
        assert [item["label"] for item in got] == [item["label"] for item in want], name
        np.testing.assert_allclose(
            [item["score"] for item in got], [item["score"] for item in want], atol=1e-4, err_msg=name
        )


@pytest.fixture(scope="module")
def compiled_resnet(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ResNet compiled by a subprocess that has only the compiler's files."""
    root = tmp_path_factory.mktemp("compile")
    result = compile_in_subprocess(tiny_models["resnet"], root / "out", isolated_compiler(root / "code"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled: torchscript" in result.stdout, result.stdout[-3000:]
    return root / "out"


def test_the_compiler_needs_only_its_files_and_writes_archive_manifest_and_report(
    compiled_resnet: Path, tiny_models: dict[str, Path]
) -> None:
    report = Report.read(compiled_resnet)
    manifest = Manifest.read(compiled_resnet)
    assert report is not None and report.compiled and report.label == TORCHSCRIPT
    assert manifest is not None and (compiled_resnet / ARCHIVE_FILE).is_file()
    assert report.parity == manifest.parity and 0 <= manifest.parity <= TOLERANCE
    model_dir = tiny_models["resnet"]
    config = json.loads((model_dir / "config.json").read_text())
    assert list(manifest.labels) == [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert (manifest.torch, manifest.device, manifest.dtype) == (torch.__version__, "cpu", "float32")
    assert manifest.buckets == (1, 2, 4, 8)
    assert manifest.weights == {"model.safetensors": (model_dir / "model.safetensors").stat().st_size}
    transform = build_image_transform(model_dir, choose_placement("cpu", "float32"))
    assert manifest.preprocessing == transform.preprocessing  # type: ignore[attr-defined]
    assert_weights_held_once(compiled_resnet, model_dir)


def assert_weights_held_once(compiled: Path, model_dir: Path) -> None:
    """The archive holds no tensor the model's safetensors file holds: it names where each left-out one is,
    and attaching them from there gives the model's own tensors back."""
    manifest = Manifest.read(compiled)
    assert manifest is not None and manifest.tensors
    archive = torch.jit.load(str(compiled / ARCHIVE_FILE))
    held = dict(archive.named_parameters()) | dict(archive.named_buffers())
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as stored:
        checkpoint = [stored.get_tensor(key) for key in stored.keys()]  # noqa: SIM118 (not a mapping)
        for name, (file, key) in manifest.tensors.items():
            assert file == "model.safetensors" and held[name].numel() == 0
            assert key in stored.keys()  # noqa: SIM118
    for name, tensor in held.items():
        twins = [value for value in checkpoint if value.shape == tensor.shape and torch.equal(value, tensor)]
        assert tensor.numel() == 0 or not twins, f"{name} is held twice"


@pytest.mark.parametrize("arch", ["convnext", "vit"])
def test_other_architectures_compile_within_the_tolerance(
    arch: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    report = compile_classifier(
        tiny_models[arch], model=arch, commit_sha=None, buckets=[1, 2, 4], out=tmp_path
    )
    assert report.compiled and report.parity is not None and report.parity <= TOLERANCE
    assert_weights_held_once(tmp_path, tiny_models[arch])


@pytest.mark.parametrize("rewrite", list(Rewrite))
def test_each_rewrite_of_the_archive_answers_within_the_tolerances_and_fuses_only_its_own_runs(
    rewrite: Rewrite, compiled_resnet: Path, tiny_models: dict[str, Path]
) -> None:
    """Each way the compile stage may choose, loaded as the runtime loads it: scores within `TOLERANCE` of
    the eager model's and within `BATCH_TOLERANCE` of a photo's own alone, at every bucket. A fused module
    runs fused kernels (TorchScript's oneDNN fusion groups), and leaves the process's setting as it was."""
    model_dir = tiny_models["resnet"]
    manifest = Manifest.read(compiled_resnet)
    assert manifest is not None
    eager = AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()
    module = load_frozen(
        compiled_resnet / manifest.archive, manifest.tensors, model_dir, torch.device("cpu"), rewrite=rewrite
    )
    fused = rewrite is Rewrite.ONEDNN_FUSION
    forward = TracedForward(module, ("pixel_values",), fused=fused)
    transform = build_image_transform(model_dir, choose_placement("cpu", "float32"))
    photos = [images.photo(160, 120, seed=seed) for seed in range(3)]
    rows = transform.collate([transform.prepare(Image.open(io.BytesIO(data))) for data in photos], 3)
    with torch.inference_mode():
        expected = eager(pixel_values=rows["pixel_values"]).logits
    assert score_difference(expected, forward, rows, manifest.buckets) <= TOLERANCE
    assert batch_difference(forward, rows, manifest.buckets) <= BATCH_TOLERANCE
    assert not torch.jit.onednn_fusion_enabled()
    graph = str(torch.jit.last_executed_optimized_graph())
    assert ("prim::oneDNNFusionGroup" in graph) is fused


def test_the_runtime_starts_from_the_archive_without_transformers_and_answers_like_the_pipeline(
    compiled_resnet: Path, tiny_models: dict[str, Path]
) -> None:
    model_dir = tiny_models["resnet"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "BAKE_MODEL": str(model_dir),
        "BAKE_COMPILED": str(compiled_resnet),
        "BAKE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    pictures = {name: base64.b64encode(data).decode() for name, data in PICTURES.items()}
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT],
        input=json.dumps(pictures),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.splitlines()[-1])
    assert served["transformers"] is False
    assert served["details"]["load_path"] == "compiled" and served["details"]["torchscript"] is True
    assert served["details"]["compiled"].startswith("torchscript, compiled at build time")
    assert_same_answers(served["answers"], reference(model_dir))


def test_the_compiled_task_batches_like_it_serves_alone(
    compiled_resnet: Path, tiny_models: dict[str, Path]
) -> None:
    task = load_task(tiny_models["resnet"], compiled_resnet)
    details = task.info().details
    assert details["load_path"] == "compiled"
    manifest = Manifest.read(compiled_resnet)
    assert manifest is not None
    rewritten = manifest.rewrite is not Rewrite.NONE
    assert (f"rewritten: {manifest.rewrite}" in details["compiled"]) is rewritten
    samples = [task.prepare(images.photo(160, 120, seed=seed), TOP_K).sample for seed in range(3)]
    alone = [task.run_batch([sample], 1)[0] for sample in samples]
    together = task.run_batch(samples, 4)
    for single, batched in zip(alone, together):
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def copy_with_manifest(compiled: Path, target: Path, **changes: object) -> Path:
    """A copy of the compiled directory whose manifest has `changes`."""
    shutil.copytree(compiled, target)
    data = json.loads((target / MANIFEST_FILE).read_text())
    data.update(changes)
    (target / MANIFEST_FILE).write_text(json.dumps(data))
    return target


@pytest.mark.parametrize(
    ("changes", "settings", "reason"),
    [
        ({"torch": "1.0.0"}, {}, "it was made with torch 1.0.0"),
        ({"model": "someone/else"}, {}, "it is for someone/else"),
        ({"weights": {"model.safetensors": 1}}, {}, "its weights file model.safetensors is not the model's"),
        ({"buckets": [1, 2, 4, 8]}, {"max_batch_size": 16}, "not checked at batch sizes [16]"),
        ({}, {"torchscript": False}, "BAKE_TORCHSCRIPT is off"),
    ],
    ids=["torch", "model", "weights", "buckets", "torchscript-off"],
)
def test_an_archive_made_for_something_else_is_not_used(
    compiled_resnet: Path,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    changes: dict[str, object],
    settings: dict[str, object],
    reason: str,
) -> None:
    model_dir = tiny_models["resnet"]
    if "model" not in changes:
        changes = {"model": str(model_dir), **changes}
    compiled = copy_with_manifest(compiled_resnet, tmp_path / "compiled", **changes)
    task = load_task(model_dir, compiled, **settings)
    details = task.info().details
    assert details["load_path"] == "transformers" and reason in details["compiled"]
    assert details["torchscript"] is settings.get("torchscript", True)


def test_without_a_manifest_the_runtime_says_what_the_build_reported(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    tmp_path.mkdir(exist_ok=True)
    Report.eager("compiling was turned off (--no-compile)").write(tmp_path)
    details = load_task(tiny_models["resnet"], tmp_path).info().details
    assert details["load_path"] == "transformers"
    assert details["compiled"] == "eager: compiling was turned off (--no-compile)"


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ({"shortest_edge": 32}, "the model's input size depends on the image"),
        ({"longest_edge": 32}, "compiling failed: ModelLoadError: the image processor of"),
    ],
    ids=["input-size-varies", "processor-fails"],
)
def test_a_model_the_compiler_refuses_leaves_only_a_report_saying_why(
    tmp_path: Path, size: dict[str, int], reason: str
) -> None:
    model_dir = make_image_classifier(tmp_path / "model", "vit", image_size=32)
    processor = json.loads((model_dir / "preprocessor_config.json").read_text())
    processor["size"] = size
    (model_dir / "preprocessor_config.json").write_text(json.dumps(processor))
    report = run(model_dir, model=str(model_dir), commit_sha=None, max_batch_size=4, out=tmp_path / "out")
    assert not report.compiled and report.reason.startswith(reason)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["report.json"]


class FrozenBatchResNet(ResNetForImageClassification):
    """Reads the batch size as a Python int, which a trace freezes into a constant: the traced forward
    fails or differs at every other batch size."""

    def forward(self, pixel_values: torch.Tensor, **kwargs: object) -> object:  # type: ignore[override]
        logits = super().forward(pixel_values=pixel_values, return_dict=False)[0]
        return (logits.reshape(int(pixel_values.shape[0]), -1),)


def test_a_model_whose_trace_is_refused_falls_back_and_says_why(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' own mapping resolves the tiny ResNet to `FrozenBatchResNet` in this test (a served
    model type whose forward pass a trace gets wrong)."""
    mapping = AutoModelForImageClassification._model_mapping._extra_content  # type: ignore[attr-defined]
    monkeypatch.setitem(mapping, ResNetConfig, FrozenBatchResNet)
    model_dir = tiny_models["resnet"]
    with pytest.raises(NotCompilable, match="at batch size"):
        compile_classifier(model_dir, model=str(model_dir), commit_sha=None, buckets=[1, 2, 4], out=tmp_path)
    report = run(model_dir, model=str(model_dir), commit_sha=None, max_batch_size=4, out=tmp_path / "out")
    assert not report.compiled and "at batch size" in report.label
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["report.json"]
    details = load_task(model_dir, tmp_path / "out", torchscript=False).info().details
    assert details["load_path"] == "transformers" and details["compiled"] == report.label
