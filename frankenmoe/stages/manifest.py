"""manifest: `build.json` in each published folder, so a published model says
exactly how to rebuild it.

It holds the recipe and the lock, every stage's key and record (without timings
or local paths) and the sha256 of every other file in the folder.
`frankenmoe rebuild-check DIR` rebuilds from it and compares the bytes.
"""

from __future__ import annotations

from typing import Any

from frankenmoe.provenance.lockfile import published_recipe
from frankenmoe.provenance.manifest_format import FORMAT, MANIFEST
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.lock import build_id, lock_pins
from frankenmoe.support.jsonio import write_json

# Record fields that describe the machine or the moment, not the result.
NOT_PUBLISHED = {"wall_s", "path"}


class ManifestResult(Facts):
    build_id: str


class ManifestStage(Stage):
    name = "manifest"
    depends_on_all_earlier = True  # build.json holds every stage's record
    publishes_into_every_folder = True

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {"format": FORMAT}

    def run(self, ctx: StageContext) -> ManifestResult:
        lock = ctx.inputs["lock"]
        diagnostics = {s.name: set(s.diagnostics) for s in ctx.stages}
        stages = {name: _portable_record(res, diagnostics[name]) for name, res in sorted(ctx.inputs.items())}
        for folder in ctx.folders():
            out = ctx.out / folder
            out.mkdir()
            write_json(
                out / MANIFEST,
                {
                    "format": FORMAT,
                    "build_id": build_id(lock),
                    "folder": folder,
                    "recipe": published_recipe(ctx.recipe),
                    "lock": lock_pins(lock),
                    "stages": stages,
                    "files": {rel: meta["sha256"] for rel, meta in sorted(ctx.published_files(folder).items())},
                },
            )
        return ManifestResult(build_id=build_id(lock))


def manifest_build_id(result: StageResult) -> str:
    return result.read(ManifestResult).build_id


def published_manifests(result: StageResult) -> dict[str, str]:
    """{published folder: sha256 of the build.json this stage wrote into it}."""
    return {rel.split("/")[0]: meta["sha256"] for rel, meta in result.files.items() if rel.endswith(f"/{MANIFEST}")}


def _portable_record(result: StageResult, diagnostics: set[str]) -> dict[str, Any]:
    record = _strip(result.record)
    folders = tuple(d for d in diagnostics if d.endswith("/"))
    record["files"] = {
        rel: meta for rel, meta in record["files"].items() if rel not in diagnostics and not rel.startswith(folders)
    }
    return record


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in NOT_PUBLISHED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
