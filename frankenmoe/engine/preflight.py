"""Preflight: every selected stage's checks of what the recipe, its files and the
models' configs decide, run before any stage (and by `plan`), all reported at once.

A stage's `preflight` raises at its first problem; here every stage is asked, so a
recipe with a bad calibration file and an expert of another width hears of both in
one run, not one per build. The error is of the class of the first problem (its exit
code, as a build that stopped there would give), with one line per problem.
"""

from __future__ import annotations

from typing import Sequence

from frankenmoe.errors import FrankenmoeError
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Stage


def preflight_errors(stages: Sequence[Stage], recipe: Recipe) -> list[FrankenmoeError]:
    """The problem each stage's preflight reports, in stage order (empty: all clear)."""
    errors = []
    for stage in stages:
        try:
            stage.preflight(recipe)
        except FrankenmoeError as e:
            errors.append(e)
    return errors


def run_preflight(stages: Sequence[Stage], recipe: Recipe) -> None:
    """Raise one error listing every problem of every stage, or nothing."""
    errors = preflight_errors(stages, recipe)
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    lines = list(dict.fromkeys(line for e in errors for line in e.problems))  # a missing model is said once
    raise type(errors[0])(lines) from errors[0]
