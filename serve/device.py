"""Device and dtype selection, and recognising device out-of-memory errors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serve.contract.errors import SettingsError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """Where the model's parameters live and in which dtype they compute."""

    device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        """Whether the parameters live on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def dtype_name(self) -> str:
        """The dtype as a short name, e.g. "float16"."""
        return str(self.dtype).removeprefix("torch.")


def choose_placement(device: str, dtype: str) -> Placement:
    """Resolve the `BAKE_DEVICE` / `BAKE_DTYPE` settings against the hardware that is present.

    `auto` picks CUDA when a GPU is visible, else the CPU; the `auto` dtype is float16 on CUDA (bfloat16
    where float16 is not supported is left to an explicit setting) and float32 on the CPU.
    """
    if device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SettingsError(
                f"BAKE_DEVICE={device} but no CUDA device is visible: run the container with --gpus all, "
                "or set BAKE_DEVICE=cpu"
            )
        resolved = torch.device(device)
    else:
        resolved = torch.device("cpu")
    if dtype == "auto":
        resolved_dtype = torch.float16 if resolved.type == "cuda" else torch.float32
    else:
        resolved_dtype = _DTYPES[dtype]
    if resolved.type == "cpu" and resolved_dtype == torch.float16:
        raise SettingsError("BAKE_DTYPE=float16 is not supported on the CPU: use float32 or bfloat16")
    return Placement(resolved, resolved_dtype)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory (so a smaller batch may succeed)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory(placement: Placement) -> None:
    """Give cached but unused device memory back after an out-of-memory error."""
    if placement.is_cuda:
        torch.cuda.empty_cache()
