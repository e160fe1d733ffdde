"""The local Hub (`tests.fixtures.hub`) against the real, unmodified huggingface_hub download code."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.fixtures.hub import HubServer, RangeNotSatisfiable, byte_range
from tests.fixtures.hub_repos import git_blob_sha1

REPO_ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "config.json": b'{"architectures": ["ResNetForImageClassification"], "model_type": "resnet"}',
    "model.safetensors": random.Random(1).randbytes(3000),
    "pytorch_model.bin": random.Random(2).randbytes(3000),
    "README.md": b"---\nlibrary_name: transformers\ntags:\n- vision\n---\n# A test repo\n",
    "docs/notes.txt": b"notes\n",
    "docs/guide/usage.md": b"use it\n",
}
LFS_FILES = {"model.safetensors", "pytorch_model.bin"}


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (repo path -> bytes) under `folder` and return it."""
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def read_folder(folder: Path) -> dict[str, bytes]:
    """Return every file under `folder` (following symlinks) as repo path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small repo folder: a config, two LFS weight files, a model card and a nested docs folder."""
    return write_folder(tmp_path / "repo", FILES)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """An empty HF cache folder."""
    return tmp_path / "cache"


def test_snapshot_download_fills_the_cache_layout_with_identical_files(
    hub: HubServer, folder: Path, cache: Path
) -> None:
    sha = hub.add_repo("layout/model", folder)

    snapshot = Path(snapshot_download("layout/model", cache_dir=cache, endpoint=hub.url))

    storage = cache / "models--layout--model"
    assert snapshot == storage / "snapshots" / sha
    assert (storage / "refs" / "main").read_text() == sha
    assert read_folder(snapshot) == FILES
    for path, data in FILES.items():
        link = snapshot / path
        assert link.is_symlink()
        blob = link.resolve()
        assert blob.parent == storage / "blobs"
        assert blob.name == (hashlib.sha256(data).hexdigest() if path in LFS_FILES else git_blob_sha1(data))


def test_allow_patterns_fetch_only_the_requested_files(hub: HubServer, folder: Path, cache: Path) -> None:
    hub.add_repo("patterns/model", folder)
    hub.clear_requests()

    snapshot = Path(
        snapshot_download(
            "patterns/model", cache_dir=cache, endpoint=hub.url, allow_patterns=["*.json", "*.safetensors"]
        )
    )

    assert sorted(read_folder(snapshot)) == ["config.json", "model.safetensors"]
    fetched = {path.rsplit("/", 1)[-1] for _, path in hub.requests if "/resolve/" in path}
    assert fetched == {"config.json", "model.safetensors"}
    blobs = [path for _, path in hub.requests if path.startswith("/cdn-lfs/")]
    assert blobs == [f"/cdn-lfs/{hashlib.sha256(FILES['model.safetensors']).hexdigest()}"]


def test_branches_tags_and_commit_shas_all_resolve(hub: HubServer, tmp_path: Path, cache: Path) -> None:
    v1 = write_folder(tmp_path / "v1", {"config.json": b'{"v": 1}'})
    v2 = write_folder(tmp_path / "v2", {"config.json": b'{"v": 2}', "extra.txt": b"new"})
    sha1 = hub.add_repo("revs/model", v1)
    sha2 = hub.add_repo("revs/model", v2, revision="feature/v2")
    assert hub.add_tag("revs/model", "v1.0") == sha1
    assert sha1 != sha2
    assert hub.add_repo("revs/model", v1) == sha1  # deterministic: same files and revision, same commit

    expected = {
        "main": b'{"v": 1}',
        "v1.0": b'{"v": 1}',
        sha1: b'{"v": 1}',
        "feature/v2": b'{"v": 2}',
        sha2: b'{"v": 2}',
    }
    for revision, content in expected.items():
        path = hf_hub_download(
            "revs/model", "config.json", revision=revision, cache_dir=cache, endpoint=hub.url
        )
        assert Path(path).read_bytes() == content, revision
    assert sorted(
        read_folder(Path(snapshot_download("revs/model", revision="v1.0", cache_dir=cache, endpoint=hub.url)))
    ) == ["config.json"]

    refs = HfApi(endpoint=hub.url).list_repo_refs("revs/model")
    assert {(ref.name, ref.target_commit) for ref in refs.branches} == {("main", sha1), ("feature/v2", sha2)}
    assert [(ref.name, ref.target_commit) for ref in refs.tags] == [("v1.0", sha1)]


