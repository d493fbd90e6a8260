"""lock: pin everything the build reads (frankenmoe/provenance/lockfile.py) and name the build.

Output: `lock.json`, the lock as it is for this build (what `frankenmoe lock`
would write), and the build id in the record: a hash of the recipe and the lock.
Its key changes whenever any pinned input or tool version changes, so the card
and the build manifest, which depend on it, never name a stale build.
"""

from __future__ import annotations

from typing import Any

from frankenmoe.provenance.lockfile import build_id as compute_build_id
from frankenmoe.provenance.lockfile import published_recipe
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult, lock_now
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json


class LockResult(Facts):
    build_id: str  # a hash of the recipe and its lock


def build_id(result: StageResult) -> str:
    return result.read(LockResult).build_id


def lock_pins(result: StageResult) -> dict[str, Any]:
    """The lock as it was for this build (its fingerprint)."""
    return result.record["fingerprint"]


def build_stages() -> tuple[Stage, ...]:
    """The stage list, read when the lock is computed (a plugin may extend it)."""
    from frankenmoe import stages  # lazy: the stage list imports this module

    return stages.STAGES


class LockStage(Stage):
    name = "lock"
    pins_the_build = True  # its fingerprint is the lock: every other stage's fingerprint

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {"recipe": published_recipe(recipe)}

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        return lock_now(build_stages(), recipe, state, offline)

    def run(self, ctx: StageContext) -> LockResult:
        lock = lock_now(build_stages(), ctx.recipe, ctx.state)
        assert lock is not None  # online, every fingerprint is known (or raises)
        write_json(ctx.out / "lock.json", lock)
        return LockResult(build_id=compute_build_id(ctx.recipe, lock))
