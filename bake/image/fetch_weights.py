"""Fetch a model's files into the image: the build's `weights` stage runs this, never the host.

It runs with the weights stage's own small virtualenv (huggingface_hub, safetensors, and torch only when
.bin weights must be converted) and imports nothing from bake. Two modes:

  hub:   download exactly FILES of REPO at COMMIT with huggingface_hub into a BuildKit cache mount (so a
         rebuild of this stage never downloads twice), check every file given with --sha256 against the
         sha256 the Hub published for it (LFS metadata: huggingface_hub itself checks sizes only), then copy
         them into a fresh Hugging Face cache under OUT (blobs/, snapshots/COMMIT/, refs/REVISION) holding
         those files and nothing else. A file that does not match is removed from the download cache and the
         step fails. The token, if any, is read from the BuildKit secret file /run/secrets/hf_token and never
         written anywhere.
  local: copy FILES from SOURCE (a named build context) into OUT.

With --convert, PyTorch .bin weights are rewritten as safetensors (and the .bin files dropped). A manifest
(path, size, sha256 of every file as baked) is written to MANIFEST.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

TOKEN_FILE = Path("/run/secrets/hf_token")
HASH_CHUNK = 1 << 20
DOWNLOAD_FAILED = "bake-fetch: the download from the Hub failed:"
"""The start of the line this step fails with when the Hub or the network fails (bake/build.py reads it)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("hub", "local"))
    parser.add_argument("--repo")
    parser.add_argument("--revision")
    parser.add_argument("--commit")
    parser.add_argument("--source", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/root/.cache/huggingface/hub"))
    parser.add_argument("--files", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--convert", action="store_true")
    parser.add_argument(
        "--sha256", action="append", default=[], metavar="FILE=HEX", help="the Hub's sha256 of FILE"
    )
    args = parser.parse_args(argv)
    if args.mode == "hub":
        expected = dict(item.split("=", 1) for item in args.sha256)
        folder = fetch_from_hub(
            args.repo, args.revision, args.commit, args.files, args.cache, args.out, expected=expected
        )
    else:
        folder = copy_local(args.source, args.files, args.out)
    if args.convert:
        convert_to_safetensors(folder)
    make_world_readable(args.out)
    write_manifest(folder, args.manifest)
    return 0


def make_world_readable(root: Path) -> None:
    """The image runs as an unprivileged user: every baked file 0644, every directory 0755."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def fetch_from_hub(
    repo: str,
    revision: str,
    commit: str,
    files: list[str],
    cache: Path,
    out: Path,
    *,
    expected: dict[str, str] | None = None,
) -> Path:
    """Download `files` at `commit` into `cache`, check them against the `expected` sha256 of each (file ->
    hex digest), then lay out a minimal HF cache for them under `out`."""
    from httpx2 import HTTPError  # huggingface_hub's HTTP client: its transport errors are not OSErrors
    from huggingface_hub import snapshot_download

    token = TOKEN_FILE.read_text().strip() if TOKEN_FILE.is_file() else ""
    try:
        snapshot = Path(
            snapshot_download(
                repo, revision=commit, allow_patterns=files, cache_dir=cache, token=token or False
            )
        )
    except (OSError, HTTPError) as error:  # huggingface_hub's own errors are OSErrors
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        raise SystemExit(f"{DOWNLOAD_FAILED} {repo} at {commit}: {detail}") from None
    missing = [name for name in files if not (snapshot / name).is_file()]
    if missing:
        raise SystemExit(f"the download lacks {', '.join(missing)} (is the revision complete?)")
    verify(snapshot, expected or {})
    repo_dir = out / ("models--" + repo.replace("/", "--"))
    target = repo_dir / "snapshots" / commit
    for name in files:
        source = snapshot / name
        blob = source.resolve()
        blob_copy = repo_dir / "blobs" / blob.name
        blob_copy.parent.mkdir(parents=True, exist_ok=True)
        if not blob_copy.exists():
            shutil.copyfile(blob, blob_copy)
        link = target / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob_copy, link.parent))
    if revision != commit:
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return target


def verify(snapshot: Path, expected: dict[str, str]) -> None:
    """Exit (failing the build step) if a file's sha256 differs from the Hub's, after deleting the bad copy
    from the download cache so that the next build downloads it again."""
    for name, digest in sorted(expected.items()):
        path = snapshot / name
        actual = sha256(path)
        if actual != digest.lower():
            blob = path.resolve()
            path.unlink()
            blob.unlink(missing_ok=True)
            raise SystemExit(
                f"sha256 mismatch: {name} downloaded with sha256 {actual}, but the Hub published {digest}: "
                "the download was altered or corrupted on the way (a mirror or proxy?); it was discarded"
            )


def copy_local(source: Path, files: list[str], out: Path) -> Path:
    """Copy `files` (relative to `source`) into `out`."""
    for name in files:
        destination = out / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, destination)
    return out


def safetensors_name(bin_name: str) -> str:
    """The safetensors file transformers/diffusers look for instead of `bin_name`."""
    folder, _, base = bin_name.rpartition("/")
    if base.endswith(".bin.index.json"):
        base = base.removesuffix(".bin.index.json") + ".safetensors.index.json"
    else:
        base = base.removesuffix(".bin") + ".safetensors"
    if base.startswith("pytorch_model"):
        base = "model" + base.removeprefix("pytorch_model")
    return f"{folder}/{base}" if folder else base


def convert_to_safetensors(folder: Path) -> None:
    """Rewrite every PyTorch .bin weight file under `folder` as safetensors, fixing shard indexes."""
    import torch
    from safetensors.torch import save_file

    for path in sorted(folder.rglob("*.bin")):
        name = str(path.relative_to(folder))
        state = torch.load(path, map_location="cpu", weights_only=True)
        # safetensors refuses shared storage (tied weights): give every tensor its own copy
        tensors = {key: value.detach().contiguous().clone() for key, value in state.items()}
        _replace(
            folder,
            name,
            lambda destination, tensors=tensors: save_file(
                tensors, str(destination), metadata={"format": "pt"}
            ),
        )
    for path in sorted(folder.rglob("*.bin.index.json")):
        name = str(path.relative_to(folder))
        index = json.loads(path.read_text())
        index["weight_map"] = {key: safetensors_name(value) for key, value in index["weight_map"].items()}
        _replace(
            folder,
            name,
            lambda destination, index=index: destination.write_text(json.dumps(index, indent=2)),
        )


def _replace(folder: Path, name: str, write: Callable[[Path], object]) -> None:
    """Write the safetensors counterpart of `name` (via `write(path)`), then delete `name` and its blob."""
    old = folder / name
    new = folder / safetensors_name(name)
    if old.is_symlink():  # hub layout: write a new blob named by its hash, link it, drop the old blob
        blobs = old.resolve().parent
        temporary = blobs / (new.name + ".incomplete")
        write(temporary)
        blob = blobs / sha256(temporary)
        temporary.rename(blob)
        new.symlink_to(os.path.relpath(blob, new.parent))
        old.resolve().unlink()
    else:
        write(new)
    old.unlink()


def sha256(path: Path) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: Path) -> None:
    """Record every file as baked: path, size and sha256."""
    entries = {
        str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"files": entries}, indent=2, sort_keys=True))
    for name, entry in entries.items():
        print(f"baked {name} ({entry['size']} bytes, sha256 {entry['sha256']})")


if __name__ == "__main__":
    sys.exit(main())
