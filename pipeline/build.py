"""The staged build: keys, cache, atomic outputs, the build lock and publishing to dist/.

Layout, for a recipe named N:
    build/N/<stage>/<key>/        a finished stage output with its record.json
    build/N/<stage>/.tmp-<key>-*  a stage being written (never read as a result)
    build/N/.lock                 held (flock) by the running build of N
    build/N/published.json        what dist/N holds, to make re-publishing free
    dist/N/<folder>/              the published result (hard links into build/)

A stage's key is a hash of its recipe section, the keys of the stages it depends
on, its extra inputs (file hashes) and the versions of the tools that shape its
bytes. A key folder exists only once its stage finished: it is written under a
temporary name and renamed into place, so a killed build never leaves a result
that a later build would serve.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pipeline import __version__
from pipeline.errors import EnvironmentProblem, FrankenmoeError, VerifyFailed
from pipeline.hashing import HashState, sha256_json
from pipeline.jsonio import write_json
from pipeline.lock import current_lock, require_match
from pipeline.progress import quiet_libraries
from pipeline.recipe import Recipe
from pipeline.stages import STAGES
from pipeline.stages.base import Stage, StageContext, StageResult
from pipeline.versions import tool_versions

RECORD = "record.json"


@dataclass(frozen=True)
class Layout:
    build_root: Path
    dist_root: Path
    name: str

    @property
    def build(self) -> Path:
        return self.build_root / self.name

    @property
    def dist(self) -> Path:
        return self.dist_root / self.name

    def stage_dir(self, stage: str) -> Path:
        return self.build / stage


def default_layout(recipe: Recipe, build_root: Path | None = None, dist_root: Path | None = None) -> Layout:
    return Layout(
        Path(build_root or os.environ.get("FRANKENMOE_BUILD_DIR", "build")),
        Path(dist_root or os.environ.get("FRANKENMOE_DIST_DIR", "dist")),
        recipe.name,
    )


def key_material(stage: Stage, recipe: Recipe, fingerprint: dict, deps: dict[str, StageResult]) -> dict:
    """Everything that shapes a stage's output bytes; its hash is the stage key."""
    return {
        "stage": stage.name,
        "stage_version": stage.version,
        "config": stage.config(recipe),
        "fingerprint": fingerprint,
        "inputs": {name: res.key for name, res in sorted(deps.items())},
        "versions": tool_versions(list(stage.packages)),
        "frankenmoe": __version__,
    }


def stage_key(stage: Stage, recipe: Recipe, fingerprint: dict, deps: dict[str, StageResult]) -> str:
    return sha256_json(key_material(stage, recipe, fingerprint, deps))[:16]


def cached_result(stage: Stage, layout: Layout, key: str) -> StageResult | None:
    """The finished output for `key`, or None. A folder whose files no longer match
    their recorded sizes is treated as absent (and removed), never served."""
    path = layout.stage_dir(stage.name) / key
    record_file = path / RECORD
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
        for rel, meta in record["files"].items():
            if (path / rel).stat().st_size != meta["size"]:
                raise ValueError(rel)
    except (OSError, ValueError, KeyError):
        shutil.rmtree(path, ignore_errors=True)
        return None
    return StageResult(stage.name, key, path, record)


def output_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != RECORD)


