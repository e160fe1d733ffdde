"""The one place in `bake` that reads the process environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from huggingface_hub import get_token

from serve.contract.settings import API_KEY_ENV

DEFAULT_HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Environment:
    """What bake takes from the environment: option variables and credentials."""

    variables: Mapping[str, str] = field(default_factory=dict)
    """Every variable, for option lookup by name (see `bake.options`)."""
    hf_token: str | None = field(default=None, repr=False)
    """HF_TOKEN, else the token saved by `hf auth login`."""
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    """HF_ENDPOINT: the Hub or a mirror of it."""
    fly_api_token: str | None = field(default=None, repr=False)
    """FLY_API_TOKEN, for `bake launch --target fly`."""
    api_key: str | None = field(default=None, repr=False)
    """BAKE_API_KEY: sent as a bearer key by `bake predict` (and given to containers `bake launch` starts)."""
    docker_host: str = ""
    """DOCKER_HOST: the engine the docker CLI talks to by default (empty: the local socket)."""


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    """Read `environ` (default: `os.environ`) once."""
    variables = dict(os.environ if environ is None else environ)
    token = variables.get("HF_TOKEN") or variables.get("HUGGING_FACE_HUB_TOKEN")
    if token is None and environ is None:
        token = get_token()
    return Environment(
        variables=variables,
        hf_token=token or None,
        hf_endpoint=(variables.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/"),
        fly_api_token=variables.get("FLY_API_TOKEN") or None,
        api_key=variables.get(API_KEY_ENV) or None,
        docker_host=variables.get("DOCKER_HOST", "").strip(),
    )
