"""lock: pin everything the build reads (pipeline/lock.py) and name the build.

Output: `lock.json`, the lock as it is for this build (what `frankenmoe lock`
would write), and the build id in the record: a hash of the recipe and the lock.
Its key changes whenever any pinned input or tool version changes, so the card
and the build manifest, which depend on it, never name a stale build.
"""

from __future__ import annotations

from typing import Any

from pipeline.hashing import HashState
from pipeline.jsonio import write_json
from pipeline.lock import build_id, current_lock, published_recipe
from pipeline.recipe import Recipe
from pipeline.stages.base import Stage, StageContext, StageResult


class LockStage(Stage):
    name = "lock"

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {"recipe": published_recipe(recipe)}

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        return current_lock(recipe, state, download=not offline)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        lock = current_lock(ctx.recipe, ctx.state)
        write_json(ctx.out / "lock.json", lock)
        return {"build_id": build_id(ctx.recipe, lock)}
