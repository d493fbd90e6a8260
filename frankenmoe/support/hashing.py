"""Content hashes, with a stat-keyed memo so unchanged files are never re-read.

A no-op rebuild must not grow with model size, so (as DVC's state does) the sha256
of a file is remembered against its path, size, mtime and inode; a file whose stat
is unchanged is not read again, nor is a hard link to a file already hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: object) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class HashState:
    """Persistent memo of file hashes keyed by (path, size, mtime_ns, inode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, list] = {}
        self._dirty = False
        if path.is_file():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self._entries = {}  # a damaged memo only costs re-hashing

    def sha256(self, file: Path) -> str:
        st = os.stat(file)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        key = str(Path(file).resolve())
        entry = self._entries.get(key)
        if entry and entry[:3] == stamp:
            return entry[3]
        # The same inode under another name: a hard link (synthetic or deduplicated
        # model folders share shards this way) is read once.
        inode = f"inode:{st.st_dev}:{st.st_ino}"
        same = self._entries.get(inode)
        digest = same[2] if same and same[:2] == stamp[:2] else sha256_file(file)
        self._entries[key] = stamp + [digest]
        self._entries[inode] = stamp[:2] + [digest]
        self._dirty = True
        return digest

    def remember(self, key: str, compute):
        """A JSON-able fact about this machine (e.g. torch's CPU capability), computed
        once per `key` and kept with the hashes, so a no-op build need not import torch."""
        entry = self._entries.get(f"fact:{key}")
        if entry is None:
            entry = self._entries[f"fact:{key}"] = [compute()]
            self._dirty = True
        return entry[0]

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self._entries, sort_keys=True))
        os.replace(tmp, self.path)
        self._dirty = False
