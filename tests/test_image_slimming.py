"""Slimming the image's virtualenv (bake/image/slim_venv.py, elf_symbols.py), on real files of this machine.

The shared objects are real compiled extensions copied from this environment's packages; after stripping,
they are imported and used by a fresh Python process, which is what the image's server does with them. The
scripts are imported the way the build step runs them: from their own folder, as top-level modules.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IMAGE_SCRIPTS = Path(__file__).resolve().parents[1] / "bake" / "image"
sys.path.insert(0, str(IMAGE_SCRIPTS))
from elf_symbols import strip_symbols  # noqa: E402 - found on the path added above
from slim_venv import slim  # noqa: E402

SITE_PACKAGES = Path(importlib.util.find_spec("regex").origin).parents[1]  # type: ignore[arg-type,union-attr]


def section_names(path: Path) -> set[str]:
    """The ELF file's section names, read with the standard library (64-bit little-endian only)."""
    import struct

    data = path.read_bytes()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = data[headers[shstrndx][4] : headers[shstrndx][4] + headers[shstrndx][5]]
    return {names[h[0] : names.index(b"\0", h[0])].decode() for h in headers}


def copy_package(name: str, target: Path) -> Path:
    """A copy of the installed package `name` under `target`; return its folder."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    folder = target / name
    shutil.copytree(Path(spec.origin).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def run_python(code: str, path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env={"PYTHONPATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_stripped_extension_loses_its_symbol_table_and_still_imports_and_works(tmp_path: Path) -> None:
    folder = copy_package("regex", tmp_path)
    library = next(folder.glob("_regex*.so"))
    before = library.stat().st_size
    assert ".symtab" in section_names(library)
    saved = strip_symbols(library)
    assert saved > 0 and library.stat().st_size == before - saved
    names = section_names(library)
    assert ".symtab" not in names and ".strtab" not in names
    assert {".dynsym", ".dynstr", ".text", ".shstrtab"} <= names
    assert strip_symbols(library) == 0, "nothing left to strip"
    code = "import regex; print(regex.__file__); print(regex.findall(r'\\p{L}+', 'ab 12 cd'))"
    out = run_python(code, tmp_path)
    assert out.splitlines() == [str(folder / "__init__.py"), "['ab', 'cd']"]


def test_a_file_whose_symbols_lie_inside_a_segment_is_left_alone(tmp_path: Path) -> None:
    # Pillow's wheels are patched after linking: a LOAD segment was appended after the symbol tables.
    source = next((SITE_PACKAGES / "PIL").glob("_imaging.cpython*.so"))
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    assert ".symtab" in section_names(copy)
    assert strip_symbols(copy) == 0
    assert copy.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("content", [b"", b"not an ELF file", b"\x7fELF\x01\x01" + b"\0" * 60])
def test_non_elf_and_32_bit_files_are_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(content)
    assert strip_symbols(path) == 0 and path.read_bytes() == content


def make_venv(root: Path) -> tuple[Path, Path]:
    """A virtualenv-shaped tree with what slimming removes and what it must keep; (venv, site-packages)."""
    venv = root / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    files = {
        "torch/__init__.py": "",
        "torch/test/cpp/data.bin": "x" * 100,
        "torch/include/ATen/ATen.h": "h",
        "torch/share/cmake/Torch/TorchConfig.cmake": "c",
        "torch/bin/torch_shm_manager": "keep",
        "torch/bin/test_api": "t" * 50,
        "torch/bin/protoc": "p",
        "torch/lib/libjitbackend_test.so": "t",
        "torch/lib/libaoti_custom_ops.so": "t",
        "torch/lib/libc10.so": "keep",
        "torch/_C/__init__.pyi": "stub",
        "torch/testing/__init__.py": "keep",
        "numpy/__init__.py": "",
        "numpy/_core/__init__.py": "",
        "numpy/_core/tests/test_x.py": "t",
        "numpy/_core/__pycache__/x.cpython-311.pyc": "old",
        "pip/__init__.py": "",
        "pip-25.0.dist-info/METADATA": "m",
        "setuptools/__init__.py": "",
        "setuptools-80.0.dist-info/RECORD": "setuptools/__init__.py,,\n",
        "_distutils_hack/__init__.py": "",
        "distutils-precedence.pth": "import _distutils_hack",
        "pkg_resources/__init__.py": "",
        "tests/conftest.py": "a top-level tests folder is nobody's package: kept",
        "sympy-1.0.dist-info/licenses/tests/LICENSE": "kept",
    }
    for relative, text in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    (site / "pip-25.0.dist-info" / "RECORD").write_text(
        "pip/__init__.py,,\n../../../bin/pip,,\n../../../bin/pip3,,\n../../../../outside,,\npip-25.0.dist-info/RECORD,,\n"
    )
    (venv / "bin").mkdir()
    for script in ("pip", "pip3", "python3"):
        (venv / "bin" / script).write_text("#!")
    (root / "outside").write_text("never touched: outside the venv")
    return venv, site


def test_slimming_removes_what_serving_never_touches_and_keeps_the_rest(tmp_path: Path) -> None:
    venv, site = make_venv(tmp_path)
    copy_package("regex", site)
    freed = slim(venv, site)
    left = {str(path.relative_to(site)) for path in site.rglob("*") if path.is_file()}
    for gone in (
        "torch/test/cpp/data.bin",
        "torch/include/ATen/ATen.h",
        "torch/share/cmake/Torch/TorchConfig.cmake",
        "torch/bin/test_api",
        "torch/bin/protoc",
        "torch/lib/libjitbackend_test.so",
        "torch/lib/libaoti_custom_ops.so",
        "torch/_C/__init__.pyi",
        "numpy/_core/tests/test_x.py",
        "numpy/_core/__pycache__/x.cpython-311.pyc",
        "pip/__init__.py",
        "pip-25.0.dist-info/METADATA",
        "setuptools/__init__.py",
        "_distutils_hack/__init__.py",
        "distutils-precedence.pth",
        "pkg_resources/__init__.py",
    ):
        assert gone not in left, gone
    for kept in (
        "torch/__init__.py",
        "torch/bin/torch_shm_manager",
        "torch/lib/libc10.so",
        "torch/testing/__init__.py",
        "numpy/_core/__init__.py",
        "tests/conftest.py",
        "sympy-1.0.dist-info/licenses/tests/LICENSE",
    ):
        assert kept in left, kept
    assert sorted(path.name for path in (venv / "bin").iterdir()) == ["python3"]
    assert (tmp_path / "outside").is_file()
    assert freed["symbol tables of shared objects"] > 1_000_000
    assert freed["torch tests, headers, test programs"] >= 150
    assert run_python("import regex; print(regex.sub('b+', '-', 'abbbc'))", site) == "a-c"
