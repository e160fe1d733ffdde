"""Unit tests for `serve.contract.settings`: reading and validating the runtime's environment, and writing the
image's settings back as variables."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from serve.contract.errors import SettingsError
from serve.contract.settings import ServeSettings, Settings, env_name, parse_flag, specs

MODEL = "org/some-model"


def settings(**env: str) -> Settings:
    """`Settings.from_env` with BAKE_MODEL set and `env` on top."""
    return Settings.from_env({"BAKE_MODEL": MODEL, **env})


def test_defaults() -> None:
    loaded = settings()
    assert loaded == Settings(model=MODEL)
    assert loaded.revision == "main"
    assert loaded.task is None
    assert (loaded.device, loaded.dtype) == ("auto", "auto")
    assert (loaded.max_batch_size, loaded.max_wait_ms, loaded.max_queue) == (8, 10.0, 256)
    assert (loaded.timeout_s, loaded.idle_timeout_s, loaded.drain_timeout_s) == (30.0, 0.0, 30.0)
    assert loaded.keep_alive_s == 75.0  # past nginx's 60 s upstream keep-alive and httpx's 5 s pool expiry
    assert loaded.api_key is None
    assert (loaded.host, loaded.port) == ("0.0.0.0", 8080)
    assert loaded.max_body_bytes == 20 * 1024 * 1024
    assert loaded.max_image_pixels == 40_000_000
    assert loaded.workers == 0
    assert loaded.worker_count == 2 * max(1, os.cpu_count() or 1)
    assert (loaded.jpeg_draft, loaded.torchscript) == (False, True)
    assert loaded.cpu_threads == 0
    assert loaded.offline is False
    assert loaded.log_level == "info"
    assert (loaded.attention_slicing, loaded.vae_tiling) == (False, False)


def test_unrelated_variables_are_ignored() -> None:
    assert settings(BAKE_UNKNOWN="x", PATH="/usr/bin", HOME="/root") == Settings(model=MODEL)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKE_MODEL", "from/environ")
    monkeypatch.setenv("BAKE_MAX_BATCH_SIZE", "3")
    loaded = Settings.from_env()
    assert (loaded.model, loaded.max_batch_size) == ("from/environ", 3)


@pytest.mark.parametrize("value", [None, "", "   ", "\t\n"])
def test_model_is_required(value: str | None) -> None:
    env = {} if value is None else {"BAKE_MODEL": value}
    with pytest.raises(SettingsError, match="BAKE_MODEL"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("BAKE_MODEL", "  /models/local  ", "model", "/models/local"),
        ("BAKE_REVISION", "v1.2", "revision", "v1.2"),
        ("BAKE_REVISION", "  ", "revision", "main"),
        ("BAKE_TASK", " image-classification ", "task", "image-classification"),
        ("BAKE_TASK", "", "task", None),
        ("BAKE_DEVICE", "cpu", "device", "cpu"),
        ("BAKE_DEVICE", "CUDA", "device", "cuda"),
        ("BAKE_DEVICE", "cuda:1", "device", "cuda:1"),
        ("BAKE_DEVICE", " Cuda:12 ", "device", "cuda:12"),
        ("BAKE_DEVICE", "", "device", "auto"),
        ("BAKE_DTYPE", "float16", "dtype", "float16"),
        ("BAKE_DTYPE", "BFloat16", "dtype", "bfloat16"),
        ("BAKE_DTYPE", "float32", "dtype", "float32"),
        ("BAKE_MAX_BATCH_SIZE", "32", "max_batch_size", 32),
        ("BAKE_MAX_BATCH_SIZE", " 1 ", "max_batch_size", 1),
        ("BAKE_MAX_WAIT_MS", "2.5", "max_wait_ms", 2.5),
        ("BAKE_MAX_WAIT_MS", "0", "max_wait_ms", 0.0),
        ("BAKE_MAX_QUEUE", "1000", "max_queue", 1000),
        ("BAKE_TIMEOUT_S", "1e3", "timeout_s", 1000.0),
        ("BAKE_TIMEOUT_S", "0.001", "timeout_s", 0.001),
        ("BAKE_IDLE_TIMEOUT_S", "300", "idle_timeout_s", 300.0),
        ("BAKE_DRAIN_TIMEOUT_S", "0", "drain_timeout_s", 0.0),
        ("BAKE_KEEP_ALIVE_S", "600", "keep_alive_s", 600.0),
        ("BAKE_API_KEY", "s3cret", "api_key", "s3cret"),
        ("BAKE_API_KEY", "", "api_key", None),
        ("BAKE_HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("BAKE_HOST", " ", "host", "0.0.0.0"),
        ("PORT", "9000", "port", 9000),
        ("PORT", "1", "port", 1),
        ("PORT", "65535", "port", 65535),
        ("BAKE_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
        ("BAKE_MAX_IMAGE_PIXELS", "1000000", "max_image_pixels", 1_000_000),
        ("BAKE_WORKERS", "3", "workers", 3),
        ("BAKE_JPEG_DRAFT", "1", "jpeg_draft", True),
        ("BAKE_JPEG_DRAFT", "on", "jpeg_draft", True),
        ("BAKE_JPEG_DRAFT", "0", "jpeg_draft", False),
        ("BAKE_TORCHSCRIPT", "False", "torchscript", False),
        ("BAKE_TORCHSCRIPT", "yes", "torchscript", True),
        ("BAKE_CPU_THREADS", "0", "cpu_threads", 0),
        ("BAKE_CPU_THREADS", "6", "cpu_threads", 6),
        ("HF_HUB_OFFLINE", "1", "offline", True),
        ("HF_HUB_OFFLINE", "0", "offline", False),
        ("HF_HUB_OFFLINE", "", "offline", False),
        ("TRANSFORMERS_OFFLINE", "TRUE", "offline", True),
        ("BAKE_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("BAKE_LOG_LEVEL", "warning", "log_level", "warning"),
        ("BAKE_ATTENTION_SLICING", "on", "attention_slicing", True),
        ("BAKE_VAE_TILING", " 1 ", "vae_tiling", True),
        ("BAKE_MAX_STEPS", "500", "max_steps", 500),
        ("BAKE_MAX_IMAGE_AREA", "262144", "max_image_area", 262144),
        ("BAKE_MAX_IMAGES_PER_PROMPT", "2", "max_images_per_prompt", 2),
        ("BAKE_DEFAULT_STEPS", "4", "default_steps", 4),
        ("BAKE_DEFAULT_STEPS", "0", "default_steps", 0),
        ("BAKE_DEFAULT_GUIDANCE", "0", "default_guidance", 0.0),
        ("BAKE_DEFAULT_GUIDANCE", "7.5", "default_guidance", 7.5),
    ],
)
def test_each_variable_is_parsed(variable: str, raw: str, field: str, expected: Any) -> None:
    loaded = Settings.from_env({"BAKE_MODEL": MODEL, variable: raw})
    value = getattr(loaded, field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " on "])
def test_true_flags(raw: str) -> None:
    assert settings(BAKE_ATTENTION_SLICING=raw).attention_slicing is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "Off", " off "])
def test_false_flags(raw: str) -> None:
    assert settings(BAKE_TORCHSCRIPT=raw).torchscript is False


@pytest.mark.parametrize(
    ("hub", "transformers", "expected"),
    [
        (None, None, False),
        ("1", None, True),
        (None, "1", True),
        ("0", "1", True),
        ("1", "0", True),
        ("0", "0", False),
    ],
)
def test_offline_from_either_variable(hub: str | None, transformers: str | None, expected: bool) -> None:
    env = {"BAKE_MODEL": MODEL}
    if hub is not None:
        env["HF_HUB_OFFLINE"] = hub
    if transformers is not None:
        env["TRANSFORMERS_OFFLINE"] = transformers
    assert Settings.from_env(env).offline is expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("BAKE_DEVICE", "gpu"),
        ("BAKE_DEVICE", "cuda:"),
        ("BAKE_DEVICE", "cuda:x"),
        ("BAKE_DEVICE", "cuda:-1"),
        ("BAKE_DEVICE", "mps"),
        ("BAKE_DTYPE", "fp16"),
        ("BAKE_DTYPE", "int8"),
        ("BAKE_MAX_BATCH_SIZE", "eight"),
        ("BAKE_MAX_BATCH_SIZE", "8.0"),
        ("BAKE_MAX_BATCH_SIZE", "0"),
        ("BAKE_MAX_BATCH_SIZE", "-4"),
        ("BAKE_MAX_WAIT_MS", "soon"),
        ("BAKE_MAX_WAIT_MS", "-1"),
        ("BAKE_MAX_QUEUE", "0"),
        ("BAKE_MAX_QUEUE", "1.5"),
        ("BAKE_TIMEOUT_S", "0"),
        ("BAKE_TIMEOUT_S", "-inf"),
        ("BAKE_TIMEOUT_S", "30s"),
        ("BAKE_IDLE_TIMEOUT_S", "-0.5"),
        ("BAKE_IDLE_TIMEOUT_S", "never"),
        ("BAKE_DRAIN_TIMEOUT_S", "-1"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "http"),
        ("BAKE_MAX_BODY_BYTES", "0"),
        ("BAKE_MAX_BODY_BYTES", "20MB"),
        ("BAKE_MAX_IMAGE_PIXELS", "0"),
        ("BAKE_MAX_IMAGE_PIXELS", "4e7"),
        ("BAKE_WORKERS", "-1"),
        ("BAKE_WORKERS", "all"),
        ("BAKE_JPEG_DRAFT", "maybe"),
        ("BAKE_JPEG_DRAFT", "2"),
        ("BAKE_TORCHSCRIPT", "enabled"),
        ("BAKE_CPU_THREADS", "-1"),
        ("BAKE_CPU_THREADS", "auto"),
        ("HF_HUB_OFFLINE", "sometimes"),
        ("TRANSFORMERS_OFFLINE", "y"),
        ("BAKE_LOG_LEVEL", "verbose"),
        ("BAKE_LOG_LEVEL", "critical"),
        ("BAKE_ATTENTION_SLICING", "auto"),
        ("BAKE_VAE_TILING", "t"),
        ("BAKE_MAX_STEPS", "0"),
        ("BAKE_MAX_IMAGE_AREA", "1e6"),
        ("BAKE_MAX_IMAGES_PER_PROMPT", "0"),
        ("BAKE_DEFAULT_STEPS", "-1"),
        ("BAKE_DEFAULT_GUIDANCE", "-1"),
        ("BAKE_DEFAULT_GUIDANCE", "high"),
        ("BAKE_DEFAULT_GUIDANCE", "nan"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BAKE_MODEL": MODEL, variable: raw})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert raw.strip() in message


@pytest.mark.parametrize(
    ("variable", "raw", "hint"),
    [
        ("BAKE_DEVICE", "gpu", "auto, cpu, cuda"),
        ("BAKE_DTYPE", "fp16", "float32, float16, bfloat16"),
        ("BAKE_LOG_LEVEL", "verbose", "debug, info, warning, error"),
        ("BAKE_JPEG_DRAFT", "maybe", "true/false"),
        ("BAKE_MAX_BATCH_SIZE", "0", "minimum 1"),
        ("PORT", "70000", "maximum 65535"),
        ("BAKE_MAX_QUEUE", "lots", "not an integer"),
        ("BAKE_TIMEOUT_S", "slow", "not a number"),
    ],
)
def test_errors_say_what_is_accepted(variable: str, raw: str, hint: str) -> None:
    with pytest.raises(SettingsError, match=hint):
        Settings.from_env({"BAKE_MODEL": MODEL, variable: raw})


@pytest.mark.parametrize(
    "variable", ["BAKE_MAX_WAIT_MS", "BAKE_TIMEOUT_S", "BAKE_IDLE_TIMEOUT_S", "BAKE_DRAIN_TIMEOUT_S"]
)
def test_nan_is_not_a_valid_duration(variable: str) -> None:
    """NaN passes every `<` comparison, so a range check alone lets it through (a deadline of NaN seconds)."""
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({"BAKE_MODEL": MODEL, variable: "nan"})


def test_text_to_image_defaults_and_limits() -> None:
    loaded = settings()
    assert (loaded.max_steps, loaded.max_image_area, loaded.max_images_per_prompt) == (100, 1024 * 1024, 4)
    assert (loaded.default_steps, loaded.default_guidance) == (0, None)
    assert settings(BAKE_DEFAULT_GUIDANCE=" ").default_guidance is None


def test_default_steps_cannot_exceed_the_maximum() -> None:
    with pytest.raises(SettingsError, match="BAKE_DEFAULT_STEPS=20 is above BAKE_MAX_STEPS=10"):
        settings(BAKE_DEFAULT_STEPS="20", BAKE_MAX_STEPS="10")
    assert settings(BAKE_DEFAULT_STEPS="10", BAKE_MAX_STEPS="10").default_steps == 10


def test_settings_are_immutable() -> None:
    loaded = settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.port = 1  # type: ignore[misc]


def test_the_api_key_is_not_in_the_repr() -> None:
    secret = "very-secret-key-123"
    loaded = settings(BAKE_API_KEY=secret)
    assert secret not in repr(loaded)
    assert loaded.api_key == secret  # still there for the auth middleware


def test_serve_settings_round_trip_through_their_variables() -> None:
    chosen = ServeSettings(
        max_batch_size=4, max_wait_ms=2.5, jpeg_draft=True, default_guidance=0.0, port=9000
    )
    variables = chosen.environment()
    assert variables["BAKE_MAX_BATCH_SIZE"] == "4" and variables["BAKE_JPEG_DRAFT"] == "1"
    assert variables["PORT"] == "9000"
    assert ServeSettings.from_environment(variables) == chosen
    assert "BAKE_DEFAULT_GUIDANCE" not in ServeSettings().environment(), (
        "unset optional settings are left out"
    )


def test_the_image_settings_are_the_runtime_settings_minus_identity() -> None:
    """Every variable an image carries is read by the runtime into the same value."""
    variables = ServeSettings(max_queue=7, log_level="debug").environment()
    loaded = Settings.from_env({"BAKE_MODEL": MODEL, **variables})
    for spec in specs(ServeSettings):
        assert getattr(loaded, spec.key) == getattr(ServeSettings.from_environment(variables), spec.key)
    assert set(variables) <= {spec.env for spec in specs(Settings)}


@pytest.mark.parametrize("text", ["", " ", "maybe", "2", "y"])
def test_one_flag_parser_refuses_what_is_not_yes_or_no(text: str) -> None:
    with pytest.raises(SettingsError, match="is not a boolean"):
        parse_flag(text, "X")


def test_construction_checks_values_too() -> None:
    with pytest.raises(SettingsError, match="BAKE_MAX_BATCH_SIZE=0 is below the minimum 1"):
        ServeSettings(max_batch_size=0)
    with pytest.raises(SettingsError, match="BAKE_DTYPE='fp8' is not one of"):
        ServeSettings(dtype="fp8")


def test_env_name() -> None:
    assert env_name("idle_timeout_s") == "BAKE_IDLE_TIMEOUT_S"
    assert env_name("device") == "BAKE_DEVICE"
