"""The stage cache: build/<name>/<stage>/<key>/ holds a finished output and its
record.json. A key folder exists only once its stage finished (it is renamed into
place), and a folder whose files no longer match their record is never served."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Stage, StageResult
from frankenmoe.support import settings
from frankenmoe.support.hashing import HashState

RECORD = "record.json"


@dataclass(frozen=True)
class Layout:
    """Where a build keeps its cache (build_root/name) and publishes (dist_root/name).
    A `variant` (one recipe of a sweep or study) shares the cache of every build of
    `name` but has its own dist folder, lock and published.json, so variants build
    side by side."""

    build_root: Path
    dist_root: Path
    name: str
    variant: str | None = None

    @property
    def build(self) -> Path:
        return self.build_root / self.name

    @property
    def dist(self) -> Path:
        return self.dist_root / self.name

    def stage_dir(self, stage: str) -> Path:
        return self.build / stage

    @property
    def own(self) -> Path:
        """This build's lock and published.json: one per dist folder."""
        return self.build if self.variant is None else self.build / ".variants" / self.variant


def default_layout(recipe: Recipe, build_root: Path | None = None, dist_root: Path | None = None) -> Layout:
    return Layout(
        Path(build_root or settings.build_root()),
        Path(dist_root or settings.dist_root()),
        recipe.name,
    )


def read_record(folder: Path) -> dict:
    """A finished stage's record.json, as every reader gets it (keys sorted, as written)."""
    return json.loads((folder / RECORD).read_text())


def cached_result(stage: Stage, layout: Layout, key: str, state: HashState) -> StageResult | None:
    """The finished output for `key`, or None. A folder whose files no longer match
    their record is treated as absent, never served: a file of another size, or one
    whose stat (size, mtime, inode) changed since it was hashed and whose sha256 now
    differs (as DVC's state: an unchanged file is not read again, so a no-op
    rebuild stays fast). The stage then runs again and replaces the folder."""
    path = layout.stage_dir(stage.name) / key
    if not (path / RECORD).is_file():
        return None
    try:
        record = read_record(path)
        for rel, meta in record["files"].items():
            if (path / rel).stat().st_size != meta["size"] or state.sha256(path / rel) != meta["sha256"]:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return StageResult(stage.name, key, path, record)


@contextmanager
def key_lock(layout: Layout, stage: str, key: str) -> Iterator[None]:
    """One writer per stage key, across processes (and across machines where the
    shared file system honours flock, as NFSv4 and Lustre do): a second build that
    reaches the same key waits, then finds the finished folder. flock is released
    by the kernel when its holder dies, so a killed worker never blocks a retry."""
    locks = layout.build / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{stage}-{key}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def output_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != RECORD)


def fsync_tree(root: Path) -> None:
    for p in [*output_files(root), *[d for d in root.rglob("*") if d.is_dir()], root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
