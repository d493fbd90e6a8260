"""The stage graph as pure functions over whatever stage list they are given: each
stage's dependencies, the stages a target needs, and the checks that keep the list
well-formed (unique names, every dependency earlier in the list)."""

from __future__ import annotations

from typing import Sequence

from frankenmoe.errors import StageListError, UsageError
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Stage


def dependencies(stage: Stage, stages: Sequence[Stage]) -> tuple[str, ...]:
    """The names of the stages `stage` reads, in list order (its optional ones
    where the list has them)."""
    names = [s.name for s in stages]
    if not stage.depends_on_all_earlier:
        return stage.depends + tuple(d for d in stage.optional_depends if d in names)
    return tuple(names[: names.index(stage.name)])


def graph_problems(stages: Sequence[Stage]) -> list[str]:
    """Everything wrong with a stage list; empty when it can run in order."""
    problems, seen = [], set()
    for stage in stages:
        if stage.name in seen:
            problems.append(f"stage {stage.name!r} is listed twice")
        for dep in dependencies(stage, stages):
            if dep not in seen:
                problems.append(f"stage {stage.name!r} depends on {dep!r}, which is not an earlier stage in the list")
        seen.add(stage.name)
    return problems


def require_well_formed(stages: Sequence[Stage]) -> None:
    """Every problem of the stage list at once, one line each, before anything reads it."""
    problems = graph_problems(stages)
    if problems:
        raise StageListError(problems)


def enabled_stages(stages: Sequence[Stage], recipe: Recipe) -> list[Stage]:
    """The stages this recipe switches on, with every dependency still present.
    A stage whose dependency is switched off is left out as well. The list is
    checked first: a dependency missing from it is an error, never a silent skip."""
    require_well_formed(stages)
    out: list[Stage] = []
    for stage in stages:
        kept = {s.name for s in out}
        deps = stage.depends if not stage.depends_on_all_earlier else ()
        if stage.enabled(recipe) and all(d in kept for d in deps):
            out.append(stage)
    return out


def ancestors(name: str, stages: Sequence[Stage]) -> set[str]:
    by_name = {s.name: s for s in stages}
    out: set[str] = set()
    todo = list(dependencies(by_name[name], stages))
    while todo:
        d = todo.pop()
        if d not in out:
            out.add(d)
            todo.extend(dependencies(by_name[d], stages))
    return out


def check_names(names: Sequence[str], stages: Sequence[Stage], option: str) -> None:
    known = [s.name for s in stages]
    for name in names:
        if name not in known:
            raise UsageError(f"{option}: unknown stage {name!r}; stages are {', '.join(known)}")


def select_stages(stages: Sequence[Stage], until: str | None) -> list[Stage]:
    """All stages, or `until` and the stages it needs (`--until evaluate` need not quantize)."""
    if until is None:
        return list(stages)
    check_names([until], stages, "--until")
    needed = ancestors(until, stages) | {until}
    return [s for s in stages if s.name in needed]


def with_ancestors(names: Sequence[str], stages: Sequence[Stage]) -> list[Stage]:
    needed = set(names).union(*(ancestors(n, stages) for n in names))
    return [s for s in stages if s.name in needed]
