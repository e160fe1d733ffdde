"""`bake build` consults serve.contract.models before building anything: which image classifiers it serves,
which files and extra packages they need, and a one-line reason for the ones it refuses.

Repositories are made by tests/fixtures/classifier_zoo.py and resolved as `bake build` resolves them: local
directories, and Hub repos through the local Hub fixture (the real huggingface_hub download code).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bake.config import ModelSpec, load_config
from bake.env import read_environment
from bake.errors import UnsupportedModel
from bake.hub import ResolvedModel, resolve_model
from bake.plan import plan_build, runtime_requirements
from serve.contract import packages
from serve.contract.files import detect_task, select_files
from serve.contract.models import IMAGE_CLASSIFIERS
from tests.fixtures.classifier_zoo import CONFIG_ONLY, config_only_repo, make_classifier
from tests.fixtures.hub import HubServer


def reader(documents: dict[str, dict]) -> object:
    return lambda name: documents.get(name)


def resolve_local(folder: Path) -> ResolvedModel:
    return resolve_model(ModelSpec(str(folder), "main", None), read_environment({}), device="cpu")


@pytest.mark.parametrize(
    "architecture",
    [
        "DeiTForImageClassificationWithTeacher",
        "LevitForImageClassificationWithTeacher",
        "PerceiverForImageClassificationLearned",
        "PerceiverForImageClassificationConvProcessing",
        "ConvNextV2ForImageClassification",
    ],
)
def test_every_class_of_the_mapping_is_detected_as_an_image_classifier(architecture: str) -> None:
    names = ["config.json", "preprocessor_config.json", "model.safetensors"]
    config = {"architectures": [architecture]}
    assert detect_task(names, reader({"config.json": config})) == "image-classification"


def test_a_timm_checkpoint_is_an_image_classifier_without_a_preprocessor_config() -> None:
    config = CONFIG_ONLY["timm_wrapper"]
    names = ["config.json", "model.safetensors", "pytorch_model.bin", "README.md", "open_clip_config.json"]
    documents = reader({"config.json": config})
    assert detect_task(names, documents) == "image-classification"
    selection = select_files(names, "image-classification", device="cpu", read_json=documents)
    assert selection.files == ("config.json", "model.safetensors")
    assert selection.packages == ("timm", "torchvision")


def test_a_model_of_a_type_without_extra_needs_adds_no_package(tmp_path: Path) -> None:
    model = resolve_local(make_classifier("deit", tmp_path / "deit"))
    assert model.task == "image-classification" and model.packages == ()
    assert [file.path for file in model.files] == [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ]


def test_the_image_gets_the_packages_a_model_type_needs(tmp_path: Path) -> None:
    model = resolve_local(config_only_repo("timm_wrapper", tmp_path / "timm"))
    assert model.packages == ("timm", "torchvision")
    requirements = runtime_requirements(model.task, model.packages)
    assert requirements[-2:] == ["timm", "torchvision"]
    assert any(requirement.startswith("transformers") for requirement in requirements)
    assert runtime_requirements("image-classification") == requirements[:-2]
    (tmp_path / "bake.toml").write_text("")
    (tmp_path / "work").mkdir()
    config = load_config({"model_id": str(tmp_path / "timm")}, read_environment({}), tmp_path / "bake.toml")
    plan = plan_build(config, model, read_environment({}), tmp_path / "work")
    pins = {"torch": "torch==2.13.0+cpu", "torchvision": "torchvision==0.28.0+cpu"}  # a CPU image's builds
    assert (plan.context / "requirements.txt").read_text().splitlines() == [
        pins.get(re.split(r"[<>=\[ ;]", requirement)[0], requirement) for requirement in requirements
    ]


@pytest.mark.parametrize(
    "model_type", sorted(name for name, kind in IMAGE_CLASSIFIERS.items() if kind.refusal)
)
def test_a_refused_type_is_one_line_naming_the_reason(model_type: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel) as raised:
        resolve_local(config_only_repo(model_type, tmp_path / model_type))
    message = str(raised.value)
    assert f"{model_type} models are not served" in message and "\n" not in message
    assert IMAGE_CLASSIFIERS[model_type].fix in message


def test_dinat_is_refused_for_its_natten_package(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=r"natten<0\.20"):
        resolve_local(config_only_repo("dinat", tmp_path / "dinat"))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            {"model_type": "llama", "architectures": ["LlamaForImageClassification"]},
            "has no image-classification",
        ),
        ({"architectures": ["ResNetForImageClassification"]}, "names no model_type"),
        (
            {"model_type": "vit", "architectures": ["ViTMAEForPreTraining"]},
            "cannot serve architectures",
        ),
        (
            {"model_type": "vit", "architectures": ["SwinForImageClassification"]},
            "not an image classifier of transformers' vit type",
        ),
    ],
)
def test_architectures_outside_the_mapping_are_refused_at_build_time(config: dict, fragment: str) -> None:
    names = ["config.json", "preprocessor_config.json", "model.safetensors"]
    documents = reader({"config.json": config})
    with pytest.raises(UnsupportedModel, match=fragment) as raised:
        select_files(names, detect_task(names, documents), device="cpu", read_json=documents)
    assert "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def published(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("types")
    hub.add_repo("types/timm-resnet50", config_only_repo("timm_wrapper", root / "timm"))
    hub.add_repo("types/sharded-vit", make_classifier("vit", root / "sharded", shard_bytes=20_000))
    hub.add_repo("types/dinat", config_only_repo("dinat", root / "dinat"))
    return hub.url


def test_a_timm_repo_on_the_hub_resolves_with_timm(published: str) -> None:
    environment = read_environment({"HF_ENDPOINT": published})
    model = resolve_model(ModelSpec("types/timm-resnet50", "main", None), environment, device="cpu")
    assert [file.path for file in model.files] == ["config.json", "model.safetensors"]
    assert model.packages == ("timm", "torchvision")


def test_a_sharded_repo_on_the_hub_fetches_every_shard_and_the_index(published: str) -> None:
    environment = read_environment({"HF_ENDPOINT": published})
    model = resolve_model(ModelSpec("types/sharded-vit", "main", None), environment, device="cpu")
    names = [file.path for file in model.files]
    shards = [name for name in names if name.startswith("model-") and name.endswith(".safetensors")]
    assert len(shards) >= 2 and names[-1] == "model.safetensors.index.json"


def test_a_refused_repo_on_the_hub_is_refused_before_any_build(published: str) -> None:
    environment = read_environment({"HF_ENDPOINT": published})
    with pytest.raises(UnsupportedModel, match="dinat models are not served"):
        resolve_model(ModelSpec("types/dinat", "main", None), environment, device="cpu")


def test_missing_packages_are_named_with_the_reason_and_the_fix() -> None:
    present = packages.Package("json", "json", "parses")
    absent = packages.Package("no-such-package", "no_such_package.sub", "reads nothing")
    assert packages.missing([present, absent, absent]) == [absent]
    assert packages.missing_message("a toy model", [absent]) == (
        "a toy model needs no-such-package (reads nothing): pip install no-such-package "
        "(bake build installs them)"
    )


def test_the_registry_and_bake_import_no_torch() -> None:
    code = (
        "import sys, bake, bake.cli, bake.hub, serve.contract, serve.contract.files, serve.contract.models; "
        "print(sorted({'torch', 'transformers', 'diffusers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