def _fsync_tree(root: Path) -> None:
    for p in [*output_files(root), *[d for d in root.rglob("*") if d.is_dir()], root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_free_space(stage: Stage, where: Path, needed: int | None) -> None:
    if not needed:
        return
    free = shutil.disk_usage(where).free
    if free < needed:
        raise EnvironmentProblem(
            f"{stage.name}: needs about {needed / 1e9:.2f} GB free under {where}, only {free / 1e9:.2f} GB free; "
            "free some space or point FRANKENMOE_BUILD_DIR at a larger disk"
        )


def run_stage(
    stage: Stage,
    recipe: Recipe,
    layout: Layout,
    deps: dict[str, StageResult],
    state: HashState,
    force: bool,
    log: Callable[[str], None],
) -> tuple[StageResult, bool, float]:
    """Run one stage unless its key is cached. Returns (result, ran, seconds)."""
    t0 = time.monotonic()
    material = key_material(stage, recipe, stage.fingerprint(recipe, state, deps), deps)
    key = sha256_json(material)[:16]
    stage_dir = layout.stage_dir(stage.name)
    if not force and not stage.never_cached:
        hit = cached_result(stage, layout, key)
        if hit:
            return hit, False, time.monotonic() - t0
    stage_dir.mkdir(parents=True, exist_ok=True)
    for leftover in stage_dir.glob(".tmp-*"):  # from a killed build; we hold the lock
        shutil.rmtree(leftover, ignore_errors=True)
    check_free_space(stage, stage_dir, stage.estimate_bytes(recipe, deps))
    tmp = stage_dir / f".tmp-{key}-{os.getpid()}"
    tmp.mkdir()
    quiet_libraries()
    try:
        result = stage.run(StageContext(recipe=recipe, out=tmp, inputs=deps, state=state, dist=layout.dist, log=log))
        files = {}
        for f in output_files(tmp):
            files[f.relative_to(tmp).as_posix()] = {"sha256": state.sha256(f), "size": f.stat().st_size}
        record = {**material, "key": key, "files": files, "result": result, "wall_s": round(time.monotonic() - t0, 3)}
        write_json(tmp / RECORD, record)
        _fsync_tree(tmp)
        final = stage_dir / key
        if final.exists():  # a forced rerun replaces the old result
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise EnvironmentProblem(
                f"{stage.name}: disk full while writing {stage_dir}; nothing was kept, free space and rerun"
            ) from None
        raise
    state.save()
    return StageResult(stage.name, key, final, record), True, time.monotonic() - t0


@contextmanager
def build_lock(layout: Layout, log: Callable[[str], None]) -> Iterator[None]:
    """One build of a recipe at a time. flock is released by the kernel when its
    holder dies (even by kill -9), so a stale lock can never block a rerun."""
    try:
        layout.build.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.build / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        raise EnvironmentProblem(
            f"{layout.build}: not writable; fix its permissions or set FRANKENMOE_BUILD_DIR"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            log(f"waiting for another build of {layout.name} to finish (pid {holder}) ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def publish(
    done: dict[str, StageResult], layout: Layout, folders: set[str], stages: list[Stage] | tuple[Stage, ...] = STAGES
) -> list[Path]:
    """Assemble dist/<name>/<folder> from every finished stage that publishes into
    it (the AWQ folder: quantize's model plus verify's report), atomically, as hard
    links into the cache. Skipped when dist already holds exactly these files: the
    same stage keys and content hashes (a forced rerun can write other bytes under
    the same key), and files unchanged on disk since."""
    published_file = layout.build / "published.json"
    published = json.loads(published_file.read_text()) if published_file.is_file() else {}
    out = []
    for folder in sorted(folders):
        parts = [
            (res, stage.publishes[folder])
            for stage in stages
            if (res := done.get(stage.name)) and folder in stage.publishes
        ]
        key = sha256_json(
            [
                [
                    res.name,
                    res.key,
                    {
                        rel: meta["sha256"]
                        for rel, meta in sorted(res.record["files"].items())
                        if rel.startswith(sub + "/")
                    },
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
        tmp = layout.dist / f".{folder}.tmp-{os.getpid()}"
        try:
            _assemble(tmp, parts)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise EnvironmentProblem(
                    f"publish: disk full while writing {dst}; it was left as it was, free space and rerun"
                ) from None
            raise
        if dst.exists():
            old = layout.dist / f".{folder}.old-{os.getpid()}"
            os.rename(dst, old)
            os.rename(tmp, dst)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dst)
        published[folder] = {"key": key, "files": _stat_files(dst)}
        write_json(published_file, published)
    return out


def _assemble(tmp: Path, parts: list[tuple[StageResult, str]]) -> None:
    """Hard links to the cached files (copies across file systems)."""
    tmp.mkdir(parents=True)
    for res, sub in parts:
        src = res.path / sub
        for f in output_files(src):
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise
                shutil.copy2(f, target)


def _stat_files(root: Path) -> dict[str, list[int]]:
    return {p.relative_to(root).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in output_files(root)}


def _same_files(root: Path, recorded: dict[str, list[int]]) -> bool:
    return root.is_dir() and _stat_files(root) == recorded


def select_stages(until: str | None) -> list[Stage]:
    names = [s.name for s in STAGES]
    if until is not None and until not in names:
        raise FrankenmoeError(f"--until: unknown stage {until!r}; stages are {', '.join(names)}")
    if until is None:
        return list(STAGES)
    needed = _ancestors(until) | {until}  # `--until evaluate` need not quantize
    return [s for s in STAGES if s.name in needed]


def finished_results(recipe: Recipe, layout: Layout, names: list[str]) -> dict[str, StageResult]:
    """The cached results of the named stages (and what they depend on) for this
    recipe, without running anything; an error naming the first one not built."""
    state = HashState(layout.build_root / ".hash-state.json")
    results: dict[str, StageResult] = {}
    for stage in STAGES:
        if not any(stage.name == n or stage.name in _ancestors(n) for n in names):
            continue
        deps = {d: results[d] for d in stage.depends}
        key = stage_key(stage, recipe, stage.fingerprint(recipe, state, deps, offline=True) or {}, deps)
        hit = cached_result(stage, layout, key)
        if hit is None:
            raise FrankenmoeError(
                f"{stage.name}: not built for this recipe yet; run `frankenmoe build {recipe.name}` first"
            )
        results[stage.name] = hit
    state.save()
    return results


def _ancestors(name: str) -> set[str]:
    by_name = {s.name: s for s in STAGES}
    out: set[str] = set()
    todo = list(by_name[name].depends)
    while todo:
        d = todo.pop()
        if d not in out:
            out.add(d)
            todo.extend(by_name[d].depends)
    return out


def build(
    recipe: Recipe,
    layout: Layout,
    force: set[str] = frozenset(),
    until: str | None = None,
    log: Callable[[str], None] = print,
    locked: dict | None = None,
) -> dict[str, StageResult]:
    """Run the stages in order, each cached by its key; publish what they publish.
    With `locked` (a lock file's contents), refuse to start unless every pinned
    input and tool version is what the lock says."""
    stages = select_stages(until)
    for name in force:
        if name not in {s.name for s in STAGES}:
            raise FrankenmoeError(f"--force: unknown stage {name!r}; stages are {', '.join(s.name for s in STAGES)}")
    for stage in stages:
        stage.preflight(recipe)
    state = HashState(layout.build_root / ".hash-state.json")
    if locked is not None:
        check_lock(recipe, locked, state)
    results: dict[str, StageResult] = {}
    with build_lock(layout, log):
        for stage in stages:
            if stage.reads_dist:
                publish(results, layout, published_folders(results))
            deps = {d: results[d] for d in stage.depends}
            result, ran, seconds = run_stage(stage, recipe, layout, deps, state, stage.name in force, log)
            results[stage.name] = result
            log(f"{stage.name:<9} {'ran' if ran else 'cached':<7} {seconds:7.1f}s  {result.path}")
            outcome = result.record["result"]
            if outcome.get("failures") and outcome.get("enforced"):
                publish(results, layout, published_folders(results))  # so the failed verify.json can be read
                state.save()
                raise VerifyFailed(outcome["failures"])
        # dist/ changes once, when the build is through: a killed build leaves the last complete one.
        for folder in publish(results, layout, published_folders(results)):
            log(f"published {folder}")
        state.save()
    return results


def check_lock(recipe: Recipe, locked: dict, state: HashState) -> None:
    require_match(
        locked,
        current_lock(recipe, state),
        "nothing was built; restore the locked inputs and versions, or accept the change with `frankenmoe lock RECIPE`",
    )


def published_folders(results: dict[str, StageResult]) -> set[str]:
    return {folder for s in STAGES if s.name in results for folder in s.publishes}
