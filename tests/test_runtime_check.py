"""The build's runtime check (bake/image/check_runtime.py), run as the build step runs it, on this machine's
torch.

This environment holds torch 2.13.0+cpu, the CPU build bake's CPU images are tested with, so the check passes
for a CPU image of that version and fails, with one line naming what is wrong, for another version, for a CUDA
image, and when an nvidia-* distribution (a CUDA torch's libraries) is installed next to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bake" / "image" / "check_runtime.py"


def check(
    *args: str, pythonpath: Path | None = None, pycache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the check; with `pycache`, writing bytecode there (PYTHONPYCACHEPREFIX), else writing none."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE")
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


def test_this_machines_torch_passes_for_a_cpu_image_and_every_serving_module_imports() -> None:
    assert torch.__version__ == "2.13.0+cpu"
    result = check("--device", "cpu", "--task", "image-classification", "--torch-version", "2.13.0+cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("bake-check: torch 2.13.0+cpu (cpu build); ")


def test_another_version_fails_with_one_line() -> None:
    line = failure_line(
        check("--device", "cpu", "--task", "image-classification", "--torch-version", "2.12.1+cpu")
    )
    assert line == "bake-check[torch-version]: torch 2.13.0+cpu is installed, not the asked 2.12.1+cpu"


def test_a_cpu_build_in_a_cuda_image_fails() -> None:
    line = failure_line(check("--device", "cuda", "--task", "image-classification"))
    assert line == "bake-check[torch-build]: torch 2.13.0+cpu in this CUDA image is a CPU build"


def test_nvidia_libraries_in_a_cpu_image_fail(tmp_path: Path) -> None:
    for name in ("nvidia_cublas_cu12-12.8.4.1", "nvidia_cudnn_cu12-9.10.2.21"):
        info = tmp_path / f"{name}.dist-info"
        info.mkdir()
        project, version = name.rsplit("-", 1)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project.replace('_', '-')}\nVersion: {version}\n"
        )
    line = failure_line(check("--device", "cpu", "--task", "image-classification", pythonpath=tmp_path))
    assert line == (
        "bake-check[torch-build]: this CPU image holds 2 nvidia-* packages (nvidia-cublas-cu12, "
        "nvidia-cudnn-cu12) next to torch 2.13.0+cpu"
    )


@pytest.mark.parametrize("task", ["image-classification", "text-to-image"])
def test_a_missing_serving_module_fails_with_its_name(tmp_path: Path, task: str) -> None:
    (tmp_path / "uvicorn").mkdir()
    (tmp_path / "uvicorn" / "__init__.py").write_text("raise ImportError('uvicorn is broken here')\n")
    line = failure_line(check("--device", "cpu", "--task", task, pythonpath=tmp_path))
    assert line == "bake-check[import]: uvicorn does not import: ImportError: uvicorn is broken here"


def test_a_models_extra_packages_are_imported_and_a_missing_one_fails_with_its_module(tmp_path: Path) -> None:
    imports = [
        arg for module in ("sentencepiece", "google.protobuf", "ftfy", "bs4") for arg in ("--import", module)
    ]
    assert check("--device", "cpu", "--task", "text-to-image", *imports).returncode == 0
    # diffusers itself imports ftfy when it finds one, so a broken ftfy is shown on the classification task.
    (tmp_path / "ftfy").mkdir()
    (tmp_path / "ftfy" / "__init__.py").write_text("raise ImportError('slimmed away')\n")
    line = failure_line(
        check("--device", "cpu", "--task", "image-classification", *imports, pythonpath=tmp_path)
    )
    assert line == "bake-check[import]: ftfy does not import: ImportError: slimmed away"


def test_the_bytecode_kept_is_of_what_the_check_imports_the_helper_only_warms_up(tmp_path: Path) -> None:
    """`probe` imports torch, or, where torch is refused (in the warm-up helper), `helper_only`: the helper
    really runs (it leaves a mark) and its bytecode of a module the check itself never imported is removed."""
    packages, pycache, mark = tmp_path / "packages", tmp_path / "pycache", tmp_path / "helper-ran"
    packages.mkdir()
    (packages / "probe.py").write_text(
        "try:\n    import torch\nexcept ImportError:\n    import helper_only\n"
    )
    (packages / "helper_only.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
    result = check(
        "--device", "cpu", "--task", "image-classification", "--import", "probe",
        pythonpath=packages, pycache=pycache,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert mark.exists(), "the helper imported probe with torch refused"

    def bytecode(source: Path) -> Path:
        name = f"{source.stem}.{sys.implementation.cache_tag}.pyc"
        return pycache / source.parent.relative_to("/") / name

    assert bytecode(packages / "probe.py").is_file()
    assert not bytecode(packages / "helper_only.py").exists()
    assert bytecode(Path(torch.__file__)).is_file() and len(list(pycache.rglob("*.pyc"))) > 1000
