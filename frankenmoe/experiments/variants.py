"""Many variants of a recipe built over one cache, as one graph of stage runs.

A node is one stage of one variant. Its key is known as soon as the stages it
reads are finished (frankenmoe/engine/keys.py), so nodes of several variants with
one key are one task, run once, before any variant that needs it: the sources
are resolved once and the base's perplexities computed once for every gate mode.
The other nodes run as soon as their inputs are there, side by side where the
executor has room (frankenmoe/experiments/executors.py: one after another in this
process, or as Ray tasks). Either way each task is `run_stage`, under its key's
lock, so what a variant publishes does not depend on where or in which order
its stages ran.

A variant whose stage fails (a recipe value the preflight refuses, a failed
verify, a bug) is reported with its error; the others go on. Stages that read
dist/ (push) are never part of a sweep: a sweep compares, it does not push.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from frankenmoe.engine.build import build_lock, run_stage
from frankenmoe.engine.cache import Layout, cached_result
from frankenmoe.engine.graph import dependencies, enabled_stages, select_stages
from frankenmoe.engine.keys import key_material, key_of
from frankenmoe.engine.preflight import run_preflight
from frankenmoe.engine.publish import publish, published_folders
from frankenmoe.errors import FrankenmoeError, exit_code
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Stage, StageResult
from frankenmoe.support.hashing import HashState
from frankenmoe.support.progress import quiet_libraries

CACHED = "cache"  # the node name of a stage served from the cache without a task


@dataclass(frozen=True)
class Variant:
    """One recipe of a sweep: `name` is its folder name, `label` its axis values."""

    name: str
    label: str
    recipe: Recipe
    layout: Layout


@dataclass(frozen=True)
class Task:
    """One stage run: what a worker needs, and nothing it must look up."""

    stage: Stage
    recipe: Recipe
    layout: Layout
    deps: dict[str, StageResult]
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class TaskDone:
    """What came back from a task: its result, or the error that stopped it."""

    result: StageResult | None
    ran: bool
    seconds: float
    node: str
    error: list[str] | None = None  # the lines a user reads
    code: int = 0  # the exit code of the error's class (1: a bug)
    trace: str | None = None  # a bug's traceback, for the sweep's log


@dataclass
class Outcome:
    """Where one variant ended: its stage results, which node ran each, and its error."""

    results: dict[str, StageResult] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    error: list[str] | None = None
    code: int = 0
    trace: str | None = None
    stopped_by: str | None = None  # the stage whose result stopped it (a failed verify), kept and published

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs tasks: `submit` hands one over, `wait` returns at least one finished one."""

    def submit(self, task: Task) -> object: ...

    def wait(self) -> list[tuple[object, TaskDone]]: ...


def run_task(task: Task, node: str) -> TaskDone:
    """The one thing a worker does: `run_stage` under the key's lock, errors as values
    (a user's error is no reason for Ray to retry; a killed worker is)."""
    quiet_libraries()
    state = HashState(task.layout.build_root / ".hash-state.json")
    t0 = time.monotonic()
    try:
        result, ran, seconds = run_stage(
            task.stage, task.recipe, task.layout, task.deps, state, False, lambda _line: None, task.stages
        )
    except FrankenmoeError as e:
        return TaskDone(None, True, time.monotonic() - t0, node, e.lines(), exit_code(e))
    except Exception as e:  # a bug: its traceback goes to the sweep's log
        lines = [f"{task.stage.name}: internal error: {type(e).__name__}: {e}"]
        return TaskDone(None, True, time.monotonic() - t0, node, lines, 1, traceback.format_exc())
    return TaskDone(result, ran, seconds, node)


def sweep_stages(stages: Sequence[Stage], recipe: Recipe, until: str | None) -> list[Stage]:
    """The stages a variant builds: the recipe's, through `until`."""
    return select_stages(enabled_stages(stages, recipe), until)


