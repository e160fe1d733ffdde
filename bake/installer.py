"""The shell commands that install the image's Python packages, with uv (the default) or pip.

uv installs the same pinned set several times faster than pip. It lives in the build's `tools` stage, put
there from the configured package index (bake/image/build-tools.txt pins it) by the pip wheel the base image's
Python bundles for `ensurepip` (the one `python3 -m venv` installs), run in place: pip runs from its wheel, so
there is no virtualenv to make and no pip to install and byte-compile first (3 s less on a 2-core machine). A
base without that wheel fails the step with NO_PIP_WHEEL (it could not make a virtualenv with pip either). uv
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
TOOLS_DIR = "/opt/bake/tools"
"""Where uv is installed in the tools stage (its `bin/uv`)."""
PACKAGE_INDEX_SECRET = "package_index"
TORCH_INDEX_SECRET = "torch_index"
HTTP_TIMEOUT_S = 20
HTTP_RETRIES = 2
_UV = f"{TOOLS_DIR}/bin/uv"
_PIP_ENV = f"PIP_RETRIES={HTTP_RETRIES} PIP_TIMEOUT={HTTP_TIMEOUT_S} PIP_CONFIG_FILE=/dev/null"
_UV_ENV = (
    f"UV_CACHE_DIR=/root/.cache/uv UV_LINK_MODE=copy UV_HTTP_TIMEOUT={HTTP_TIMEOUT_S} "
    f"UV_HTTP_RETRIES={HTTP_RETRIES} UV_NO_CONFIG=1 UV_NO_PROGRESS=1 UV_PYTHON_DOWNLOADS=never"
)


NO_PIP_WHEEL = "bake-tools: the base image's python3 bundles no pip wheel for ensurepip"
"""What the tools step prints, and fails with, when the base image's Python cannot bootstrap pip."""
_PIP_WHEEL = (
    'python3 -c "import ensurepip, glob, os, sysconfig; print(*sorted(glob.glob(os.path.join('
    "os.path.dirname(ensurepip.__file__), '_bundled', 'pip-*.whl')) + glob.glob(os.path.join("
    "sysconfig.get_config_var('WHEEL_PKG_DIR') or '/usr/share/python-wheels', 'pip-*.whl')))[-1:])\""
)
"""Prints the path of the pip wheel `ensurepip` installs (CPython's bundled one, or the distribution's
WHEEL_PKG_DIR, /usr/share/python-wheels on Debian and Ubuntu), or nothing."""


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
        """The `tools` stage's command: uv into `TOOLS_DIR` (nothing for pip)."""
        if self.name != "uv":
            return "echo 'pip: each virtualenv installs with its own pip'"
        return (
            f"set -f && export {_PIP_ENV} && pip_wheel=$({_PIP_WHEEL} 2>/dev/null || true) && \\\n    "
            f'{{ [ -n "$pip_wheel" ] || {{ echo "{NO_PIP_WHEEL}"; exit 1; }}; }} && \\\n    '
            f'python3 "$pip_wheel/pip" install --target {TOOLS_DIR} --no-warn-script-location '
            f"{_secret_args(PACKAGE_INDEX_SECRET)} -r /opt/bake/build-tools.txt"
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
