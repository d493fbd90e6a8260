"""The `build.json` format: written into every published folder by the manifest
stage, read back by `rebuild-check` and `push`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from frankenmoe.errors import InputFileError
from frankenmoe.support.jsonio import read_document

FORMAT = "frankenmoe-build/1"
MANIFEST = "build.json"
# The stage whose checks each published folder answers to: verify for the merged and
# AWQ folders, llama.cpp's check for GGUF, the check through transformers for w4a16/
# (the folder stages/compressed.py publishes).
CHECKED_BY = {"merged": "verify", "awq": "verify", "gguf": "gguf", "w4a16": "w4a16"}


def failed_checks(records: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """{published folder: its failed checks}, from the stages' results (a build's, or
    the `stages` a build.json holds). The card flags a folder listed here, push refuses it."""
    return {
        folder: records[stage]["failures"]
        for folder, stage in CHECKED_BY.items()
        if stage in records and records[stage].get("failures")
    }


def read_manifest(
    folder: Path, missing: str = "rebuild-check needs a folder published by frankenmoe (with its build.json)"
) -> dict:
    return read_document(
        folder / MANIFEST,
        FORMAT,
        InputFileError,
        f"not found; {missing}",
        "it was not written by frankenmoe, or was edited",
    )
