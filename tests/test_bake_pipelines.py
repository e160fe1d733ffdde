"""Which diffusion pipelines `bake build` takes, with which files and packages, which it refuses, and why.

The pipelines are the tiny ones of `tests.fixtures.diffusion_zoo`, shaped like their Hub repos (sharded T5
encoders, fp16 variants, SentencePiece-only tokenizers), resolved from a local directory and from the local
Hub with the real huggingface_hub code. The expectation for a CPU build is written independently of bake's
rules: every file of the repo but the fp16 variant weights and the model card; for CUDA: the fp16 weights
in place of the full ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bake.config import ModelSpec
from bake.env import read_environment
from bake.errors import UnsupportedModel
from bake.hub import resolve_model
from bake.plan import runtime_requirements
from serve.contract import pipelines
from tests.fixtures.diffusion_zoo import FAMILIES, Family, make_diffusion_pipeline
from tests.fixtures.hub import HubServer
from tests.fixtures.servers import REPO_ROOT

CARD = {"README.md", ".gitattributes"}
PACKAGES: dict[str, tuple[str, ...]] = {
    "pixart-alpha": ("ftfy", "beautifulsoup4", "sentencepiece", "protobuf"),
    "pixart-sigma": ("ftfy", "beautifulsoup4", "sentencepiece", "protobuf"),
}
"""Extra runtime packages per family (the others need none): PixArt cleans captions with ftfy and Beautiful
Soup, and its T5 tokenizer comes as spiece.model only (SD3's and FLUX's also have tokenizer.json)."""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {family: make_diffusion_pipeline(root / family, family, variant="fp16") for family in FAMILIES}


def files_of(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def is_fp16(name: str) -> bool:
    return ".fp16." in name or ".fp16-" in name


def resolve(folder: Path, device: str = "cpu") -> tuple[set[str], tuple[str, ...]]:
    model = resolve_model(ModelSpec(str(folder), "main", None), read_environment({}), device=device)
    assert model.task == "text-to-image"
    return {file.path for file in model.files}, model.packages


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cpu_build_takes_every_component_in_full_precision(zoo: dict[str, Path], family: Family) -> None:
    folder = zoo[family]
    files, packages = resolve(folder)
    assert files == {name for name in files_of(folder) - CARD if not is_fp16(name)}
    assert packages == PACKAGES.get(family, ())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cuda_build_takes_the_fp16_variant_with_its_shard_index(
    zoo: dict[str, Path], family: Family
) -> None:
    folder = zoo[family]
    files, _ = resolve(folder, "cuda")
    weights = {name for name in files_of(folder) if name.endswith(".safetensors") or ".index." in name}
    assert files == files_of(folder) - CARD - {name for name in weights if not is_fp16(name)}
    assert {name for name in files if ".index." in name} == {
        name for name in files_of(folder) if name.endswith(".safetensors.index.fp16.json")
    }


def test_t5_encoders_are_sharded_and_their_tokenizers_come_as_on_the_hub(zoo: dict[str, Path]) -> None:
    pixart, _ = resolve(zoo["pixart-alpha"])
    assert {name for name in pixart if name.startswith("tokenizer/")} == {
        "tokenizer/spiece.model",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
    }
    assert len([name for name in pixart if name.startswith("text_encoder/model-0000")]) >= 2
    assert "text_encoder/model.safetensors.index.json" in pixart
    flux, _ = resolve(zoo["flux"])
    assert "tokenizer_2/tokenizer.json" in flux and "tokenizer_2/spiece.model" in flux
    sd3, _ = resolve(zoo["sd3"])
    assert {name.split("/")[0] for name in sd3} == {
        "model_index.json",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "transformer",
        "vae",
    }


def add_files(folder: Path, names: dict[str, bytes]) -> None:
    for name, data in names.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_what_real_repos_carry_beside_the_pipeline_is_left_out(zoo: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(zoo["sdxl"], tmp_path / "sdxl")
    expected, _ = resolve(folder)
    add_files(
        folder,
        {
            "sd_xl_base_1.0.safetensors": b"single-file checkpoint",
            "unet/diffusion_pytorch_model.non_ema.safetensors": b"another variant",
            "unet/diffusion_pytorch_model.bin": b"second format",
            "text_encoder/flax_model.msgpack": b"flax",
            "vae/diffusion_flax_model.msgpack": b"flax",
            "text_encoder_2/model.onnx": b"onnx",
            "image_encoder/config.json": b"{}",
            "image_encoder/model.safetensors": b"ip-adapter encoder",
        },
    )
    index = json.loads((folder / "model_index.json").read_text())
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert resolve(folder)[0] == expected


@pytest.mark.parametrize("family", ["sd3", "pixart-alpha"])
def test_hub_resolution_selects_what_the_directory_selects(
    hub: HubServer, zoo: dict[str, Path], family: Family
) -> None:
    sha = hub.add_repo(f"pipelines/{family}", zoo[family])
    environment = read_environment({"HF_ENDPOINT": hub.url})
    model = resolve_model(ModelSpec(f"pipelines/{family}", "main", None), environment, device="cpu")
    assert model.commit_sha == sha
    assert ({file.path for file in model.files}, model.packages) == resolve(zoo[family])
    assert all(file.sha256 for file in model.files if file.path.endswith(".safetensors"))


def edit_index(folder: Path, tmp_path: Path, **changes: object) -> Path:
    copy = shutil.copytree(folder, tmp_path / "edited")
    index = json.loads((copy / "model_index.json").read_text())
    index.update(changes)
    (copy / "model_index.json").write_text(json.dumps(index))
    return copy


@pytest.mark.parametrize(
    ("family", "changes", "fragments"),
    [
        (
            "sdxl",
            {"_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": True},
            ["StableDiffusionXLImg2ImgPipeline turns an image into another image", "text-to-image"],
        ),
        ("sd1", {"_class_name": "StableDiffusionInpaintPipeline"}, ["repaints the masked part of an image"]),
        ("sd1", {"_class_name": "StableDiffusionControlNetPipeline"}, ["needs a control image"]),
        ("flux", {"_class_name": "FluxKontextPipeline"}, ["FluxKontextPipeline edits an image"]),
        ("flux", {"_class_name": "FluxFillPipeline"}, ["FluxFillPipeline repaints the masked part"]),
        (
            "sd1",
            {"_class_name": "KandinskyV22CombinedPipeline"},
            ["KandinskyV22CombinedPipeline is not among", "StableDiffusionXLPipeline", "open an issue"],
        ),
        ("sd1", {"_class_name": ["my_pipeline", "MyPipeline"]}, ["custom pipeline code", "does not run"]),
        ("sd1", {"_class_name": None}, ["names no pipeline class"]),
        ("sdxl", {"text_encoder_2": [None, None]}, ["StableDiffusionXLPipeline needs text_encoder_2"]),
        ("sd3", {"tokenizer_3": [None, None]}, ["StableDiffusion3Pipeline needs tokenizer_3"]),
    ],
    ids=[
        "sdxl-refiner",
        "inpainting",
        "controlnet",
        "flux-kontext",
        "flux-fill",
        "untested-family",
        "custom-code",
        "no-class",
        "sdxl-without-its-second-encoder",
        "sd3-without-t5-tokenizer",
    ],
)
def test_unservable_pipelines_are_refused_before_building_with_the_reason(
    zoo: dict[str, Path], tmp_path: Path, family: Family, changes: dict[str, object], fragments: list[str]
) -> None:
    folder = edit_index(zoo[family], tmp_path, **changes)
    with pytest.raises(UnsupportedModel) as refused:
        resolve(folder)
    message = str(refused.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_component_without_weights_is_refused(zoo: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(zoo["flux"], tmp_path / "flux")
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UnsupportedModel, match="the pipeline's transformer has no PyTorch weights"):
        resolve(folder)


def test_extra_packages_go_into_the_images_requirements() -> None:
    requirements = runtime_requirements("text-to-image", ("sentencepiece", "protobuf"))
    assert requirements[-2:] == ["sentencepiece", "protobuf"]
    assert any(requirement.startswith("diffusers") for requirement in requirements)
    pins = (Path(__file__).parents[1] / "bake" / "image" / "constraints.txt").read_text()
    for family in pipelines.FAMILIES:
        for package in (*family.packages, *pipelines.SENTENCEPIECE):
            assert f"\n{package.name}==" in pins, f"{package.name} must be pinned for the image"


# ---- the contract itself (no files) ----


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("unet/diffusion_pytorch_model.safetensors", None),
        ("unet/diffusion_pytorch_model.fp16.safetensors", "fp16"),
        ("text_encoder_3/model-00001-of-00002.safetensors", None),
        ("text_encoder_3/model.fp16-00001-of-00002.safetensors", "fp16"),
        ("text_encoder_3/model.safetensors.index.json", None),
        ("text_encoder_3/model.safetensors.index.fp16.json", "fp16"),
        ("unet/diffusion_pytorch_model.non_ema.bin", "non_ema"),
        ("text_encoder/pytorch_model.bin", None),
        ("unet.v2/diffusion_pytorch_model.safetensors", None),
    ],
)
def test_weights_variants_are_recognised(name: str, variant: str | None) -> None:
    assert pipelines.weights_variant(name) == variant


def test_sentencepiece_is_needed_only_without_tokenizer_json() -> None:
    family = pipelines.family_of({"_class_name": "StableDiffusion3Pipeline"})
    index = {
        "tokenizer_3": ["transformers", "T5Tokenizer"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
    }
    spiece_only = ["tokenizer_3/spiece.model", "tokenizer_3/tokenizer_config.json"]
    assert [package.name for package in pipelines.packages(family, spiece_only, index)] == [
        "sentencepiece",
        "protobuf",
    ]
    assert pipelines.packages(family, [*spiece_only, "tokenizer_3/tokenizer.json"], index) == ()


def test_bake_reads_the_contract_without_importing_torch() -> None:
    code = (
        "import sys, bake.hub, serve.contract.files, serve.contract.pipelines; "
        "print([m for m in ('torch', 'transformers', 'diffusers', 'numpy') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "[]"


def test_every_family_names_a_distinct_pipeline_class_diffusers_has() -> None:
    import diffusers

    classes = [family.pipeline for family in pipelines.FAMILIES]
    assert len(set(classes)) == len(classes)
    for name in classes:
        assert hasattr(diffusers, name), name