def build_variants(
    variants: Sequence[Variant],
    stages: Sequence[Stage],
    until: str | None,
    executor: Executor,
    log: Callable[[str], None] = print,
) -> dict[str, Outcome]:
    """Build every variant (each stage key once, over the shared cache) and publish
    each one that finished into its own dist folder; {variant name: Outcome}."""
    outcomes = {v.name: Outcome() for v in variants}
    lists = {}
    for v in variants:  # a value the recipe's checks refuse ends its variant before anything runs
        lists[v.name] = sweep_stages(stages, v.recipe, until)
        try:
            run_preflight(lists[v.name], v.recipe)
        except FrankenmoeError as e:
            outcomes[v.name].error, outcomes[v.name].code = e.lines(), exit_code(e)
    by_name = {v.name: v for v in variants}
    state = HashState(variants[0].layout.build_root / ".hash-state.json") if variants else None
    inflight: dict[object, tuple[str, str, list[str]]] = {}  # handle -> (stage, key, variant names)
    queued: dict[tuple[str, str], object] = {}  # (stage, key) -> handle
    started: set[tuple[str, str]] = set()  # (variant, stage) handed to a task or settled
    total = sum(len(lists[v.name]) for v in variants if outcomes[v.name].ok)
    finished = 0

    def settle(name: str, stage: Stage, done: TaskDone) -> None:
        nonlocal finished
        out = outcomes[name]
        if not out.ok:
            return
        finished += 1
        if done.error is not None:
            out.error, out.code, out.trace = done.error, done.code, done.trace
            return
        assert done.result is not None
        out.results[stage.name], out.nodes[stage.name], out.seconds[stage.name] = done.result, done.node, done.seconds
        blocking = stage.blocking_error(done.result)
        if blocking is not None:
            out.error, out.code, out.stopped_by = blocking.lines(), exit_code(blocking), stage.name

    def report(names: list[str], stage: str, done: TaskDone) -> None:
        left = sum(len(lists[n]) - len(outcomes[n].results) for n in outcomes if outcomes[n].ok)
        how = "failed" if done.error else ("ran" if done.ran else "cached")
        for n in names:
            log(
                f"sweep     {n}: {stage} {how} on {done.node} in {done.seconds:.1f}s "
                f"({finished} of {total} stage runs done, {left} to go)"
            )

    while True:
        for v in variants:
            out = outcomes[v.name]
            if not out.ok:
                continue
            for stage in lists[v.name]:
                names = dependencies(stage, lists[v.name])
                if (v.name, stage.name) in started or not all(d in out.results for d in names):
                    continue
                deps = {d: out.results[d] for d in names}
                try:
                    material = key_material(stage, v.recipe, state, deps)
                except FrankenmoeError as e:
                    out.error, out.code = e.lines(), exit_code(e)
                    break
                assert material is not None
                key = key_of(material)
                started.add((v.name, stage.name))
                if (stage.name, key) in queued:  # another variant's task computes this very key
                    inflight[queued[stage.name, key]][2].append(v.name)
                    continue
                hit = cached_result(stage, v.layout, key, state)
                if hit is not None:
                    done = TaskDone(hit, False, 0.0, CACHED)
                    settle(v.name, stage, done)
                    report([v.name], stage.name, done)
                    continue
                task = Task(stage, v.recipe, v.layout, deps, tuple(lists[v.name]))
                handle = executor.submit(task)
                queued[stage.name, key] = handle
                inflight[handle] = (stage.name, key, [v.name])
        if not inflight:
            break
        for handle, done in executor.wait():
            stage_name, key, names = inflight.pop(handle)
            del queued[stage_name, key]
            for name in names:
                stage = next(s for s in lists[name] if s.name == stage_name)
                settle(name, stage, done)
            report(names, stage_name, done)
    if state is not None:
        state.save()
    for name, out in outcomes.items():
        if all(s.name in out.results for s in lists[name]) or out.stopped_by is not None:
            v = by_name[name]
            with build_lock(v.layout, log):  # as a build: a failed verify's report is published to be read
                publish(out.results, v.layout, published_folders(lists[name], out.results), lists[name])
    return outcomes
