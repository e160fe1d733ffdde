"""The shell commands that install the image's Python packages, with uv (the default) or pip.

uv installs the same pinned set several times faster than pip. It lives in the build's `tools` stage, put
there by the base image's own pip from the configured package index (bake/image/build-tools.txt pins it), and
never reaches the image. pip, the virtualenv's own, is the fallback for an index that does not carry uv
(--installer pip); it cannot leave out the packages of bake/image/excludes.txt.

Both take their index arguments (`--index-url`, `--extra-index-url`, `--find-links`, `--no-index`: the two
share them) from a BuildKit secret file, expanded into the command inside the step with globbing off, since an
index URL may carry a token. Neither reads a configuration of its own (pip.conf, uv.toml), and both give up on
an index after HTTP_RETRIES retries of HTTP_TIMEOUT_S each instead of pip's default minutes.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

INSTALLERS = ("uv", "pip")
TOOLS_VENV = "/opt/bake/tools"
PACKAGE_INDEX_SECRET = "package_index"
TORCH_INDEX_SECRET = "torch_index"
HTTP_TIMEOUT_S = 20
HTTP_RETRIES = 2
_UV = f"{TOOLS_VENV}/bin/uv"
_PIP_ENV = f"PIP_RETRIES={HTTP_RETRIES} PIP_TIMEOUT={HTTP_TIMEOUT_S} PIP_CONFIG_FILE=/dev/null"
_UV_ENV = (
    f"UV_CACHE_DIR=/root/.cache/uv UV_LINK_MODE=copy UV_HTTP_TIMEOUT={HTTP_TIMEOUT_S} "
    f"UV_HTTP_RETRIES={HTTP_RETRIES} UV_NO_CONFIG=1 UV_NO_PROGRESS=1 UV_PYTHON_DOWNLOADS=never"
)


def _secret_args(name: str) -> str:
    return f"$(cat /run/secrets/{name})"


@dataclass(frozen=True)
class Install:
    """One virtualenv to make and fill."""

    venv: str
    requirements: tuple[str, ...]
    """Installer arguments naming what to install: `-r FILE` or requirement specifiers."""
    constraints: str
    cpu_builds: tuple[str, ...] = ()
    """CPU torch (and torchvision) pins installed first, alone, from the torch sources (empty: none)."""
    excludes: str | None = None
    """A file of packages to leave out of the resolution (uv only: pip installs them)."""
    with_pip: bool = False
    """Keep pip (and setuptools) in the virtualenv."""
    reuse_base_torch: bool = False
    """Leave torch out when the base image's python imports one (its own, e.g. a CUDA build)."""


@dataclass(frozen=True)
class Installer:
    """uv or pip, as the Dockerfile's steps use it."""

    name: str

    @property
    def cache_mount(self) -> str:
        """The BuildKit cache mount of the installer's download cache."""
        if self.name == "uv":
            return "--mount=type=cache,id=bake-uv,target=/root/.cache/uv,sharing=shared"
        return "--mount=type=cache,target=/root/.cache/pip,sharing=locked"

    def tools(self) -> str:
        """The `tools` stage's command: uv into its own virtualenv (nothing for pip)."""
        if self.name != "uv":
            return "echo 'pip: each virtualenv installs with its own pip'"
        return (
            f"set -f && export {_PIP_ENV} && python3 -m venv {TOOLS_VENV} && {TOOLS_VENV}/bin/pip install "
            f"--no-warn-script-location {_secret_args(PACKAGE_INDEX_SECRET)} -r /opt/bake/build-tools.txt"
        )

    def install(self, spec: Install) -> str:
        """The command that makes `spec.venv` and installs `spec`'s packages into it."""
        uv = self.name == "uv"
        venv_flags = "--system-site-packages" + ("" if spec.with_pip or not uv else " --without-pip")
        steps = [
            f"set -f && export {_UV_ENV if uv else _PIP_ENV}",
            f"python3 -m venv {venv_flags} {spec.venv}",
        ]
        run = f"{_UV} pip install --python {spec.venv}/bin/python" if uv else f"{spec.venv}/bin/pip install"
        if spec.cpu_builds:
            steps.append(
                f"{run} --no-deps {_secret_args(TORCH_INDEX_SECRET)} "
                + " ".join(map(shlex.quote, spec.cpu_builds))
            )
        if uv and spec.reuse_base_torch and spec.excludes:
            steps.append(
                f"{{ python3 -c 'import torch' 2>/dev/null && echo torch >> {spec.excludes} || true; }}"
            )
        packages = [run, _secret_args(PACKAGE_INDEX_SECRET)]
        if uv:
            packages.append("--index-strategy unsafe-best-match")
            packages += [f"--excludes {spec.excludes}"] if spec.excludes else []
        elif not spec.with_pip:
            packages.append("--no-compile")
        packages += [*map(shlex.quote, spec.requirements), "-c", spec.constraints]
        steps.append(" ".join(packages))
        return " && \\\n    ".join(steps)