def test_cached_snapshots_are_served_without_any_request(hub: HubServer, folder: Path, cache: Path) -> None:
    sha = hub.add_repo("offline/model", folder)
    snapshot = snapshot_download("offline/model", cache_dir=cache, endpoint=hub.url)
    hub.clear_requests()

    assert (
        snapshot_download("offline/model", cache_dir=cache, endpoint=hub.url, local_files_only=True)
        == snapshot
    )
    assert snapshot_download("offline/model", revision=sha, cache_dir=cache, endpoint=hub.url) == snapshot
    config = hf_hub_download(
        "offline/model", "config.json", cache_dir=cache, endpoint=hub.url, local_files_only=True
    )
    assert Path(config).read_bytes() == FILES["config.json"]
    assert hub.requests == []


def test_tree_listing_is_paged_with_link_headers(
    hub: HubServer, folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("paged/model", folder)
    monkeypatch.setattr(hub, "tree_page_size", 2)
    hub.clear_requests()

    entries = list(HfApi(endpoint=hub.url).list_repo_tree("paged/model", recursive=True))

    assert sorted(e.path for e in entries) == sorted([*FILES, "docs", "docs/guide"])
    pages = [path for _, path in hub.requests if "/tree/" in path]
    assert len(pages) == 4  # 8 entries, 2 per page
    snapshot = snapshot_download("paged/model", cache_dir=cache, endpoint=hub.url)
    assert read_folder(Path(snapshot)) == FILES


def test_tree_lists_direct_children_unless_recursive(hub: HubServer, folder: Path) -> None:
    hub.add_repo("tree/model", folder)
    api = HfApi(endpoint=hub.url)

    root = {e.path: type(e) for e in api.list_repo_tree("tree/model")}
    docs = {e.path: type(e) for e in api.list_repo_tree("tree/model", path_in_repo="docs")}

    assert root == {
        "README.md": RepoFile,
        "config.json": RepoFile,
        "docs": RepoFolder,
        "model.safetensors": RepoFile,
        "pytorch_model.bin": RepoFile,
    }
    assert docs == {"docs/guide": RepoFolder, "docs/notes.txt": RepoFile}
    assert sorted(api.list_repo_files("tree/model")) == sorted(FILES)
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree("tree/model", path_in_repo="nowhere"))


def test_tree_entries_carry_git_and_lfs_ids(hub: HubServer, folder: Path) -> None:
    hub.add_repo("ids/model", folder)

    tree = HfApi(endpoint=hub.url).list_repo_tree("ids/model", recursive=True)
    files = {e.path: e for e in tree if isinstance(e, RepoFile)}

    config, weights = files["config.json"], files["model.safetensors"]
    assert (config.size, config.blob_id, config.lfs) == (
        len(FILES["config.json"]),
        git_blob_sha1(FILES["config.json"]),
        None,
    )
    data = FILES["model.safetensors"]
    assert weights.size == len(data)
    assert weights.lfs is not None
    assert (weights.lfs.sha256, weights.lfs.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert 120 < weights.lfs.pointer_size < 140


def test_model_info_describes_the_revision(hub: HubServer, folder: Path) -> None:
    sha = hub.add_repo("info/model", folder)
    api = HfApi(endpoint=hub.url)

    info = api.model_info("info/model", files_metadata=True)

    assert (info.id, info.sha, info.private, info.gated, info.disabled) == (
        "info/model",
        sha,
        False,
        False,
        False,
    )
    assert info.library_name == "transformers"
    assert info.pipeline_tag == "image-classification"
    assert info.config == {"architectures": ["ResNetForImageClassification"], "model_type": "resnet"}
    assert info.card_data is not None and info.card_data.library_name == "transformers"
    assert info.tags is not None and info.siblings is not None
    assert {"vision", "transformers", "image-classification", "safetensors"} <= set(info.tags)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(FILES)
    assert all(s.size == len(FILES[name]) for name, s in siblings.items())
    assert {name for name, s in siblings.items() if s.lfs is not None} == LFS_FILES
    weights_lfs = siblings["model.safetensors"].lfs
    assert (
        weights_lfs is not None
        and weights_lfs.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    )
    assert api.repo_info("info/model", revision=sha).sha == sha
    plain = api.model_info("info/model").siblings
    assert plain is not None and plain[0].size is None  # sizes only with files_metadata


def test_lfs_download_follows_the_cdn_redirect_and_checks_the_size(
    hub: HubServer, folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = hub.add_repo("lfs/model", folder)
    data = FILES["model.safetensors"]
    sha256 = hashlib.sha256(data).hexdigest()

    metadata = get_hf_file_metadata(hf_hub_url("lfs/model", "model.safetensors", endpoint=hub.url))
    assert (metadata.commit_hash, metadata.etag, metadata.size) == (sha, sha256, len(data))
    assert metadata.location == f"http://127.0.0.1:{hub.cdn_port}/cdn-lfs/{sha256}"

    hub.clear_requests()
    path = Path(hf_hub_download("lfs/model", "model.safetensors", cache_dir=cache, endpoint=hub.url))
    assert path.read_bytes() == data
    assert path.resolve().name == sha256
    assert hub.requests == [
        ("HEAD", "/lfs/model/resolve/main/model.safetensors"),
        ("GET", f"/cdn-lfs/{sha256}"),
    ]

    monkeypatch.setattr(hub.store, "find_blob", lambda _: data[:100])  # the CDN now serves a short file
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download("lfs/model", "pytorch_model.bin", cache_dir=cache, endpoint=hub.url)


def test_downloads_resume_with_range_requests(hub: HubServer, folder: Path) -> None:
    hub.add_repo("range/model", folder)
    data = FILES["model.safetensors"]
    cdn_url = f"http://127.0.0.1:{hub.cdn_port}/cdn-lfs/{hashlib.sha256(data).hexdigest()}"

    partial = io.BytesIO(data[:1000])
    partial.seek(1000)
    http_get(cdn_url, partial, resume_size=1000, expected_size=len(data))
    assert partial.getvalue() == data

    response = httpx.get(
        hf_hub_url("range/model", "config.json", endpoint=hub.url), headers={"Range": "bytes=5-9"}
    )
    assert response.status_code == 206
    assert response.content == FILES["config.json"][5:10]
    assert response.headers["Content-Range"] == f"bytes 5-9/{len(FILES['config.json'])}"
    assert httpx.get(cdn_url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-", 10, (0, 9)),
        ("bytes=3-5", 10, (3, 5)),
        ("bytes=4-99", 10, (4, 9)),
        ("bytes=-3", 10, (7, 9)),
    ],
)
def test_byte_range_parses_single_ranges(header: str, size: int, expected: tuple[int, int]) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=5-2", "bytes=-", "items=0-1", "bytes=0-1,4-5"])
def test_byte_range_rejects_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 10)


