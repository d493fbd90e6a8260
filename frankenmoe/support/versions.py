"""Versions of the packages that shape output bytes; part of every stage key."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def tool_versions(packages: list[str]) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
