"""Facts about this machine that shape output bytes, read once per process: the
CPU's flags and vector extension, torch's CPU capability, whether a GPU is there,
and the machine class that stage keys name. Also the recipe's `device` keys,
checked before any stage runs. /proc/cpuinfo is read here and nowhere else.

Without a GPU driver nothing here imports torch: stage keys ask for the machine
class on every build, and a fully cached build never imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from frankenmoe.errors import EnvironmentProblem
from frankenmoe.support.versions import tool_versions

if TYPE_CHECKING:
    from frankenmoe.support.hashing import HashState

# The vector extension a CPU's path names (it shapes float32 rounding), widest first.
VECTOR_FLAGS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("asimd", "asimd"), ("neon", "neon"))


@functools.cache
def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _flags_line(cpuinfo: str) -> str:
    return next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo, as a set."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_isa(cpuinfo: str | None = None) -> str:
    """The CPU's widest vector extension (VECTOR_FLAGS), or "unknown"."""
    flags = cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo)
    return next((name for flag, name in VECTOR_FLAGS if flag in flags), "unknown")


def cpu_capability(state: HashState) -> str:
    """The vector instructions torch dispatches to (AVX512, AVX2, ...): its float
    rounding depends on them. Remembered per CPU, torch version and override, so
    torch is asked once per machine, not once per build."""
    flags = _flags_line(read_cpuinfo()) or platform.processor()
    key = hashlib.sha256(
        f"{flags}|{os.environ.get('ATEN_CPU_CAPABILITY', '')}|{tool_versions(['torch'])}".encode()
    ).hexdigest()[:16]

    def ask_torch() -> str:
        import torch

        return torch.backends.cpu.get_cpu_capability()

    return state.remember(f"cpu_capability:{key}", ask_torch)


def gpu_driver_loaded() -> bool:
    """An NVIDIA (or ROCm) driver is loaded: only then can torch find a GPU."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/kfd").exists()


@functools.cache
def cuda_device() -> tuple[tuple[int, int], str] | None:
    """((major, minor), name) of the first CUDA device, None without one (asked once per process)."""
    if not gpu_driver_loaded():
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(0)), torch.cuda.get_device_name(0)


def machine_class(gpu: tuple[tuple[int, int], str] | None | bool = True, cpuinfo: str | None = None) -> dict[str, str]:
    """Where a computation runs on this machine, for the keys of the stages whose
    bytes depend on it: {"device": "cuda", "capability": "sm_90 NVIDIA H200"} or
    {"device": "cpu", "isa": "avx512"}. `gpu`: True detects it, None means the CPU
    even with a GPU, or ((major, minor), name) as given."""
    if gpu is True:
        gpu = cuda_device()
    if gpu:
        (major, minor), name = gpu
        return {"device": "cuda", "capability": f"sm_{major}{minor} {name}"}
    return {"device": "cpu", "isa": cpu_isa(cpuinfo)}


def device_class(device: str, cpuinfo: str | None = None) -> dict[str, str]:
    """`machine_class` for a stage's `device` setting (auto, cpu, cuda): `cpu` means
    the CPU even with a GPU."""
    return machine_class(gpu=None if device == "cpu" else True, cpuinfo=cpuinfo)


def require_gpu_if_asked(setting: str, key: str) -> None:
    """`cuda` on a machine without a usable GPU is one line naming the key, not a torch traceback.
    (torch is imported only when a recipe asks for cuda: a no-op build stays fast.)"""
    if setting != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise EnvironmentProblem(f"{key}: cuda, but torch finds no usable GPU on this machine; set it to auto or cpu")


def resolve_device(setting: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if setting == "auto" else setting
