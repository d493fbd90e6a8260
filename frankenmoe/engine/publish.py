"""Publishing: dist/<name>/<folder>/ assembled from every finished stage that
publishes into it, atomically, as hard links into the cache (build/<name>/
published.json says what dist holds, so re-publishing an unchanged build is free).

A publish replaces the whole folder, so a file in it that no build put there (a
user's notes, a download) would be lost: such a folder is refused, naming the file,
before any stage runs and again before it is replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from frankenmoe.engine.cache import Layout, output_files
from frankenmoe.errors import UsageError
from frankenmoe.provenance.manifest_format import MANIFEST
from frankenmoe.stages.base import Stage, StageResult, published_subfolder
from frankenmoe.support.atomic import atomic_folder, link_or_copy
from frankenmoe.support.hashing import sha256_json
from frankenmoe.support.jsonio import write_json


def published_folders(stages: Sequence[Stage], results: dict[str, StageResult]) -> set[str]:
    """The folders the finished stages wrote files to publish into (never a stage's wildcard)."""
    return {
        folder
        for s in stages
        if s.name in results
        for folder, sub in s.publishes.items()
        if any(rel.startswith(sub + "/") for rel in results[s.name].files)
    }


def foreign_files(dst: Path, recorded: dict | None) -> list[str]:
    """Files in the published folder `dst` that no build put there: neither in what
    published.json recorded (`recorded`) nor in the folder's own build.json."""
    if not dst.is_dir():
        return []
    ours = set(recorded or {}) | {MANIFEST}
    try:
        ours |= set(json.loads((dst / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return sorted(rel for p in dst.rglob("*") if not p.is_dir() and (rel := p.relative_to(dst).as_posix()) not in ours)


def check_publish_targets(layout: Layout, folders: set[str]) -> None:
    """Refuse (exit 2) before anything runs when a folder the build will replace holds
    files it did not publish; every such folder is named."""
    published = _published(layout)
    problems = []
    for folder in sorted(folders):
        dst = layout.dist / folder
        if foreign := foreign_files(dst, (published.get(folder) or {}).get("files")):
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            problems.append(
                f"{dst}: holds {shown}, which no frankenmoe build published there; publishing replaces the folder, "
                "so move those files out (nothing was built or removed)"
            )
    if problems:
        raise UsageError(problems)


def _published(layout: Layout) -> dict:
    published_file = layout.own / "published.json"
    return json.loads(published_file.read_text()) if published_file.is_file() else {}


def publish(done: dict[str, StageResult], layout: Layout, folders: set[str], stages: Sequence[Stage]) -> list[Path]:
    """Assemble dist/<name>/<folder> from every finished stage that publishes into
    it (the AWQ folder: quantize's model plus verify's report), atomically, as hard
    links into the cache. Skipped when dist already holds exactly these files: the
    same stage keys and content hashes (a forced rerun can write other bytes under
    the same key), and files unchanged on disk since."""
    published_file = layout.own / "published.json"
    published = _published(layout)
    check_publish_targets(layout, folders)
    out = []
    for folder in sorted(folders):
        parts = [
            (res, sub)
            for stage in stages
            if (res := done.get(stage.name)) and (sub := published_subfolder(stage, folder)) is not None
        ]
        key = sha256_json(
            [
                [
                    res.name,
                    res.key,
                    {rel: meta["sha256"] for rel, meta in sorted(res.files.items()) if rel.startswith(sub + "/")},
                ]
                for res, sub in parts
            ]
        )[:16]
        dst = layout.dist / folder
        out.append(dst)
        entry = published.get(folder)
        if entry and entry["key"] == key and _same_files(dst, entry["files"]):
            continue
        layout.dist.mkdir(parents=True, exist_ok=True)
        for leftover in [*layout.dist.glob(f".{folder}.tmp-*"), *layout.dist.glob(f".{folder}.old-*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # from a killed build; we hold the lock
        full = f"publish: disk full while writing {dst}; it was left as it was, free space and rerun"
        with atomic_folder(dst, full) as tmp:
            _assemble(tmp, parts)
        published[folder] = {"key": key, "files": _stat_files(dst)}
        published_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(published_file, published)
    return out


def _assemble(tmp: Path, parts: list[tuple[StageResult, str]]) -> None:
    """Hard links to the cached files (copies across file systems)."""
    for res, sub in parts:
        src = res.path / sub
        for f in output_files(src):
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(f, target)


def _stat_files(root: Path) -> dict[str, list[int]]:
    return {p.relative_to(root).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in output_files(root)}


def _same_files(root: Path, recorded: dict[str, list[int]]) -> bool:
    return root.is_dir() and _stat_files(root) == recorded