@pytest.fixture(scope="module")
def access_repos(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A public, a private (token "private-token") and a gated (token "gated-token") repo under `acl/`."""
    folder = write_folder(tmp_path_factory.mktemp("acl"), {"config.json": b"{}"})
    hub.add_repo("acl/public", folder)
    hub.add_repo("acl/private", folder, token="private-token")
    hub.add_repo("acl/gated", folder, token="gated-token", gated=True)


DOWNLOAD_ERRORS = {
    "missing repo": ("acl/missing", "main", "config.json", None, RepositoryNotFoundError, 404),
    "unknown revision": ("acl/public", "nope", "config.json", None, RevisionNotFoundError, 404),
    "missing file": ("acl/public", "main", "nope.json", None, RemoteEntryNotFoundError, 404),
    "private, no token": ("acl/private", "main", "config.json", None, RepositoryNotFoundError, 401),
    "private, other token": (
        "acl/private",
        "main",
        "config.json",
        "gated-token",
        RepositoryNotFoundError,
        404,
    ),
    "gated, no token": ("acl/gated", "main", "config.json", None, GatedRepoError, 401),
    "gated, other token": ("acl/gated", "main", "config.json", "private-token", GatedRepoError, 403),
    "unknown token": ("acl/public", "main", "config.json", "made-up", HfHubHTTPError, 401),
}


@pytest.mark.usefixtures("access_repos")
@pytest.mark.parametrize(
    ("repo_id", "revision", "filename", "token", "error", "status"),
    DOWNLOAD_ERRORS.values(),
    ids=DOWNLOAD_ERRORS,
)
def test_download_errors_map_to_huggingface_hub_exceptions(
    hub: HubServer,
    cache: Path,
    repo_id: str,
    revision: str,
    filename: str,
    token: str | None,
    error: type[HfHubHTTPError],
    status: int,
) -> None:
    with pytest.raises(error) as raised:
        hf_hub_download(
            repo_id, filename, revision=revision, token=token or False, cache_dir=cache, endpoint=hub.url
        )
    assert type(raised.value) is error
    assert raised.value.response.status_code == status


@pytest.mark.usefixtures("access_repos")
def test_missing_files_are_reported_with_their_commit(hub: HubServer, cache: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as raised:
        hf_hub_download("acl/public", "nope.json", token=False, cache_dir=cache, endpoint=hub.url)
    sha = HfApi(endpoint=hub.url).model_info("acl/public", token=False).sha
    assert raised.value.response.headers["X-Repo-Commit"] == sha
    assert (cache / "models--acl--public" / ".no_exist" / sha / "nope.json").exists()


@pytest.mark.usefixtures("access_repos")
def test_metadata_access_follows_the_hub_rules(hub: HubServer, cache: Path) -> None:
    api = HfApi(endpoint=hub.url)

    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("acl/missing", token=False)
    with pytest.raises(RepositoryNotFoundError) as private:
        api.model_info("acl/private", token=False)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("acl/public", revision="nope", token=False)
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as invalid:
        api.model_info("acl/public", token="made-up")

    assert type(missing.value) is RepositoryNotFoundError and missing.value.response.status_code == 404
    assert type(private.value) is RepositoryNotFoundError and private.value.response.status_code == 401
    assert type(invalid.value) is HfHubHTTPError and invalid.value.response.status_code == 401
    assert api.model_info("acl/private", token="private-token").private is True
    # As on huggingface.co, a gated repo's metadata and file list are public; only file contents are gated.
    assert api.model_info("acl/gated", token=False).gated == "auto"
    assert api.list_repo_files("acl/gated", token=False) == ["config.json"]
    with pytest.raises(GatedRepoError):
        snapshot_download("acl/gated", token=False, cache_dir=cache, endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("acl/private", token=False, cache_dir=cache, endpoint=hub.url)
    for repo_id, token in (("acl/gated", "gated-token"), ("acl/private", "private-token")):
        snapshot = snapshot_download(repo_id, token=token, cache_dir=cache, endpoint=hub.url)
        assert read_folder(Path(snapshot)) == {"config.json": b"{}"}


def test_file_names_that_need_quoting_round_trip(hub: HubServer, tmp_path: Path, cache: Path) -> None:
    files = {"docs/naïve café.txt": b"unicode", "a+b #1.json": b"{}"}
    hub.add_repo("quoting/model", write_folder(tmp_path / "quoting", files))

    snapshot = snapshot_download("quoting/model", cache_dir=cache, endpoint=hub.url)

    assert read_folder(Path(snapshot)) == files
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("quoting/model", "docs/ünknown.txt", cache_dir=cache, endpoint=hub.url)


def test_unknown_routes_answer_404(hub: HubServer) -> None:
    assert httpx.get(f"{hub.url}/api/datasets/some/dataset").status_code == 404
    assert httpx.get(f"http://127.0.0.1:{hub.cdn_port}/cdn-lfs/{'0' * 64}").status_code == 404


def test_command_line_server_serves_folders_to_another_process(folder: Path, hf_env: dict[str, str]) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.hub", "--repo", f"cli/model={folder}"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        name, _, endpoint = server.stdout.readline().strip().partition("=")
        assert name == "HF_ENDPOINT" and endpoint.startswith("http://127.0.0.1:")

        download = "from huggingface_hub import snapshot_download; print(snapshot_download('cli/model'))"
        result = subprocess.run(
            [sys.executable, "-c", download],
            env={**os.environ, **hf_env, "HF_ENDPOINT": endpoint},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    snapshot = Path(result.stdout.strip().splitlines()[-1])
    assert snapshot.is_relative_to(hf_env["HF_HOME"])
    assert read_folder(snapshot) == FILES


@pytest.mark.slow
def test_transformers_downloads_from_the_hub_then_loads_offline(
    hub: HubServer, tiny_models: dict[str, Path], hf_env: dict[str, str]
) -> None:
    hub.add_repo("tiny/resnet", tiny_models["resnet"])
    classify = (
        "import transformers; from PIL import Image;"
        "classifier = transformers.pipeline('image-classification', model='tiny/resnet');"
        "print(classifier(Image.new('RGB', (80, 60)), top_k=1)[0]['label'])"
    )

    def run(env: dict[str, str]) -> str:
        result = subprocess.run(
            [sys.executable, "-c", classify],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    weights = hashlib.sha256((tiny_models["resnet"] / "model.safetensors").read_bytes()).hexdigest()

    hub.clear_requests()
    online = run(hf_env)
    downloaded = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET"}
    hub.clear_requests()
    offline = run({**hf_env, "HF_HUB_OFFLINE": "1"})

    assert {"config.json", "preprocessor_config.json", weights} <= downloaded
    assert online == offline
    assert hub.requests == []
