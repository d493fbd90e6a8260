"""How a recipe's path strings become files, by one rule for every path key.

- `shipped:code/eval.jsonl` names a corpus installed with the package (the
  `calibration/` folder of the repository, package data `frankenmoe.shipped`), so a
  recipe without `quantize:`/`verify:`/`gates:` sections builds in any folder;
- a relative path is relative to the recipe file's folder (not the current one);
- an absolute path (or `~/...`) is taken as it is.

The string as written is what keys, locks and records keep; only `portable()` of it
is ever published, so no local path leaves the machine.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

SHIPPED = "shipped:"


def shipped_dir() -> Path:
    """The installed corpora: `<dir>/<domain>/{train,calibration,eval}.jsonl`."""
    return Path(str(importlib.resources.files("frankenmoe.shipped")))


def shipped(rel: str) -> str:
    return SHIPPED + rel


def resolve_path(name: str, root: Path) -> Path:
    if name.startswith(SHIPPED):
        return shipped_dir() / name[len(SHIPPED) :]
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def portable(name: str) -> str:
    """A path as it may appear in a lock or a published file: relative and shipped
    ones as written, absolute ones by file name only."""
    return Path(name).name if Path(name).expanduser().is_absolute() else name
