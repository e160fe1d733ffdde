"""Check the image's Python packages and import them as the server will: the build's `venv` stage runs this.

1. torch is the asked version (when one was asked) and the asked device's build. A CPU image must hold a CPU
   build and no nvidia-* packages: PyPI's default torch is a CUDA build with 3 GB of NVIDIA libraries, which
   an index without PyTorch's CPU wheels hands out silently. A CUDA image must hold a CUDA build.
2. The modules the server imports at start for the task are imported, and those of the model's extra packages
   (--import: they must have survived the install and the slimming). That writes their bytecode, the only
   bytecode the slimmed venv ships, so the server starts from compiled modules on a read-only file system
   (compiling torch and transformers at every start costs seconds). Run it with bytecode writing on.
   Byte-compiling is most of the step (about 9 of an image classifier's 13 s on 2 cores), and one process
   does it one module at a time, so a helper process (`--warm`) imports the same modules next to it with
   torch blocked: it writes the bytecode of those that do not need torch (sympy, pydantic, fastapi, most of
   transformers' own) while this one compiles torch's, which cuts the step by about a quarter. The helper is
   only a warm-up: what it wrote for a module this process did not import is removed, so the image ships the
   bytecode of exactly what the server imports.

A failed check prints one line, `bake-check[KIND]: what is wrong`, and exits 1; `bake build` reports that line
with the fix for KIND (torch-build, torch-version or import). Runs with the image's own virtualenv python.

Usage: python check_runtime.py --device cpu|cuda --task TASK [--torch-version VERSION] [--import MODULE ...]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SERVING_MODULES = (
    "torch",
    "torch.nn.functional",
    "numpy",
    "PIL.Image",
    "safetensors.torch",
    "huggingface_hub",
    "pydantic",
    "pydantic.dataclasses",
    "pydantic.v1",
    "fastapi",
    "fastapi.openapi.utils",
    "fastapi.exceptions",
    "fastapi.telemetry._runtime",
    "fastapi_offline",
    "starlette.responses",
    "starlette.requests",
    "uvicorn",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "prometheus_client",
    "python_multipart.multipart",
    "transformers",
    "transformers:AutoConfig",
    "transformers:AutoProcessor",
    "transformers.models.convnext.image_processing_pil_convnext",
)
"""Modules every server imports at start: "module" or "module:name" (a lazily imported name of it)."""
TASK_NAMES = {
    "image-classification": (
        "transformers:AutoModelForImageClassification",
        "transformers:AutoImageProcessor",
        "transformers.image_processing_backends",
    ),
    "text-to-image": (
        "diffusers",
        "diffusers:DiffusionPipeline",
        "diffusers:StableDiffusionPipeline",
        "diffusers.pipelines.auto_pipeline",
        "diffusers.guiders",
        "diffusers:DPMSolverSinglestepScheduler",
        "diffusers:EDMEulerScheduler",
        "diffusers:KDPM2AncestralDiscreteScheduler",
        "diffusers:KDPM2DiscreteScheduler",
        "diffusers:DEISMultistepScheduler",
    ),
}
"""Per task, what the server imports besides."""
LAZY_TORCH_IMPORTS = ("sympy",)
"""Pure-Python packages torch imports only later (symbolic shapes, when a model loads): the helper, which
never imports torch, warms them by name."""


class CheckFailed(Exception):
    """A check failed; `kind` names which, for the fix `bake build` prints."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--task", choices=sorted(TASK_NAMES), required=True)
    parser.add_argument("--torch-version", default="")
    parser.add_argument(
        "--import", dest="modules", action="append", default=[], help="a module of the model's extra packages"
    )
    parser.add_argument("--warm", action="store_true", help="be the helper: warm up, print the module files")
    args = parser.parse_args(argv)
    if args.warm:
        for path in warm_up(args.task, args.modules):
            print(path)
        return 0
    began = time.perf_counter()
    helper = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--warm", *(argv if argv is not None else sys.argv[1:])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        torch_version = check_torch(args.device, args.torch_version)
        imported = import_serving_modules(args.task, args.modules)
    except CheckFailed as failure:
        print(f"bake-check[{failure.kind}]: {' '.join(str(failure).split())}")
        return 1
    finally:
        warmed = set(helper.communicate()[0].splitlines())
    remove_bytecode(warmed - set(module_files()))
    print(
        f"bake-check: torch {torch_version} ({args.device} build); {imported} modules imported and compiled "
        f"in {time.perf_counter() - began:.1f} s"
    )
    return 0


