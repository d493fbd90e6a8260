"""The `build.json` format: written into every published folder by the manifest
stage, read back by `rebuild-check`."""

from __future__ import annotations

from pathlib import Path

from frankenmoe.errors import InputFileError
from frankenmoe.support.jsonio import read_document

FORMAT = "frankenmoe-build/1"
MANIFEST = "build.json"


def read_manifest(folder: Path) -> dict:
    return read_document(
        folder / MANIFEST,
        FORMAT,
        InputFileError,
        f"not found; rebuild-check needs a folder published by frankenmoe (with its {MANIFEST})",
        "it was not written by frankenmoe, or was edited",
    )
