"""JSON written the one way the project writes JSON: sorted keys, atomic replace."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_document(path: Path, fmt: Any, error: type[Exception], missing: str, fix: str) -> dict:
    """A JSON object whose "format" must be `fmt` (a lock file, a build.json); any
    problem is `error`, one line naming the file, with `missing` / `fix` as the hint."""
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not of format {fmt}; {fix}")
    return doc


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
