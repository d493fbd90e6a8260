"""Read the project's text corpora: JSON Lines with a `text` field, or plain text."""

from __future__ import annotations

import json
from pathlib import Path

from frankenmoe.errors import InputFileError


def read_documents(files: list[Path]) -> list[dict]:
    """Documents from `.jsonl` (one object with `text` per line) or `.txt` (one per file),
    each with the line it starts on."""
    docs: list[dict] = []
    for path in files:
        start = len(docs)
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise InputFileError(f"{path}: file not found")
        except IsADirectoryError:
            raise InputFileError(f"{path}: a folder, not a text file; name the .jsonl or .txt files in it")
        except PermissionError:
            raise InputFileError(f"{path}: not readable (permission denied)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputFileError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8")
        if Path(path).suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    docs.append(
                        {
                            "id": row.get("id", f"{Path(path).name}:{n}"),
                            "domain": row.get("domain"),
                            "text": row["text"],
                            "line": n,
                        }
                    )
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise InputFileError(f'{path}:{n}: expected a JSON object with a "text" field')
                if not isinstance(row["text"], str):
                    raise InputFileError(f'{path}:{n}: "text" is {type(row["text"]).__name__}, not a string')
                if row.get("domain") is not None and not isinstance(row["domain"], str):
                    raise InputFileError(
                        f'{path}:{n}: "domain" is {type(row["domain"]).__name__}, not a string; write it as a name '
                        'such as "code"'
                    )
        else:
            docs.append({"id": Path(path).name, "domain": None, "text": text, "line": 1})
        if not any(d["text"].strip() for d in docs[start:]):
            raise InputFileError(f"{path}: no text in file")
    return docs
