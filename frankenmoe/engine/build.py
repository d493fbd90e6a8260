"""The staged build: runs the stage list it is given, each stage cached by its key,
under the build's flock, and publishes to dist/.

Layout, for a recipe named N:
    build/N/<stage>/<key>/        a finished stage output with its record.json
    build/N/<stage>/.tmp-<key>-*  a stage being written (never read as a result)
    build/N/<stage>/.failed-<key>/  the logs of the last run of that key that failed
    build/N/.lock                 held (flock) by the running build of N
    build/N/.locks/<stage>-<key>  held (flock) while that key is looked up and written
    build/N/.variants/V/          lock and published.json of variant V of a sweep or study
    build/N/published.json        what dist/N holds, to make re-publishing free
    dist/N/<folder>/              the published result (hard links into build/)

Keys are computed in frankenmoe/engine/keys.py. A key folder exists only once its
stage finished: it is written under a temporary name and renamed into place, so a
killed build never leaves a result that a later build would serve.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Sequence

from frankenmoe.engine.cache import (
    RECORD,
    Layout,
    cached_result,
    default_layout,
    fsync_tree,
    key_lock,
    output_files,
    read_record,
)
from frankenmoe.engine.graph import check_names, dependencies, enabled_stages, select_stages, with_ancestors
from frankenmoe.engine.keys import key_material, key_of
from frankenmoe.engine.preflight import run_preflight
from frankenmoe.engine.publish import check_publish_targets, publish, published_folders
from frankenmoe.errors import EnvironmentProblem, FrankenmoeError, NotBuiltError, UsageError
from frankenmoe.provenance.lockfile import require_match
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Stage, StageContext, StageResult, lock_now
from frankenmoe.support.atomic import atomic_folder
from frankenmoe.support.determinism import torch_scope
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json
from frankenmoe.support.process_state import process_state_kept
from frankenmoe.support.progress import quiet_libraries

__all__ = ["Layout", "build", "default_layout", "finished_results", "run_stage"]


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
    stages: Sequence[Stage] = (),
) -> tuple[StageResult, bool, float]:
    """Run one stage unless its key is cached. Returns (result, ran, seconds).
    Under the key's lock: two builds that reach one key at once (variants of a
    sweep, workers on shared storage) leave one folder, written once, served to both."""
    t0 = time.monotonic()
    material = key_material(stage, recipe, state, deps)
    assert material is not None  # online, a fingerprint is always computed (or raises)
    key = key_of(material)
    stage_dir = layout.stage_dir(stage.name)
    with key_lock(layout, stage.name, key):
        if not force:
            hit = cached_result(stage, layout, key, state)
            if hit:
                return hit, False, time.monotonic() - t0
        stage_dir.mkdir(parents=True, exist_ok=True)
        for leftover in stage_dir.glob(f".tmp-{key}-*"):  # from a killed writer of this key; we hold its lock
            shutil.rmtree(leftover, ignore_errors=True)
        check_free_space(stage, stage_dir, stage.estimate_bytes(recipe, deps, None))
        full = f"{stage.name}: disk full while writing {stage_dir}; nothing was kept, free space and rerun"
        final = stage_dir / key
        with atomic_folder(final, full, tmp=stage_dir / f".tmp-{key}-{os.getpid()}") as tmp:  # a forced rerun replaces
            ctx = StageContext(
                recipe=recipe, out=tmp, inputs=deps, state=state, dist=layout.dist, log=log, stages=tuple(stages)
            )
            try:
                # seeds, threads, environment, logger levels and library switches end with the stage
                with process_state_kept(), torch_scope() if "torch" in stage.packages else nullcontext():
                    quiet_libraries()
                    result = stage.run(ctx)
            except FrankenmoeError as e:  # its message names a log in `tmp`, which is about to be removed
                kept = keep_diagnostics(stage, tmp, stage_dir / f".failed-{key}")
                e.problems = [p.replace(str(tmp), str(kept)) for p in e.problems]
                e.args = ("; ".join(e.problems),)
                raise
            files = {}
            for f in output_files(tmp):
                files[f.relative_to(tmp).as_posix()] = {"sha256": state.sha256(f), "size": f.stat().st_size}
            record = {
                **material,
                "key": key,
                "files": files,
                "result": result.record(),
                "wall_s": round(time.monotonic() - t0, 3),
            }
            write_json(tmp / RECORD, record)
            fsync_tree(tmp)
    state.save()
    # What later stages read is the record as written (keys sorted), exactly as a cached
    # result reads it: a stage's output never depends on whether its inputs ran just now.
    record = read_record(final)
    return StageResult(stage.name, key, final, record), True, time.monotonic() - t0


def keep_diagnostics(stage: Stage, tmp: Path, kept: Path) -> Path:
    """Move a failed run's diagnostics (its logs: `stage.diagnostics`) out of its
    temporary folder to `kept`, replacing an older failure's, so the log an error
    message names still exists after the temporary folder is removed."""
    shutil.rmtree(kept, ignore_errors=True)
    for name in stage.diagnostics:
        src = tmp / name.rstrip("/")
        if src.exists():
            kept.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(kept / src.name))
    return kept


@contextmanager
def build_lock(layout: Layout, log: Callable[[str], None]) -> Iterator[None]:
    """One build into a dist folder at a time (stage keys have their own locks).
    flock is released by the kernel when its holder dies (even by kill -9), so a
    stale lock can never block a rerun."""
    try:
        layout.own.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.own / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
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


def finished_results(
    recipe: Recipe, layout: Layout, stages: Sequence[Stage], names: Sequence[str]
) -> dict[str, StageResult]:
    """The cached results of the named stages (and what they depend on) for this
    recipe, without running anything; an error naming the first one not built."""
    check_names(names, stages, "stage")
    stages = enabled_stages(stages, recipe)
    state = HashState(layout.build_root / ".hash-state.json")
    results: dict[str, StageResult] = {}
    for stage in with_ancestors([n for n in names if n in {s.name for s in stages}], stages):
        deps = {d: results[d] for d in dependencies(stage, stages)}
        material = key_material(stage, recipe, state, deps, offline=True)
        hit = None if material is None else cached_result(stage, layout, key_of(material), state)
        if hit is None:
            raise NotBuiltError(
                f"{stage.name}: not built for this recipe yet; run `frankenmoe build {recipe.name}` first"
            )
        results[stage.name] = hit
    state.save()
    return results


def build(
    recipe: Recipe,
    layout: Layout,
    stages: Sequence[Stage],
    force: set[str] = frozenset(),
    until: str | None = None,
    log: Callable[[str], None] = print,
    locked: dict | None = None,
) -> dict[str, StageResult]:
    """Run the stages in order, each cached by its key; publish what they publish.
    With `locked` (a lock file's contents), refuse to start unless every pinned
    input and tool version is what the lock says."""
    check_names(sorted(force), stages, "--force")
    check_names([until] if until else [], stages, "--until")
    active = enabled_stages(stages, recipe)
    if until is not None and until not in {s.name for s in active}:
        raise UsageError(f"--until: stage {until!r} is switched off by this recipe")
    selected = select_stages(active, until)
    for warning in recipe.warnings:
        log(f"recipe    warning: {warning}")
    state = HashState(layout.build_root / ".hash-state.json")
    if locked is not None:  # first: with other inputs, nothing else the build would say matters
        check_lock(recipe, locked, state, stages)
    run_preflight(selected, recipe)
    results: dict[str, StageResult] = {}
    with build_lock(layout, log):
        check_publish_targets(layout, {f for s in selected for f in s.publishes})
        for stage in selected:
            deps = {d: results[d] for d in dependencies(stage, selected)}
            result, ran, seconds = run_stage(stage, recipe, layout, deps, state, stage.name in force, log, selected)
            results[stage.name] = result
            log(f"{stage.name:<9} {'ran' if ran else 'cached':<7} {seconds:7.1f}s  {result.path}")
            error = stage.blocking_error(result)
            if error is not None:
                publish(results, layout, published_folders(selected, results), selected)  # so its report can be read
                state.save()
                raise error
        # dist/ changes once, when the build is through: a killed build leaves the last complete one.
        for folder in publish(results, layout, published_folders(selected, results), selected):
            log(f"published {folder}")
        state.save()
    return results


def check_lock(recipe: Recipe, locked: dict, state: HashState, stages: Sequence[Stage]) -> None:
    require_match(
        locked,
        lock_now(stages, recipe, state),
        "nothing was built; restore the locked inputs and versions, or accept the change with `frankenmoe lock RECIPE`",
    )
