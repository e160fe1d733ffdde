"""Resolving a model before the build: commit sha, task, the files to bake and their hashes.

Everything here talks to the Hub's metadata API only (or reads a local directory); the weights themselves
are fetched inside the image build. Hub errors become one-line `BakeError`s with the fix.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import HfApi, ModelInfo, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from bake.config import ModelSpec
from bake.env import Environment
from bake.errors import (
    AccessDenied,
    GatedModel,
    HubUnreachable,
    ModelNotFound,
    RevisionNotFound,
    UnsupportedModel,
)
from serve.contract.files import Selection, detect_task, parse_json_bytes, select_files
from serve.contract.tasks import TASKS

_SKIPPED_DIRS = {".git", ".cache", "__pycache__"}
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    """One file to bake."""

    path: str
    size: int
    sha256: str | None
    """The content hash when known (LFS files on the Hub, every file of a local directory)."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to one revision, with the files its task needs."""

    id: str
    """The hub id, or the local directory as given."""
    revision: str
    """The revision asked for ("local" for a directory)."""
    commit_sha: str
    """The Hub commit, or for a local directory the sha256 of its selected files' hashes."""
    task: str
    files: tuple[ModelFile, ...]
    convert_to_safetensors: bool
    local_dir: Path | None
    gated: bool = False
    packages: tuple[str, ...] = ()
    """Extra runtime packages the model needs beyond the task's (PyPI names, `serve.contract.packages`)."""

    @property
    def weights_bytes(self) -> int:
        """Total size of the files to bake."""
        return sum(file.size for file in self.files)


def resolve_model(spec: ModelSpec, env: Environment, *, device: str) -> ResolvedModel:
    """Pin `spec` to a commit and choose its files; raises a `BakeError` subclass with the fix."""
    if spec.local_dir is not None:
        return _resolve_local(spec, spec.local_dir, device=device)
    if spec.id.startswith((".", "/", "~")) or spec.id.count("/") > 1:
        raise ModelNotFound(f"{spec.id} is neither a directory nor a Hugging Face model id", "check the path")
    return _resolve_hub(spec, env, device=device)


def _resolve_local(spec: ModelSpec, directory: Path, *, device: str) -> ResolvedModel:
    names = sorted(
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and not _SKIPPED_DIRS.intersection(path.relative_to(directory).parts)
    )

    def read_json(name: str) -> dict | None:
        file = directory / name
        return parse_json_bytes(file.read_bytes()) if file.is_file() else None

    task = _task(spec, names, read_json)
    selection = select_files(names, task, device=device, read_json=read_json)
    files = tuple(
        ModelFile(name, (directory / name).stat().st_size, _sha256(directory / name))
        for name in selection.files
    )
    digest = hashlib.sha256("".join(f"{file.path}\0{file.sha256}\n" for file in files).encode()).hexdigest()
    return ResolvedModel(
        id=str(directory),
        revision="local",
        commit_sha=digest,
        task=task,
        files=files,
        convert_to_safetensors=selection.convert_to_safetensors,
        local_dir=directory.resolve(),
        packages=selection.packages,
    )


def _resolve_hub(spec: ModelSpec, env: Environment, *, device: str) -> ResolvedModel:
    api = HfApi(endpoint=env.hf_endpoint, token=env.hf_token or False)
    with _hub_errors(spec, env):
        info = api.model_info(spec.id, revision=spec.revision, files_metadata=True)
    if info.gated and not env.hf_token:
        raise _gated(spec, env)
    with tempfile.TemporaryDirectory(prefix="bake-metadata-") as metadata_cache:
        return _resolve_hub_files(spec, env, info, device=device, metadata_cache=metadata_cache)


