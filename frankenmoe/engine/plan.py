"""`frankenmoe plan`: which stages are cached, which will run, and the disk they need.

A pure function of the recipe, the stage list and what is on disk: it writes
nothing (not the hash memo, not a repair of a damaged cache folder) and never
downloads weights: Hub models count as cached only when already in the local Hub
cache, and sizes come from config.json files alone. It runs the build's preflight
first, so a recipe the build would refuse before any stage is refused here too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from frankenmoe.engine.cache import Layout, cached_result
from frankenmoe.engine.graph import dependencies, enabled_stages
from frankenmoe.engine.keys import key_material, key_of
from frankenmoe.engine.preflight import run_preflight
from frankenmoe.errors import FrankenmoeError
from frankenmoe.recipe import ModelRef, Recipe
from frankenmoe.stages.base import Stage, StageResult
from frankenmoe.support.hashing import HashState


@dataclass
class PlanRow:
    stage: str
    status: str  # "cached" | "will run"
    key: str | None
    bytes: int | None
    note: str = ""


def base_config(ref: ModelRef, root: Path, fetch: bool) -> dict | None:
    local = ref.local_path(root)
    if local.is_dir():
        f = local / "config.json"
        return json.loads(f.read_text()) if f.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(
            Path(hf_hub_download(ref.id, "config.json", revision=ref.revision, local_files_only=not fetch)).read_text()
        )
    except Exception:  # not cached, offline, or not found: the plan just cannot size it
        return None


def make_plan(recipe: Recipe, layout: Layout, stages: Sequence[Stage], fetch: bool = False) -> list[PlanRow]:
    """One row per stage the recipe switches on: cached or not, its key when its
    inputs are known, and the disk its output needs. Raises what the build's
    preflight would, every problem at once."""
    state = HashState(layout.build_root / ".hash-state.json")  # read, never saved here
    stages = enabled_stages(stages, recipe)
    run_preflight(stages, recipe)
    results: dict[str, StageResult] = {}
    rows = []
    cfg = base_config(recipe.base_model, recipe.root, fetch)
    for stage in stages:
        names = dependencies(stage, stages)
        key = None
        if all(d in results for d in names):
            deps = {d: results[d] for d in names}
            try:
                material = key_material(stage, recipe, state, deps, offline=True)
            except FrankenmoeError:
                material = None
            if material is not None:
                key = key_of(material)
                if hit := cached_result(stage, layout, key, state):
                    results[stage.name] = hit
        size = stage.estimate_bytes(recipe, {d: results[d] for d in names if d in results}, cfg)
        sized = type(stage).estimate_bytes is not Stage.estimate_bytes
        note = ""
        if size is None and sized and cfg is None:
            note = (
                f"size unknown: config of {recipe.base_model.display()} not in the local Hub cache "
                "(plan --fetch reads it)"
            )
        elif key is None and all(d in results for d in names):
            note = "inputs not local yet; they will be downloaded"
        cached = stage.name in results
        rows.append(PlanRow(stage.name, "cached" if cached else "will run", key, None if cached else size, note))
    return rows


def format_plan(recipe: Recipe, layout: Layout, rows: list[PlanRow]) -> str:
    lines = [f"plan for {recipe.name}: build in {layout.build}, publish to {layout.dist}"]
    lines += [f"  warning: {w}" for w in recipe.warnings]
    lines.append(f"  {'stage':<9} {'status':<9} {'key':<17} {'disk':>10}  note")
    for r in rows:
        disk = "-" if r.bytes is None else f"{r.bytes / 1e9:.3f} GB"
        lines.append(f"  {r.stage:<9} {r.status:<9} {r.key or '?':<17} {disk:>10}  {r.note}".rstrip())
    need = sum(r.bytes or 0 for r in rows)
    where = layout.build_root if layout.build_root.exists() else Path(".")
    free = shutil.disk_usage(where).free
    unknown = any(r.note.startswith("size unknown") for r in rows)
    lines.append(
        f"  disk needed: {'at least ' if unknown else ''}{need / 1e9:.3f} "
        f"GB{' (some sizes unknown)' if unknown else ''} (free: {free / 1e9:.1f} GB)"
    )
    return "\n".join(lines)
