"""manifest: `build.json` in each published folder, so a published model says
exactly how to rebuild it.

It holds the recipe and the lock, every stage's key and record (without timings
or local paths) and the sha256 of every other file in the folder.
`frankenmoe rebuild-check DIR` rebuilds from it and compares the bytes.
"""

from __future__ import annotations

from typing import Any

from pipeline.jsonio import write_json
from pipeline.lock import published_recipe
from pipeline.recipe import Recipe
from pipeline.stages.base import Stage, StageContext, StageResult, published_files

FORMAT = "frankenmoe-build/1"
MANIFEST = "build.json"
# Record fields that describe the machine or the moment, not the result.
NOT_PUBLISHED = {"wall_s", "path"}


class ManifestStage(Stage):
    name = "manifest"
    depends = ("lock", "resolve", "merge", "gates", "quantize", "evaluate", "verify", "card")
    publishes = {"merged": "merged", "awq": "awq"}

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {"format": FORMAT}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        lock = ctx.inputs["lock"]
        from pipeline.stages import STAGES

        diagnostics = {s.name: set(s.diagnostics) for s in STAGES}
        stages = {name: _portable_record(res, diagnostics[name]) for name, res in sorted(ctx.inputs.items())}
        for folder in self.publishes:
            out = ctx.out / folder
            out.mkdir()
            write_json(
                out / MANIFEST,
                {
                    "format": FORMAT,
                    "build_id": lock.record["result"]["build_id"],
                    "folder": folder,
                    "recipe": published_recipe(ctx.recipe),
                    "lock": lock.record["fingerprint"],
                    "stages": stages,
                    "files": {rel: meta["sha256"] for rel, meta in sorted(published_files(ctx.inputs, folder).items())},
                },
            )
        return {"build_id": lock.record["result"]["build_id"]}


def _portable_record(result: StageResult, diagnostics: set[str]) -> dict[str, Any]:
    record = _strip(result.record)
    record["files"] = {rel: meta for rel, meta in record["files"].items() if rel not in diagnostics}
    return record


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in NOT_PUBLISHED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
