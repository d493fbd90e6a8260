"""Emptying a folder only of what frankenmoe put there.

A command given a folder to work in (`repro-check --work`, `rebuild-check --work`)
starts it afresh. It may remove only what it made: the folder carries a marker file
listing the entries the command writes there, and an entry the marker does not list
(a user's notes, another tool's output) makes the command refuse the folder, naming
it, before anything is removed. A new or empty folder is claimed; a non-empty folder
without the marker is never frankenmoe's, whatever it holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from frankenmoe.errors import UsageError

MARKER = ".frankenmoe-work.json"


def foreign_entries(folder: Path, ours: set[str]) -> list[str]:
    """The names in `folder` that are not in `ours`, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ours)


def refusal(what: str, folder: Path, foreign: list[str], made: str) -> UsageError:
    """The one line that refuses a folder holding files frankenmoe did not make."""
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return UsageError(
        f"{what} {folder}: holds {shown}, which {made}; nothing was removed. Give a new or empty folder, "
        "or move those files out"
    )


def claim_work_folder(folder: Path, entries: list[str], what: str) -> Path:
    """`folder`, emptied of its earlier `entries` and marked as frankenmoe's, or a
    UsageError (exit 2) when it holds anything frankenmoe did not put there."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder}: a file, not a folder; give a new or empty folder")
    if folder.is_dir():
        marker = folder / MARKER
        try:
            listed = set(json.loads(marker.read_text(encoding="utf-8"))["entries"]) if marker.is_file() else set()
        except (OSError, ValueError, KeyError, TypeError):
            listed = set()
        foreign = foreign_entries(folder, listed | {MARKER} if listed else set())
        if foreign:
            raise refusal(what, folder, foreign, "frankenmoe did not make")
        for name in listed:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"entries": sorted(entries)}) + "\n", encoding="utf-8")
    return folder
