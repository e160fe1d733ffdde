"""The build plan: the rendered Dockerfile's stage order and contract, secrets, named contexts, labels."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from bake.config import Config, load_config
from bake.env import read_environment
from bake.hub import ModelFile, ResolvedModel
from bake.labels import ImageFacts
from bake.plan import TORCH_CPU_INDEX, default_tag, is_loopback, plan_build, runtime_requirements

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_secret_token_value"


def hub_model(*, convert: bool = False, task: str = "image-classification") -> ResolvedModel:
    weights = "pytorch_model.bin" if convert else "model.safetensors"
    return ResolvedModel(
        id="org/Tiny-Model",
        revision="main",
        commit_sha=SHA,
        task=task,
        files=(
            ModelFile("config.json", 10, None),
            ModelFile("preprocessor_config.json", 10, None),
            ModelFile(weights, 1000, "ab" * 32),
        ),
        convert_to_safetensors=convert,
        local_dir=None,
    )


def config(tmp_path: Path, **flags: object) -> Config:
    return load_config(flags, read_environment({}), _empty_toml(tmp_path))


def _empty_toml(tmp_path: Path) -> Path:
    path = tmp_path / "bake.toml"
    path.write_text("")
    return path


def plan(
    tmp_path: Path, model: ResolvedModel | None = None, environ: dict[str, str] | None = None, **flags: object
):
    environment = read_environment({"HF_ENDPOINT": "https://hub.example", **(environ or {})})
    work = tmp_path / "work"
    work.mkdir()
    return plan_build(config(tmp_path, **flags), model or hub_model(), environment, work)


def stages(dockerfile: str) -> list[tuple[str, str]]:
    return re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)


def test_stages_are_deps_then_weights_then_runtime_and_weights_do_not_depend_on_deps(tmp_path: Path) -> None:
    text = plan(tmp_path).dockerfile.read_text()
    assert stages(text) == [
        ("python:3.11-slim-bookworm", "base"),
        ("base", "deps"),
        ("deps", "sbom"),
        ("base", "fetcher"),
        ("fetcher", "weights"),
        ("deps", "compile"),
        ("scratch", "compile-report"),
        ("deps", "runtime"),
    ]
    runtime = text.split("AS runtime", 1)[1]
    assert (
        runtime.index("--from=weights")
        < runtime.index("--from=compile")
        < runtime.index("COPY --link serve")
        < runtime.index("ENV BAKE_MODEL")
    )


def test_runtime_stage_is_offline_non_root_healthchecked_and_exec_form(tmp_path: Path) -> None:
    runtime = plan(tmp_path).dockerfile.read_text().split("AS runtime", 1)[1]
    assert "HF_HUB_OFFLINE=1" in runtime and "TRANSFORMERS_OFFLINE=1" in runtime
    assert "HF_HOME=/opt/bake/hf" in runtime
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
    assert "HEALTHCHECK" in runtime and '"serve.healthcheck"' in runtime
    assert 'ENTRYPOINT ["/opt/bake/venv/bin/python", "-m", "serve"]' in runtime
    assert re.search(r"^EXPOSE 8080$", runtime, re.MULTILINE)
    assert 'BAKE_MODEL="org/Tiny-Model"' in runtime and 'BAKE_TASK="image-classification"' in runtime
    assert 'BAKE_MAX_BATCH_SIZE="8"' in runtime


def test_weights_step_is_keyed_by_the_commit_and_fetches_only_the_selected_files(tmp_path: Path) -> None:
    text = plan(tmp_path).dockerfile.read_text()
    weights = text.split("AS weights", 1)[1].split("FROM", 1)[0]
    assert f"--commit {SHA}" in weights
    assert "--files config.json preprocessor_config.json model.safetensors" in weights
    assert "HF_ENDPOINT=https://hub.example" in weights
    assert "--mount=type=cache,target=/root/.cache/huggingface" in weights
    assert "--network=host" not in weights


def test_a_loopback_endpoint_gets_the_hosts_network_for_the_weights_step_only(tmp_path: Path) -> None:
    built = plan(tmp_path, environ={"HF_ENDPOINT": "http://127.0.0.1:5555"})
    text = built.dockerfile.read_text()
    assert built.allow == ["network.host"]
    assert text.count("--network=host") == 1
    assert "--network=host" in text.split("AS weights", 1)[1]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:1", True),
        ("http://localhost:80", True),
        ("http://[::1]:9", True),
        ("https://huggingface.co", False),
        ("http://10.0.0.5", False),
    ],
)
def test_loopback_detection(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_the_token_is_a_secret_file_and_nowhere_in_the_context(tmp_path: Path) -> None:
    built = plan(tmp_path, environ={"HF_TOKEN": TOKEN})
    secret = next(item for item in built.secrets if item.startswith("id=hf_token,"))
    path = Path(secret.split("src=", 1)[1])
    assert path.read_text() == TOKEN and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.is_relative_to(built.context)
    for file in built.context.rglob("*"):
        if file.is_file():
            assert TOKEN not in file.read_text(errors="replace"), file
    assert TOKEN not in json.dumps(built.labels)


def test_pip_configuration_secret(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    built = plan(
        tmp_path,
        pip_index_url="https://mirror/simple",
        pip_extra_index_url=("https://extra/simple",),
        pip_find_links=str(wheels),
        ca_cert=str(ca),
    )
    pip_conf = Path(
        next(item for item in built.secrets if item.startswith("id=pip_conf,")).split("src=")[1]
    ).read_text()
    assert "index-url = https://mirror/simple" in pip_conf
    assert "extra-index-url = https://extra/simple" in pip_conf and TORCH_CPU_INDEX not in pip_conf
    assert "find-links = /wheels" in pip_conf
    assert f"id=ca_cert,src={ca.resolve()}" in built.secrets
    assert built.build_contexts == {"wheels": str(wheels.resolve())}
    text = built.dockerfile.read_text()
    assert text.count("--mount=type=bind,from=wheels,target=/wheels") == 2  # deps and fetcher only
    assert "--mount=type=bind,from=wheels" not in text.split("AS weights", 1)[1]
    assert "SSL_CERT_FILE=/run/secrets/ca_cert" in text


def test_cpu_images_find_the_cpu_torch_wheel_by_default(tmp_path: Path) -> None:
    built = plan(tmp_path)
    pip_conf = Path(
        next(item for item in built.secrets if item.startswith("id=pip_conf,")).split("src=")[1]
    ).read_text()
    assert f"extra-index-url = {TORCH_CPU_INDEX}" in pip_conf


def test_cuda_images_default_to_a_cuda_base_and_do_not_add_the_cpu_index(tmp_path: Path) -> None:
    built = plan(tmp_path, device="cuda")
    assert "cuda" in built.base_image
    assert 'BAKE_DEVICE="cuda"' in built.dockerfile.read_text()
    pip_conf = Path(
        next(item for item in built.secrets if item.startswith("id=pip_conf,")).split("src=")[1]
    ).read_text()
    assert TORCH_CPU_INDEX not in pip_conf


def test_bin_weights_are_converted_with_torch_in_the_fetcher_only(tmp_path: Path) -> None:
    text = plan(tmp_path, model=hub_model(convert=True)).dockerfile.read_text()
    fetcher = text.split("AS fetcher", 1)[1].split("FROM", 1)[0]
    assert "huggingface_hub safetensors torch" in fetcher
    assert "fetch_weights.py hub --convert" in text


def test_local_model_comes_through_a_named_context(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    model = ResolvedModel(
        id=str(folder),
        revision="local",
        commit_sha="f" * 64,
        task="image-classification",
        files=(ModelFile("config.json", 1, "a" * 64),),
        convert_to_safetensors=False,
        local_dir=folder,
    )
    built = plan(tmp_path, model=model)
    text = built.dockerfile.read_text()
    assert built.build_contexts["model"] == str(folder)
    assert "--mount=type=bind,from=model,target=/model" in text
    assert 'BAKE_MODEL="/opt/bake/model"' in text
    assert built.tag == "bake/my-model:ffffffffffff"


def test_labels_carry_model_sha_task_hashes_and_settings(tmp_path: Path) -> None:
    built = plan(tmp_path, max_batch_size=4)
    labels = built.labels
    assert labels["org.opencontainers.image.revision"] == SHA
    assert labels["org.opencontainers.image.source"] == "https://hub.example/org/Tiny-Model"
    assert labels["org.opencontainers.image.base.name"] == "python:3.11-slim-bookworm"
    facts = ImageFacts.from_labels(labels)
    assert (
        facts.model == "org/Tiny-Model" and facts.commit_sha == SHA and facts.task == "image-classification"
    )
    assert facts.weights["model.safetensors"] == "ab" * 32
    assert facts.serve.max_batch_size == 4 and facts.port == 8080


def test_default_tag_is_the_model_name_and_short_sha() -> None:
    assert default_tag(hub_model()) == f"bake/tiny-model:{SHA[:12]}"


def test_context_holds_the_serve_code_the_pins_and_the_weights_script(tmp_path: Path) -> None:
    context = plan(tmp_path).context
    assert (context / "serve" / "__main__.py").is_file() and not list(context.rglob("__pycache__"))
    assert (context / "fetch_weights.py").is_file()
    assert "transformers==" in (context / "constraints.txt").read_text()


def test_runtime_requirements_come_from_the_serve_extra() -> None:
    names = {
        re.split(r"[<>=\[ ]", requirement)[0].lower()
        for requirement in runtime_requirements("image-classification")
    }
    assert {"torch", "transformers", "fastapi", "uvicorn", "pillow", "safetensors"} <= names
    assert "python-on-whales" not in names and "tomlkit" not in names and "diffusers" not in names
    assert any(requirement.startswith("diffusers") for requirement in runtime_requirements("text-to-image"))


def test_push_needs_a_registry_in_the_tag(tmp_path: Path) -> None:
    from bake.errors import ConfigError

    with pytest.raises(ConfigError, match="--tag REGISTRY/NAME:TAG"):
        plan(tmp_path, push=True)
    (tmp_path / "ok").mkdir()
    assert plan(tmp_path / "ok", push=True, tag="registry.example:5000/team/model:v1").push
