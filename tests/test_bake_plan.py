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
from bake.package_sources import CPU_TORCH_VERSION, TORCH_CPU_INDEX, check_reachable, configured_sources
from bake.plan import default_tag, is_loopback, plan_build, runtime_requirements

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_secret_token_value"


def hub_model(
    *, convert: bool = False, task: str = "image-classification", packages: tuple[str, ...] = ()
) -> ResolvedModel:
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
        packages=packages,
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
    work.mkdir(parents=True)
    return plan_build(config(tmp_path, **flags), model or hub_model(), environment, work)


def stages(dockerfile: str) -> list[tuple[str, str]]:
    return re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)


def stage(dockerfile: str, name: str) -> str:
    """The text of one stage of the Dockerfile."""
    return dockerfile.split(f" AS {name}\n", 1)[1].split("\nFROM ", 1)[0]


def secret(built, name: str) -> str:
    return Path(
        next(item for item in built.secrets if item.startswith(f"id={name},")).split("src=")[1]
    ).read_text()


def test_stages_are_deps_then_weights_then_runtime_and_weights_do_not_depend_on_deps(tmp_path: Path) -> None:
    text = plan(tmp_path).dockerfile.read_text()
    assert stages(text) == [
        ("python:3.11-slim-bookworm", "base"),
        ("base", "tools"),
        ("tools", "deps"),
        ("deps", "venv"),
        ("venv", "sbom"),
        ("tools", "fetcher"),
        ("fetcher", "weights"),
        ("venv", "compile"),
        ("base", "runtime"),
        ("scratch", "compile-report"),
    ]
    runtime = stage(text, "runtime")
    assert runtime.index("--from=venv /opt/bake/venv") < runtime.index("--from=weights")
    assert (
        runtime.index("--from=weights")
        < runtime.index("--from=compile")
        < runtime.index("COPY --link serve")
        < runtime.index("ENV BAKE_MODEL")
    )
    assert "--from=deps" not in runtime and "--from=tools" not in runtime, "no installer reaches the image"


def test_the_deps_stage_is_keyed_by_the_package_sources_and_nothing_else_sees_them(tmp_path: Path) -> None:
    first = plan(tmp_path / "a", pip_index_url="https://mirror.example/simple")
    second = plan(tmp_path / "b", pip_index_url="https://other.example/simple")
    for built, url in ((first, "https://mirror.example/simple"), (second, "https://other.example/simple")):
        assert f"packages: --index-url {url}" in (built.context / "package-sources.txt").read_text()
    text = first.dockerfile.read_text()
    assert "package-sources.txt" in stage(text, "deps").split("\nRUN", 1)[0]
    assert text.count("package-sources.txt") == 1, "the weights stage must not be rebuilt by an index change"
    assert first.dockerfile.read_text() == second.dockerfile.read_text(), (
        "the index is in a file, not the text"
    )


def test_credentials_of_an_index_are_only_in_its_secret(tmp_path: Path) -> None:
    url = "https://bot:s3cret@mirror.example/simple"
    built = plan(tmp_path, pip_index_url=url)
    assert url in secret(built, "package_index")
    for file in built.context.rglob("*"):
        if file.is_file():
            assert "s3cret" not in file.read_text(errors="replace"), file
    assert "https://***@mirror.example/simple" in (built.context / "package-sources.txt").read_text()


def test_every_install_step_caps_retries_and_timeouts(tmp_path: Path) -> None:
    for installer, caps in (
        ("uv", "UV_HTTP_TIMEOUT=20 UV_HTTP_RETRIES=2"),
        ("pip", "PIP_RETRIES=2 PIP_TIMEOUT=20"),
    ):
        text = plan(tmp_path / installer, installer=installer).dockerfile.read_text()
        for name in ("deps", "fetcher"):
            assert caps in stage(text, name), (installer, name)
    assert "PIP_RETRIES=2 PIP_TIMEOUT=20" in stage(plan(tmp_path / "tools").dockerfile.read_text(), "tools")


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


