"""Configuration: flags > environment > bake.toml > defaults, merged once; `bake init`'s file round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from bake.config import load_config
from bake.env import Environment, read_environment
from bake.errors import ConfigError
from bake.init_config import render_config, write_config
from bake.options import OPTIONS, find


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
    path = write(tmp_path, '[model]\nid = "file/model"\nrevision = "v-file"\n[serve]\nmax_batch_size = 4\nmax_queue = 10\n')
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


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    path = write(tmp_path, '[model]\nid = "models/mine"\n[build]\nca_cert = "ca.pem"\npip_find_links = "wheels"\n')
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
    from serve.settings import Settings

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
        ('[serve]\nmax_batch_size = "eight"\n', "serve.max_batch_size='eight' is not a valid int"),
        ('[build]\ndevice = "tpu"\n', "build.device='tpu' is not one of"),
        ("[serve]\nmax_queue = -1\n", "must not be negative"),
        ("[serve]\nmax_batch_size = 0\n", "at least 1"),
        ("[serve]\nport = 70000\n", "between 1 and 65535"),
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
