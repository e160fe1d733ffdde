"""Which files a build fetches, which task a model is for, and how models resolve (against the local Hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bake.config import ModelSpec
from bake.env import read_environment
from bake.errors import GatedModel, ModelNotFound, RevisionNotFound, UnsupportedModel
from bake.hub import resolve_model
from serve.contract.files import detect_task, select_files
from tests.fixtures.hub import HubServer
from tests.fixtures.models import make_image_classifier, make_text_to_image_pipeline

CLASSIFIER_CONFIG = {"architectures": ["ResNetForImageClassification"]}


def reader(documents: dict[str, dict]) -> object:
    return lambda name: documents.get(name)


def test_classifier_takes_configs_and_safetensors_only() -> None:
    names = [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "onnx/model.onnx",
        "README.md",
        ".gitattributes",
    ]
    selection = select_files(names, "image-classification", device="cpu", read_json=reader({}))
    assert selection.files == ("config.json", "preprocessor_config.json", "model.safetensors")
    assert not selection.convert_to_safetensors


def test_sharded_safetensors_come_with_their_index() -> None:
    names = [
        "config.json",
        "preprocessor_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
    ]
    selection = select_files(names, "image-classification", device="cpu", read_json=reader({}))
    assert selection.files[2:] == (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    )


def test_bin_only_repository_is_converted() -> None:
    names = ["config.json", "preprocessor_config.json", "pytorch_model.bin", "tf_model.h5"]
    selection = select_files(names, "image-classification", device="cpu", read_json=reader({}))
    assert selection.files == ("config.json", "preprocessor_config.json", "pytorch_model.bin")
    assert selection.convert_to_safetensors


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (["preprocessor_config.json", "model.safetensors"], "no config.json"),
        (["config.json", "model.safetensors"], "preprocessor_config.json"),
        (["config.json", "preprocessor_config.json", "tf_model.h5"], "no PyTorch weights"),
    ],
)
def test_unservable_classifier_repositories_say_why(names: list[str], fragment: str) -> None:
    with pytest.raises(UnsupportedModel, match=fragment):
        select_files(names, "image-classification", device="cpu", read_json=reader({}))


def test_task_detection() -> None:
    assert detect_task(["config.json"], reader({"config.json": CLASSIFIER_CONFIG})) == "image-classification"
    assert detect_task(["model_index.json", "unet/config.json"], reader({})) == "text-to-image"
    with pytest.raises(UnsupportedModel, match="BertForMaskedLM"):
        detect_task(["config.json"], reader({"config.json": {"architectures": ["BertForMaskedLM"]}}))


def test_diffusion_pipeline_takes_every_component_in_one_format(tmp_path: Path) -> None:
    folder = make_text_to_image_pipeline(tmp_path / "sd", variant="fp16")
    names = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]

    def read(name: str) -> dict | None:
        import json

        return json.loads((folder / name).read_text()) if (folder / name).is_file() else None

    cpu = select_files(names, "text-to-image", device="cpu", read_json=read)
    cuda = select_files(names, "text-to-image", device="cuda", read_json=read)
    for selection in (cpu, cuda):
        assert "model_index.json" in selection.files
        for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert any(name.startswith(f"{component}/") for name in selection.files), component
        assert not any(name.endswith(".bin") for name in selection.files)
    assert not any(".fp16." in name for name in cpu.files)
    assert any(".fp16." in name for name in cuda.files)
    assert not any(".fp16." not in name and name.endswith(".safetensors") for name in cuda.files)


def test_diffusion_components_the_runtime_never_loads_are_not_fetched(tmp_path: Path) -> None:
    folder = make_text_to_image_pipeline(tmp_path / "sd", safety_checker=True)
    names = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    names += ["image_encoder/config.json", "image_encoder/model.safetensors"]
    index = json.loads((folder / "model_index.json").read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    assert index["safety_checker"][0] is not None and index["feature_extractor"][0] is not None
    selection = select_files(
        names, "text-to-image", device="cpu", read_json=reader({"model_index.json": index})
    )
    assert any(name.startswith("unet/") for name in selection.files)
    for component in ("safety_checker", "feature_extractor", "image_encoder"):
        assert any(name.startswith(f"{component}/") for name in names)
        assert not any(name.startswith(f"{component}/") for name in selection.files), component


@pytest.fixture(scope="module")
def published(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("published")
    folder = make_image_classifier(
        root / "clf", "resnet", image_size=64, extra_formats=("bin", "flax", "tf", "onnx")
    )
    sha = hub.add_repo("resolve/classifier", folder)
    hub.add_repo("resolve/gated", folder, token="gated-token", gated=True)
    bin_only = make_image_classifier(root / "bin", "vit", image_size=64, weights_format="bin")
    hub.add_repo("resolve/bin-only", bin_only)
    return {"sha": sha, "endpoint": hub.url}


def test_hub_model_resolves_to_its_commit_and_needed_files(published: dict[str, str]) -> None:
    environment = read_environment({"HF_ENDPOINT": published["endpoint"]})
    model = resolve_model(ModelSpec("resolve/classifier", "main", None), environment, device="cpu")
    assert model.commit_sha == published["sha"] and model.task == "image-classification"
    assert [file.path for file in model.files] == [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ]
    weights = model.files[2]
    assert weights.sha256 is not None and len(weights.sha256) == 64 and weights.size > 0


def test_bin_only_hub_model_is_marked_for_conversion(published: dict[str, str]) -> None:
    environment = read_environment({"HF_ENDPOINT": published["endpoint"]})
    model = resolve_model(ModelSpec("resolve/bin-only", "main", None), environment, device="cpu")
    assert model.convert_to_safetensors and model.files[-1].path == "pytorch_model.bin"


def test_local_directory_resolves_with_a_content_digest(tmp_path: Path) -> None:
    folder = make_image_classifier(tmp_path / "local", "convnext", image_size=64)
    first = resolve_model(ModelSpec(str(folder), "main", None), read_environment({}), device="cpu")
    assert first.local_dir == folder.resolve() and first.revision == "local"
    assert all(file.sha256 for file in first.files)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes() + b"\0")
    second = resolve_model(ModelSpec(str(folder), "main", None), read_environment({}), device="cpu")
    assert first.commit_sha != second.commit_sha


@pytest.mark.parametrize(
    ("spec", "token", "error", "fragment"),
    [
        (
            ModelSpec("resolve/missing", "main", None),
            None,
            ModelNotFound,
            "set HF_TOKEN if the model is private",
        ),
        (ModelSpec("resolve/classifier", "v9", None), None, RevisionNotFound, "--revision"),
        (
            ModelSpec("resolve/classifier", "main", "text-to-image"),
            None,
            UnsupportedModel,
            "--task image-classification",
        ),
        (ModelSpec("resolve/classifier", "main", "translation"), None, UnsupportedModel, "not served"),
        (ModelSpec("./not/here", "main", None), None, ModelNotFound, "neither a directory"),
    ],
)
def test_resolution_errors_carry_the_fix(
    published: dict[str, str], spec: ModelSpec, token: str | None, error: type[Exception], fragment: str
) -> None:
    environment = read_environment(
        {"HF_ENDPOINT": published["endpoint"], **({"HF_TOKEN": token} if token else {})}
    )
    with pytest.raises(error) as raised:
        resolve_model(spec, environment, device="cpu")
    assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)


def test_gated_model_needs_a_token_with_access(published: dict[str, str]) -> None:
    spec = ModelSpec("resolve/gated", "main", None)
    with pytest.raises(GatedModel, match="set HF_TOKEN"):
        resolve_model(spec, read_environment({"HF_ENDPOINT": published["endpoint"]}), device="cpu")
    granted = read_environment({"HF_ENDPOINT": published["endpoint"], "HF_TOKEN": "gated-token"})
    model = resolve_model(spec, granted, device="cpu")
    assert model.gated and model.commit_sha == published["sha"]


def test_unreachable_hub_is_one_clear_error() -> None:
    from bake.errors import HubUnreachable

    environment = read_environment({"HF_ENDPOINT": "http://127.0.0.1:9"})
    with pytest.raises(HubUnreachable, match="cannot reach http://127.0.0.1:9"):
        resolve_model(ModelSpec("org/model", "main", None), environment, device="cpu")