def test_index_arguments_secrets(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    built = plan(
        tmp_path,
        pip_index_url="https://mirror/simple",
        pip_extra_index_url=("https://extra/simple",),
        pip_find_links=str(wheels),
        torch_index_url="https://torch-mirror/whl/cpu",
        ca_cert=str(ca),
    )
    assert secret(built, "package_index").split() == [
        "--index-url",
        "https://mirror/simple",
        "--extra-index-url",
        "https://extra/simple",
        "--find-links",
        "/wheels",
    ]
    assert secret(built, "torch_index").split() == [
        "--index-url",
        "https://torch-mirror/whl/cpu",
        "--find-links",
        "/wheels",
    ]
    assert f"id=ca_cert,src={ca.resolve()}" in built.secrets
    assert built.build_contexts == {"wheels": str(wheels.resolve())}
    text = built.dockerfile.read_text()
    assert text.count("--mount=type=bind,from=wheels,target=/wheels") == 3  # tools, deps and fetcher only
    assert "--mount=type=bind,from=wheels" not in stage(text, "weights") + stage(text, "runtime")
    assert "SSL_CERT_FILE=/run/secrets/ca_cert" in text
    assert "$(cat /run/secrets/package_index)" in stage(text, "deps")


def test_a_cpu_image_pins_a_cpu_torch_from_pytorchs_index_whatever_the_package_index(tmp_path: Path) -> None:
    built = plan(tmp_path, pip_index_url="https://pypi-mirror.example/simple")
    assert secret(built, "torch_index").split() == ["--index-url", TORCH_CPU_INDEX]
    pin = f"torch=={CPU_TORCH_VERSION}+cpu"
    assert pin in (built.context / "requirements.txt").read_text().splitlines()
    deps = stage(built.dockerfile.read_text(), "deps")
    assert f"--no-deps $(cat /run/secrets/torch_index) {pin}" in deps
    assert deps.index("torch_index) torch") < deps.index("package_index)"), "torch first, on its own"
    check = stage(built.dockerfile.read_text(), "venv")
    assert (
        f"check_runtime.py --device cpu --task image-classification --torch-version {CPU_TORCH_VERSION}+cpu"
        in check
    )


def test_a_local_cpu_torch_wheel_is_installed_without_any_index(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.12.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    built = plan(tmp_path, pip_find_links=str(wheels), torch_version="2.12.1")
    assert secret(built, "torch_index").split() == ["--no-index", "--find-links", "/wheels"]
    assert "torch==2.12.1+cpu" in (built.context / "requirements.txt").read_text().splitlines()


def test_cuda_images_default_to_a_cuda_base_and_reuse_its_torch(tmp_path: Path) -> None:
    built = plan(tmp_path, device="cuda")
    assert "cuda" in built.base_image
    text = built.dockerfile.read_text()
    assert 'BAKE_DEVICE="cuda"' in text
    assert secret(built, "torch_index").strip() == ""
    assert "torch>=" in (built.context / "requirements.txt").read_text()
    deps = stage(text, "deps")
    assert "torch_index" not in deps.split("\n    ", 6)[-1] and "echo torch >> /opt/bake/excludes.txt" in deps
    assert "--device cuda --task image-classification\n" in stage(text, "venv") + "\n"


def test_bin_weights_are_converted_with_a_cpu_torch_in_the_fetcher_only(tmp_path: Path) -> None:
    for device in ("cpu", "cuda"):
        text = plan(tmp_path / device, model=hub_model(convert=True), device=device).dockerfile.read_text()
        fetcher = stage(text, "fetcher")
        pin = f"torch=={CPU_TORCH_VERSION}+cpu"
        assert f"--no-deps $(cat /run/secrets/torch_index) {pin}" in fetcher
        assert f"huggingface_hub safetensors {pin} numpy -c /opt/bake/constraints.txt" in fetcher
        assert "fetch_weights.py hub --convert" in text


def test_the_image_is_slimmed_unless_build_tools_are_kept(tmp_path: Path) -> None:
    slim = plan(tmp_path / "slim").dockerfile.read_text()
    assert "RUN python3 /opt/bake/slim_venv.py /opt/bake/venv" in stage(slim, "venv")
    assert "python3 -m venv --system-site-packages --without-pip /opt/bake/venv" in stage(slim, "deps")
    assert "--excludes /opt/bake/excludes.txt" in stage(slim, "deps")
    kept = plan(tmp_path / "kept", keep_build_tools=True).dockerfile.read_text()
    assert "slim_venv.py /opt/bake/venv" not in kept and "--keep-build-tools" in stage(kept, "venv")
    assert "python3 -m venv --system-site-packages /opt/bake/venv" in stage(kept, "deps")
    assert "check_runtime.py" in stage(kept, "venv"), "the check runs either way"


def test_a_models_extra_packages_are_installed_kept_and_checked_in_the_slim_venv(tmp_path: Path) -> None:
    extra = ("ftfy", "beautifulsoup4", "sentencepiece", "protobuf")
    built = plan(tmp_path, model=hub_model(task="text-to-image", packages=extra))
    requirements = (built.context / "requirements.txt").read_text().splitlines()
    assert set(extra) <= set(requirements) and f"torch=={CPU_TORCH_VERSION}+cpu" in requirements
    excluded = {
        line.split("=")[0].strip().lower()
        for line in (built.context / "excludes.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not excluded & set(extra), "uv must not leave out a package the model needs"
    venv = stage(built.dockerfile.read_text(), "venv")
    assert (
        "check_runtime.py --device cpu --task text-to-image --torch-version 2.13.0+cpu "
        "--import ftfy --import bs4 --import sentencepiece --import google.protobuf\n" in venv + "\n"
    )
    assert venv.index("slim_venv.py") < venv.index("check_runtime.py"), "checked after slimming"


def test_a_cpu_image_that_needs_torchvision_gets_its_cpu_build_with_torch(tmp_path: Path) -> None:
    built = plan(tmp_path, model=hub_model(packages=("timm", "torchvision")))
    requirements = (built.context / "requirements.txt").read_text().splitlines()
    assert f"torch=={CPU_TORCH_VERSION}+cpu" in requirements and "torchvision==0.28.0+cpu" in requirements
    assert "timm" in requirements
    text = built.dockerfile.read_text()
    deps = stage(text, "deps")
    assert (
        f"--no-deps $(cat /run/secrets/torch_index) torch=={CPU_TORCH_VERSION}+cpu torchvision==0.28.0+cpu"
        in deps
    )
    assert "--import timm --import torchvision" in stage(text, "venv")
    cuda = plan(tmp_path / "cuda", model=hub_model(packages=("timm", "torchvision")), device="cuda")
    assert "torchvision" in (cuda.context / "requirements.txt").read_text().splitlines(), (
        "a CUDA image takes torchvision from the package index, like its torch"
    )


def test_every_extra_package_a_model_may_need_is_known_to_the_build() -> None:
    from serve.contract import pipelines
    from serve.contract.models import IMAGE_CLASSIFIERS
    from serve.contract.packages import BY_NAME

    used = {package for kind in IMAGE_CLASSIFIERS.values() for package in kind.packages}
    used |= {package for family in pipelines.FAMILIES for package in family.packages}
    used |= set(pipelines.SENTENCEPIECE)
    assert used and all(BY_NAME[package.name].module == package.module for package in used)


def test_the_pip_installer_uses_the_virtualenvs_own_pip(tmp_path: Path) -> None:
    text = plan(tmp_path, installer="pip").dockerfile.read_text()
    deps = stage(text, "deps")
    assert (
        "/opt/bake/tools/bin/uv" not in text
        and "build-tools.txt" not in stage(text, "tools").split("RUN", 1)[1]
    )
    assert "/opt/bake/venv/bin/pip install $(cat /run/secrets/package_index) --no-compile -r" in deps
    assert "--excludes" not in deps and "excludes.txt" not in deps.split("RUN", 1)[1]
    assert "--mount=type=cache,target=/root/.cache/pip" in deps
    kept = plan(tmp_path / "kept", installer="pip", keep_build_tools=True).dockerfile.read_text()
    assert "--no-compile" not in stage(kept, "deps"), "kept as pip leaves it: every module compiled"


def test_an_index_on_this_machine_gets_the_hosts_network_for_the_install_steps(tmp_path: Path) -> None:
    built = plan(tmp_path, torch_index_url="http://127.0.0.1:8765/simple")
    text = built.dockerfile.read_text()
    assert built.allow == ["network.host"]
    for name in ("tools", "deps", "fetcher"):
        assert "RUN --network=host " in stage(text, name), name
    assert "--network=host" not in stage(text, "weights") + stage(text, "runtime")


def test_checked_sources_are_what_the_build_uses(tmp_path: Path) -> None:
    checked = configured_sources(config(tmp_path).build, cpu_torch=True)
    work = tmp_path / "w"
    work.mkdir()
    built = plan_build(
        config(tmp_path),
        hub_model(),
        read_environment({}),
        work,
        check_reachable(checked, ca_cert=None, remote_engine=True, timeout=0.01)[0],
    )
    assert secret(built, "torch_index").split() == ["--index-url", TORCH_CPU_INDEX]


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


def test_context_holds_the_serve_code_the_pins_and_the_build_steps_scripts(tmp_path: Path) -> None:
    context = plan(tmp_path).context
    assert (context / "serve" / "__main__.py").is_file() and not list(context.rglob("__pycache__"))
    for name in ("fetch_weights.py", "slim_venv.py", "elf_symbols.py", "check_runtime.py", "excludes.txt"):
        assert (context / name).is_file(), name
    assert "transformers==" in (context / "constraints.txt").read_text()
    assert "torch==" not in (context / "constraints.txt").read_text(), (
        "the weights stage does not see torch's pin"
    )
    assert re.search(r"^uv==[\d.]+$", (context / "build-tools.txt").read_text(), re.MULTILINE)


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
