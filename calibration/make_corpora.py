"""Regenerate the shipped corpora from a CPython 3.11 installation.

Run once by a maintainer (`python calibration/make_corpora.py`); the build never
imports this file. The output files are committed so that every machine trains and
calibrates on the same bytes, whatever Python it runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from pathlib import Path

# Pure-Python standard-library modules: plain, idiomatic code of varied kinds.
CODE_MODULES = [
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "code", "codeop",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "difflib", "dis", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "genericpath", "getopt", "gettext", "glob", "graphlib",
    "gzip", "heapq", "hmac", "imaplib", "inspect", "ipaddress", "keyword",
    "linecache", "locale", "mailbox", "mimetypes", "netrc", "ntpath", "numbers",
    "operator", "optparse", "pathlib", "pickle", "pkgutil", "platform", "plistlib",
    "posixpath", "pprint", "queue", "quopri", "random", "reprlib", "sched",
    "secrets", "selectors", "shlex", "shutil", "smtplib", "socket", "statistics",
    "string", "stringprep", "subprocess", "symtable", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "trace",
    "traceback", "types", "typing", "uuid", "warnings", "wave", "weakref",
    "zipapp", "zipfile",
]


def split_of(doc_id: str) -> str:
    """Assign a document to a split by a hash of its id, so the split is stable."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 10
    return "eval" if bucket == 0 else "calibration" if bucket == 1 else "train"


def code_documents() -> list[dict[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [
        {"id": f"cpython-3.11/Lib/{name}.py", "text": (stdlib / f"{name}.py").read_text("utf-8")}
        for name in CODE_MODULES
    ]


def prose_documents() -> list[dict[str, str]]:
    from pydoc_data.topics import topics  # the Language Reference, as plain text

    return [{"id": f"cpython-3.11/Doc/topics/{key}", "text": text} for key, text in sorted(topics.items())]


def write(domain: str, docs: list[dict[str, str]], out: Path) -> None:
    splits: dict[str, list[dict[str, str]]] = {"train": [], "calibration": [], "eval": []}
    for doc in docs:
        splits[split_of(doc["id"])].append(doc)
    (out / domain).mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out / domain / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps({"id": row["id"], "domain": domain, "text": row["text"]}, ensure_ascii=False) + "\n")


def main() -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit("make_corpora.py: run with CPython 3.11 so the corpora match the committed ones")
    out = Path(__file__).parent
    write("code", code_documents(), out)
    write("prose", prose_documents(), out)


if __name__ == "__main__":
    main()