def _resolve_hub_files(
    spec: ModelSpec, env: Environment, info: ModelInfo, *, device: str, metadata_cache: str
) -> ResolvedModel:
    """Detects the task and selects the files of a hub model. Configs are read through a fresh cache so
    that every resolution checks access against the Hub, never against an earlier session's files."""
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    sha = info.sha
    assert sha is not None

    def read_json(name: str) -> dict | None:
        if name not in siblings:
            return None
        with _hub_errors(spec, env):
            path = hf_hub_download(
                spec.id,
                name,
                revision=sha,
                endpoint=env.hf_endpoint,
                token=env.hf_token or False,
                cache_dir=metadata_cache,
            )
        return parse_json_bytes(Path(path).read_bytes())

    task = _task(spec, list(siblings), read_json)
    selection: Selection = select_files(list(siblings), task, device=device, read_json=read_json)
    files = []
    for name in selection.files:
        sibling = siblings[name]
        lfs = sibling.lfs
        files.append(ModelFile(name, sibling.size or 0, lfs.sha256 if lfs is not None else None))
    return ResolvedModel(
        id=spec.id,
        revision=spec.revision,
        commit_sha=sha,
        task=task,
        files=tuple(files),
        convert_to_safetensors=selection.convert_to_safetensors,
        local_dir=None,
        gated=bool(info.gated),
        packages=selection.packages,
    )


def _task(spec: ModelSpec, names: list[str], read_json: Callable[[str], dict | None]) -> str:
    detected = detect_task(names, read_json) if spec.task is None else None
    task = spec.task or detected
    assert task is not None
    if task not in TASKS:
        raise UnsupportedModel(f"task {task!r} is not served", f"use one of: {', '.join(TASKS)}")
    if spec.task is not None:
        try:
            actual = detect_task(names, read_json)
        except UnsupportedModel:
            actual = None
        if actual is not None and actual != spec.task:
            raise UnsupportedModel(
                f"{spec.id} is a {actual} model, bake cannot serve it for {spec.task}", f"use --task {actual}"
            )
    return task


def _gated(spec: ModelSpec, env: Environment) -> GatedModel:
    return GatedModel(
        f"{spec.id} is gated: its files need an accepted license and a token",
        f"accept the terms at {env.hf_endpoint}/{spec.id} and set HF_TOKEN to a token of that account",
    )


class _hub_errors:
    """Turns huggingface_hub errors into one-line bake errors with the fix."""

    def __init__(self, spec: ModelSpec, env: Environment) -> None:
        self.spec = spec
        self.env = env

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if error is None:
            return
        spec, env = self.spec, self.env
        if isinstance(error, GatedRepoError):
            raise _gated(spec, env) from None
        if isinstance(error, RevisionNotFoundError):
            raise RevisionNotFound(
                f"{spec.id} has no revision {spec.revision!r}",
                "pass --revision with an existing branch, tag or commit",
            ) from None
        if isinstance(error, RepositoryNotFoundError):
            hint = "check the id" if env.hf_token else "check the id, or set HF_TOKEN if the model is private"
            raise ModelNotFound(f"model {spec.id} was not found on {env.hf_endpoint}", hint) from None
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else None
            if status in (401, 403):
                raise AccessDenied(
                    f"{env.hf_endpoint} refused access to {spec.id} "
                    f"with the token in HF_TOKEN (HTTP {status})",
                    "set HF_TOKEN to a valid token of an account with access to the model",
                ) from None
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise HubUnreachable(f"{env.hf_endpoint} answered: {first_line}", "retry later") from None
        if isinstance(error, (httpx.TransportError, OSError)) or _is_transport_error(error):
            raise HubUnreachable(
                f"cannot reach {env.hf_endpoint}: {error}",
                "check the network, or set HF_ENDPOINT to a reachable mirror",
            ) from None


def _is_transport_error(error: BaseException) -> bool:
    """huggingface_hub 2.x speaks httpx2; its transport errors are not httpx's."""
    return any(
        cls.__name__ in ("ConnectError", "TimeoutException", "NetworkError", "ProxyError")
        for cls in type(error).__mro__
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