def check_torch(device: str, wanted: str) -> str:
    """torch's version if it is `wanted` (any, when empty) and a build for `device`, else CheckFailed."""
    try:
        import torch
    except ImportError as error:
        raise CheckFailed("import", f"torch does not import: {error}") from None
    version = torch.__version__
    if wanted and _public(version) != _public(wanted):
        raise CheckFailed("torch-version", f"torch {version} is installed, not the asked {wanted}")
    cuda = torch.version.cuda
    if device == "cpu":
        nvidia = nvidia_packages()
        listed = (
            f"{len(nvidia)} nvidia-* packages ({', '.join(nvidia[:3])}{', ...' if len(nvidia) > 3 else ''})"
        )
        if cuda:
            extra = f", with {listed}" if nvidia else ""
            raise CheckFailed(
                "torch-build", f"torch {version} in this CPU image is a CUDA {cuda} build{extra}"
            )
        if nvidia:
            raise CheckFailed("torch-build", f"this CPU image holds {listed} next to torch {version}")
    elif not cuda:
        raise CheckFailed("torch-build", f"torch {version} in this CUDA image is a CPU build")
    return version


def nvidia_packages() -> list[str]:
    """The installed distributions of NVIDIA's CUDA libraries (nvidia-cublas-cu12, ...), sorted."""
    names = {(dist.metadata["Name"] or "").lower() for dist in importlib.metadata.distributions()}
    return sorted(name for name in names if name.startswith("nvidia-"))


def serving_targets(task: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """What the server imports at start for `task`, and the `extra` modules of the model's packages."""
    return (*SERVING_MODULES, *TASK_NAMES[task], *extra)


def load(target: str) -> None:
    """Import `target`, "module" or "module:name" (then also that lazily imported name of the module)."""
    module, _, name = target.partition(":")
    loaded = importlib.import_module(module)
    if name:
        getattr(loaded, name)


def import_serving_modules(task: str, extra: Sequence[str] = ()) -> int:
    """Import what the server imports at start for `task`, and the `extra` modules of the model's packages;
    return how many modules are loaded after."""
    for target in serving_targets(task, extra):
        try:
            load(target)
        except Exception as error:  # noqa: BLE001 - whatever an import raises is the finding
            raise CheckFailed(
                "import", f"{target} does not import: {type(error).__name__}: {error}"
            ) from None
    import PIL.Image

    PIL.Image.init()  # the image plugins, which Image.open loads on first use
    return len(sys.modules)


class _NoTorch(importlib.abc.MetaPathFinder):
    """Refuses torch and its submodules (the helper leaves them to the check's own process)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is left to the check's own process")
        return None


def warm_up(task: str, extra: Sequence[str] = ()) -> list[str]:
    """The helper's work: import what `import_serving_modules` imports, and LAZY_TORCH_IMPORTS, with torch
    refused, writing their bytecode; whatever fails is left to the check. Returns the files of every module
    loaded after."""
    sys.meta_path.insert(0, _NoTorch())
    for target in (*serving_targets(task, extra), *LAZY_TORCH_IMPORTS):
        try:
            load(target)
        except Exception:  # noqa: BLE001 - a warm-up: the check itself imports and reports every target
            continue
    return list(module_files())


def module_files() -> Iterator[str]:
    """The source file of every loaded module that has one."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py"):
            yield path


def remove_bytecode(sources: set[str]) -> None:
    """Delete the bytecode written for each of `sources` (absolute paths of .py files: the helper's modules
    that this process did not import)."""
    for source in sources:
        if not (os.path.isabs(source) and source.endswith(".py")):
            continue  # a line some module printed while the helper imported it
        Path(importlib.util.cache_from_source(source)).unlink(missing_ok=True)


def _public(version: str) -> str:
    """The version without its local label: 2.13.0+cpu -> 2.13.0."""
    return version.split("+", 1)[0]


if __name__ == "__main__":
    sys.exit(main())
