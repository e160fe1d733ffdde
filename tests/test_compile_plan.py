"""The compile stage in the build plan: its inputs, its command, and when it does not run (and the label
says why)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from bake.config import load_config
from bake.env import read_environment
from bake.hub import ResolvedModel
from serve.contract.compiled import COMPILER_FILES, EAGER
from serve.contract.labels import COMPILED
from tests.test_bake_plan import SHA, hub_model, plan


def compile_stage(dockerfile: str) -> str:
    return dockerfile.split("AS compile\n", 1)[1].split("\n\n", 1)[0]


def written_report(stage: str) -> dict[str, object]:
    """The report a skipped compile stage's command writes (the printf argument, as the shell reads it)."""
    words = shlex.split(stage.split("&&", 1)[1])
    return json.loads(words[words.index("printf") + 2])


def test_a_cpu_image_classifier_is_compiled_from_the_venv_the_weights_and_the_compilers_files_only(
    tmp_path: Path,
) -> None:
    built = plan(tmp_path)
    stage = compile_stage(built.dockerfile.read_text())
    assert built.compiles and COMPILED not in built.labels  # the compile stage's report decides the label
    assert "COPY compiler /opt/bake/compiler" in stage
    assert "--mount=type=bind,from=weights,source=/opt/bake/hf,target=/opt/bake/hf" in stage
    assert "COPY serve" not in stage and "ENV" not in stage  # no other code, no settings
    snapshot = f"/opt/bake/hf/hub/models--org--Tiny-Model/snapshots/{SHA}"
    command = (
        f"-m serve.compile --model-dir {snapshot} --model org/Tiny-Model --commit {SHA} --max-batch-size 8"
    )
    assert command in stage and "--out /opt/bake/compiled" in stage
    assert "HF_HUB_OFFLINE=1" in stage and "PYTHONPATH=/opt/bake/compiler" in stage
    # A crash leaves a report and no manifest.
    assert "|| { mkdir -p /opt/bake/compiled && rm -f /opt/bake/compiled/manifest.json" in stage
    shipped = sorted(
        str(path.relative_to(built.context / "compiler")) for path in built.context.rglob("compiler/**/*")
    )
    assert [name for name in shipped if name.endswith(".py")] == sorted(COMPILER_FILES)


def test_the_compile_stage_checks_the_buckets_of_the_baked_max_batch_size(tmp_path: Path) -> None:
    stage = compile_stage(plan(tmp_path, max_batch_size=12).dockerfile.read_text())
    assert "--max-batch-size 12" in stage


def test_a_local_model_is_compiled_from_its_baked_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    local = ResolvedModel(**{**hub_model().__dict__, "id": str(model_dir), "local_dir": model_dir})
    stage = compile_stage(plan(tmp_path, local).dockerfile.read_text())
    assert "--model-dir /opt/bake/model --model /opt/bake/model --commit ''" in stage


@pytest.mark.parametrize(
    ("flags", "model", "reason"),
    [
        ({"compile": False}, hub_model(), "compiling is turned off (--no-compile)"),
        ({"device": "cuda"}, hub_model(), "a CUDA image is compiled only by a build that sees a GPU"),
        ({}, hub_model(task="text-to-image"), "text-to-image models are not compiled"),
        ({"torchscript": False}, hub_model(), "serve.torchscript is off"),
    ],
    ids=["no-compile", "cuda", "text-to-image", "torchscript-off"],
)
def test_when_the_build_does_not_compile_the_label_and_the_report_say_why(
    tmp_path: Path, flags: dict[str, object], model: ResolvedModel, reason: str
) -> None:
    built = plan(tmp_path, model, **flags)
    assert not built.compiles
    assert built.labels[COMPILED].startswith(f"{EAGER}: {reason}")
    stage = compile_stage(built.dockerfile.read_text())
    assert "serve.compile" not in stage
    report = written_report(stage)
    assert report["path"] == EAGER and str(report["reason"]).startswith(reason)


@pytest.mark.parametrize(
    ("toml", "environ", "expected"),
    [("", {}, True), ("[build]\ncompile = false\n", {}, False), ("", {"BAKE_COMPILE": "0"}, False)],
    ids=["default", "bake.toml", "environment"],
)
def test_compiling_is_on_unless_bake_toml_or_the_environment_turn_it_off(
    tmp_path: Path, toml: str, environ: dict[str, str], expected: bool
) -> None:
    file = tmp_path / "bake.toml"
    file.write_text(toml)
    assert load_config({}, read_environment(environ), file).build.compile is expected
