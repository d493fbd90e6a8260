"""Regenerate the six Debian corpora of the unseen-recipe examples from a Debian 12 system.

Run once by a maintainer (`python3 calibration/make_debian_corpora.py`); the build
never imports this file. The output is committed, so every machine trains and
evaluates on the same bytes; another Debian release gives other bytes (each
document's package and version are in calibration/debian-provenance.json).

Two groups of three domains, each a recipe the router fit was not tuned on:
- technical prose: `licenses` (/usr/share/doc/*/copyright), `manpages` (roff source
  of section-1 manual pages), `changelogs` (Debian package changelogs);
- source text: `c-headers` (/usr/include/*.h), `perl` (modules of Perl 5.36),
  `shell` (bash completion scripts).

Documents are taken in sorted path order up to a byte budget per domain, one file a
document, cut at MAX_DOC_BYTES, and split as the shipped corpora are (make_corpora.py).
A document whose whitespace-collapsed text equals an earlier one's (Debian ships one
copyright file under many packages: dbus, gnupg, ...) is left out but still counts
towards the budget, so no split holds a copy of another split's document: the build
refuses to fit or calibrate on text that shares a document with verify.files.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from make_corpora import write

BUDGET = 900_000  # bytes of text per domain, all splits
MAX_DOC_BYTES = 24_000
SOURCES = {
    "licenses": ("/usr/share/doc", "*/copyright"),
    "manpages": ("/usr/share/man/man1", "*.1.gz"),
    "changelogs": ("/usr/share/doc", "*/changelog.Debian.gz"),
    "c-headers": ("/usr/include", "*.h"),
    "perl": ("/usr/share/perl/5.36", "**/*.pm"),
    "shell": ("/usr/share/bash-completion/completions", "*"),
}


def read_text(path: Path) -> str | None:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[:MAX_DOC_BYTES] if text.strip() else None


def package_of(path: Path) -> str:
    out = subprocess.run(["dpkg", "-S", str(path.resolve())], capture_output=True, text=True)
    if out.returncode != 0:
        return "unknown"
    name = out.stdout.split(":", 1)[0].split(",")[0].strip()
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True).stdout
    return f"{name} {version}"


def documents(root: str, pattern: str) -> list[dict[str, str]]:
    docs, total, seen = [], 0, set()
    for path in sorted(Path(root).glob(pattern)):
        if not path.is_file() or path.is_symlink() or (text := read_text(path)) is None:
            continue
        if " ".join(text.split()) not in seen:
            seen.add(" ".join(text.split()))
            docs.append({"id": f"debian-12{path}", "text": text, "package": package_of(path)})
        total += len(text.encode())
        if total >= BUDGET:
            break
    return docs


def main() -> None:
    if not Path("/etc/debian_version").read_text().startswith("12."):
        sys.exit("make_debian_corpora.py: run on Debian 12 so the corpora match the committed ones")
    out = Path(__file__).parent
    provenance = {}
    for domain, (root, pattern) in SOURCES.items():
        docs = documents(root, pattern)
        write(domain, [{"id": d["id"], "text": d["text"]} for d in docs], out)
        provenance[domain] = {"source": f"{root}/{pattern}", "documents": {d["id"]: d["package"] for d in docs}}
    (out / "debian-provenance.json").write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
