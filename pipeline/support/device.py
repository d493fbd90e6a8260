"""Which device a stage computes on: the recipe's `device` keys, checked before any stage runs."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import EnvironmentProblem


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first `flags` (x86) or `Features` (ARM) line of /proc/cpuinfo, as a set."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


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
