"""Slim the runtime's virtualenv: the build's `venv` stage runs this on the deps stage's copy, never the host.

Removes what no import at serve time touches, so the image ships only what serving needs:
  - torch's C++ test data (torch/test), headers (torch/include, only for building extensions) and CMake files
    (torch/share), its test programs and protoc (torch/bin, all but torch_shm_manager, which
    torch.multiprocessing starts) and its test libraries (torch/lib/lib*test*.so, libaoti_custom_ops.so,
    libbackend_with_compiler.so, loaded only by torch's own tests);
  - `tests` folders inside packages (numpy's, sympy's, ...), and `.pyi` type stubs;
  - the build tools: pip, setuptools and wheel (with their scripts and setuptools' distutils hook);
  - every `__pycache__`: the bytecode the image ships is written afterwards by the runtime check, which
    imports exactly what the server imports at start (bake/image/check_runtime.py);
  - the symbol tables of shared objects (bake/image/elf_symbols.py): 89 MB in libtorch_cpu.so alone.
Prints one line per kind of removal with the MiB it freed. Standard library only (the base image's python3
runs it).

Usage: python3 slim_venv.py VENV
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from elf_symbols import strip_symbols

TORCH_UNUSED = ("test", "include", "share")
"""Folders of the torch package that serving never reads."""
TORCH_KEPT_PROGRAMS = {"torch_shm_manager"}
"""torch/bin programs kept (torch.multiprocessing's shared-memory manager); the rest: tests and protoc."""
TORCH_TEST_LIBRARIES = ("libaoti_custom_ops.so", "libbackend_with_compiler.so")
"""torch/lib libraries only torch's own tests load (besides every lib*test*.so)."""
BUILD_TOOLS = ("pip", "setuptools", "wheel")
"""Distributions that install or build packages; serving needs none of them."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("venv", type=Path)
    args = parser.parse_args(argv)
    site_packages = sorted(args.venv.glob("lib/python3*/site-packages"))
    if len(site_packages) != 1:
        print(f"bake-slim: expected one site-packages folder in {args.venv}, found {len(site_packages)}")
        return 1
    for kind, freed in slim(args.venv, site_packages[0]).items():
        print(f"bake-slim: {kind:32s} {freed / 2**20:8.1f} MiB")
    return 0


def slim(venv: Path, site_packages: Path) -> dict[str, int]:
    """Remove everything listed in this module's docstring from `venv`; return the bytes freed per kind."""
    return {
        "torch tests, headers, test programs": _remove(_torch_unused(site_packages / "torch")),
        "tests folders and type stubs": _remove(_tests_and_stubs(site_packages)),
        "pip, setuptools, wheel": _remove(_build_tools(venv, site_packages)),
        "bytecode written by the build": _remove(site_packages.rglob("__pycache__")),
        "symbol tables of shared objects": sum(
            strip_symbols(path) for path in _shared_objects(site_packages)
        ),
    }


def _torch_unused(torch: Path) -> Iterator[Path]:
    yield from (torch / name for name in TORCH_UNUSED)
    yield from (path for path in (torch / "bin").glob("*") if path.name not in TORCH_KEPT_PROGRAMS)
    yield from (torch / "lib").glob("lib*test*.so")
    yield from (torch / "lib" / name for name in TORCH_TEST_LIBRARIES)


def _tests_and_stubs(site_packages: Path) -> Iterator[Path]:
    yield from (path for path in site_packages.rglob("tests") if path.is_dir() and _in_package(path))
    yield from site_packages.rglob("*.pyi")


def _in_package(path: Path) -> bool:
    """Whether `path` is in an importable package (not a top-level `tests`, not a dist-info's licenses)."""
    return (path.parent / "__init__.py").is_file()


def _build_tools(venv: Path, site_packages: Path) -> Iterator[Path]:
    """Every file the build tools' RECORDs list inside `venv` (their bin/ scripts too), and their folders."""
    for name in BUILD_TOOLS:
        for info in site_packages.glob(f"{name}-*.dist-info"):
            record = info / "RECORD"
            for line in record.read_text().splitlines() if record.is_file() else ():
                path = Path(os.path.normpath(site_packages / line.rsplit(",", 2)[0]))
                if path.is_relative_to(venv) and path != venv:
                    yield path
            yield info
    for name in BUILD_TOOLS:
        yield site_packages / name
    yield site_packages / "_distutils_hack"
    yield site_packages / "distutils-precedence.pth"
    yield site_packages / "pkg_resources"


def _shared_objects(site_packages: Path) -> Iterator[Path]:
    for path in site_packages.rglob("*.so*"):
        if path.is_file() and not path.is_symlink():
            yield path


def _remove(paths: Iterator[Path]) -> int:
    """Delete each existing path (file or folder tree); return the bytes freed."""
    freed = 0
    for path in list(paths):
        if path.is_symlink() or path.is_file():
            freed += path.lstat().st_size
            path.unlink()
        elif path.is_dir():
            freed += sum(
                item.lstat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink()
            )
            shutil.rmtree(path)
    return freed


if __name__ == "__main__":
    sys.exit(main())
