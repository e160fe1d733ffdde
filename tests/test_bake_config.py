"""Configuration: flags > environment > bake.toml > defaults, merged once; `bake init`'s file round-trips."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import tomlkit

from bake.config import check_build, load_config
from bake.env import Environment, read_environment
from bake.errors import ConfigError, ModelNotFound
from bake.init_config import render_config, write_config
from bake.options import OPTIONS, find
from serve.contract.errors import UserError
from serve.contract.settings import Settings, specs


def env(**variables: str) -> Environment:
    return read_environment(variables)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bake.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config({}, env())
    assert config.model.revision == "main" and config.model.task is None
    assert config.build.device == "cpu" and config.build.push is False
    assert config.serve.max_batch_size == 8 and config.launch.target == "local"
    assert config.file is None


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[model]\nid = "file/model"\nrevision = "v-file"\n[serve]\nmax_batch_size = 4\nmax_queue = 10\n',
    )
    variables = env(BAKE_REVISION="v-env", BAKE_MAX_BATCH_SIZE="16")
    config = load_config({"revision": "v-flag"}, variables, path)
    assert config.model.id == "file/model"  # file only
    assert config.model.revision == "v-flag"  # flag > env > file
    assert config.serve.max_batch_size == 16  # env > file
    assert config.serve.max_queue == 10  # file > default
    assert config.serve.max_wait_ms == 10.0  # default
    assert config.file == path


def test_bake_toml_in_the_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, '[build]\ndevice = "cuda"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config({}, env()).build.device == "cuda"


def test_relative_paths_in_the_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    path = write(
        tmp_path, '[model]\nid = "models/mine"\n[build]\nca_cert = "ca.pem"\npip_find_links = "wheels"\n'
    )
    monkeypatch.chdir("/")
    config = load_config({}, env(), path)
    assert config.model.local_dir == tmp_path / "models" / "mine"
    assert config.build.ca_cert == tmp_path / "ca.pem"
    assert config.build.pip_find_links == tmp_path / "wheels"


def test_a_hub_id_in_the_file_is_not_mistaken_for_a_path(tmp_path: Path) -> None:
    config = load_config({}, env(), write(tmp_path, '[model]\nid = "microsoft/resnet-50"\n'))
    assert config.model.id == "microsoft/resnet-50" and config.model.local_dir is None


def test_list_settings_from_flags_environment_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[build]\npip_extra_index_url = ["https://a/simple"]\n')
    assert load_config({}, env(), path).build.pip_extra_index_urls == ("https://a/simple",)
    from_env = load_config({}, env(BAKE_PIP_EXTRA_INDEX_URL="https://b/simple, https://c/simple"), path)
    assert from_env.build.pip_extra_index_urls == ("https://b/simple", "https://c/simple")
    from_flags = load_config({"pip_extra_index_url": ("https://d/simple",)}, env(), path)
    assert from_flags.build.pip_extra_index_urls == ("https://d/simple",)


def test_serve_settings_become_the_runtimes_variables(tmp_path: Path) -> None:
    config = load_config({"max_batch_size": 32, "jpeg_draft": True}, env(), write(tmp_path, ""))
    variables = config.serve.environment()
    assert variables["BAKE_MAX_BATCH_SIZE"] == "32" and variables["BAKE_JPEG_DRAFT"] == "1"
    assert variables["PORT"] == "8080"


def test_every_serve_variable_bake_sets_is_one_the_runtime_reads(tmp_path: Path) -> None:
    variables = load_config({}, env(), write(tmp_path, "")).serve.environment()
    settings = Settings.from_env({"BAKE_MODEL": "org/model", **variables})
    for option in OPTIONS:
        if option.section == "serve":
            assert getattr(settings, option.key) == getattr(load_config({}, env(), None).serve, option.key)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[model\nid = 1", "cannot read"),
        ("[nonsense]\nx = 1\n", "unknown table [nonsense]"),
        ("[serve]\nbatch = 3\n", "unknown key serve.batch"),
        ('[serve]\nmax_batch_size = "eight"\n', "serve.max_batch_size='eight' is not an integer"),
        ('[build]\ndevice = "tpu"\n', "build.device='tpu' is not one of"),
        ("[serve]\nmax_queue = -1\n", "serve.max_queue=-1 is below the minimum 1"),
        ("[serve]\nmax_batch_size = 0\n", "below the minimum 1"),
        ("[serve]\nport = 70000\n", "serve.port=70000 is above the maximum 65535"),
        ("[serve]\ndefault_steps = 9\nmax_steps = 5\n", "BAKE_DEFAULT_STEPS=9 is above BAKE_MAX_STEPS=5"),
        ("[launch]\nhost_port = 0\n", "--host-port 0 is not a TCP port"),
        ('[launch]\nname = "My_Model"\ntarget = "kubernetes"\n', "invalid Kubernetes name 'My_Model'"),
        ("[build]\npush = true\n", "--push needs to know where to push"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config({}, env(), write(tmp_path, text))
    assert fragment in str(error.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BAKE_MAX_BATCH_SIZE='lots'"):
        load_config({}, env(BAKE_MAX_BATCH_SIZE="lots"), write(tmp_path, ""))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, env(), tmp_path / "nope.toml")


def test_init_lists_every_setting_with_its_flag_and_variable() -> None:
    text = render_config()
    for option in OPTIONS:
        assert f"# {option.key} = " in text, option.name
        assert option.cli_flag in text
        if option.env:
            assert option.env in text


def test_init_file_parses_to_the_defaults_and_its_values_are_read_back(tmp_path: Path) -> None:
    path = tmp_path / "bake.toml"
    write_config(path, {"model.id": "microsoft/resnet-50"})
    document = tomlkit.parse(path.read_text())
    assert document["model"]["id"] == "microsoft/resnet-50"
    config = load_config({}, env(), path)
    assert config.model.id == "microsoft/resnet-50"
    assert config.serve.max_batch_size == find("serve.max_batch_size").default
    uncommented = path.read_text().replace("# max_batch_size = 8", "max_batch_size = 12")
    path.write_text(uncommented)
    assert load_config({}, env(), path).serve.max_batch_size == 12


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "bake.toml"
    write_config(path)
    with pytest.raises(ConfigError, match="already exists"):
        write_config(path)
    write_config(path, {"model.id": "x/y"}, force=True)
    assert 'id = "x/y"' in path.read_text()


@pytest.mark.parametrize(
    ("flags", "error", "fragment"),
    [
        ({}, ModelNotFound, "pass --model"),
        (
            {"model": "org/name", "ca_cert": "/no/such.pem"},
            ConfigError,
            "--ca-cert /no/such.pem is not a file",
        ),
        ({"model": "org/name", "pip_find_links": "/no/wheels"}, ConfigError, "is not a directory"),
    ],
)
def test_a_build_is_checked_before_any_work(
    tmp_path: Path, flags: dict[str, str], error: type[Exception], fragment: str
) -> None:
    config = load_config(flags, env(), write(tmp_path, ""))
    with pytest.raises(error, match=fragment):
        check_build(config)


def test_host_variables_that_share_a_name_with_the_runtimes_mean_the_same() -> None:
    """A variable set on the host means what it means inside the image, or the host does not read it."""
    runtime = {spec.env: spec for spec in specs(Settings)}
    identity = {
        "model.revision": "revision",
        "model.task": "task",
    }  # written into the image as they are given
    for option in OPTIONS:
        if option.env in runtime and option.name not in identity:
            assert option.spec is not None and option.spec.env == option.env, option.name
    for name, key in identity.items():
        assert runtime[find(name).env].key == key
    assert find("serve.port").env == "BAKE_PORT" and find("build.device").env == "BAKE_BUILD_DEVICE"


def test_generic_port_and_runtime_device_variables_do_not_change_a_build(tmp_path: Path) -> None:
    config = load_config({}, env(PORT="9999", BAKE_DEVICE="auto"), write(tmp_path, ""))
    assert config.serve.port == 8080 and config.build.device == "cpu"
    assert load_config({}, env(BAKE_PORT="9999"), write(tmp_path, "")).serve.port == 9999


def test_a_launch_is_checked_before_the_engine_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docker target without --host, a Fly deploy without a token: refused before any engine is reached
    (DOCKER_HOST points at nothing, so reaching for the engine would fail differently)."""
    from bake.launch.commands import LaunchRequest, launch

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    request = LaunchRequest(
        "img", {}, {}, dry_run=False, kserve=False, apply=False, namespace="d", max_scale=1
    )
    for flags, fragment in (({"target": "docker"}, "needs an engine"), ({"target": "fly"}, "FLY_API_TOKEN")):
        config = load_config(flags, env(), write(tmp_path, ""))
        with pytest.raises(UserError, match=fragment):
            launch(config, env(), request, io.StringIO())
