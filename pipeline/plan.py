"""`frankenmoe plan`: which stages are cached, which will run, and the disk they need.

Never downloads weights: Hub models count as cached only when already in the local
Hub cache, and sizes come from config.json files alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.build import Layout, cached_result, stage_key
from pipeline.errors import FrankenmoeError
from pipeline.hashing import HashState
from pipeline.recipe import ModelRef, Recipe
from pipeline.stages import STAGES
from pipeline.stages.base import StageResult
from pipeline.stages.merge import merge_disk_bytes, moe_bytes
from pipeline.stages.quantize import quantize_disk_bytes


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


def estimate(stage: str, recipe: Recipe, cfg: dict | None) -> int | None:
    """Disk a stage's output needs, from the base model's config alone."""
    if cfg is None:
        return None
    if stage == "merge":
        return merge_disk_bytes(cfg, recipe)
    if stage == "gates":
        return moe_bytes(cfg, len(recipe.experts), recipe.dtype) if recipe.gates.fit else None
    if stage == "quantize":
        return quantize_disk_bytes(moe_bytes(cfg, len(recipe.experts), recipe.dtype))
    if stage == "evaluate":
        return recipe.verify.max_tokens * cfg["vocab_size"] * 4  # fp32 reference log-probs
    return None


def make_plan(recipe: Recipe, layout: Layout, fetch: bool = False) -> list[PlanRow]:
    state = HashState(layout.build_root / ".hash-state.json")
    results: dict[str, StageResult] = {}
    rows = []
    cfg = base_config(recipe.base_model, recipe.root, fetch)
    for stage in STAGES:
        deps_known = all(d in results for d in stage.depends)
        key = None
        if deps_known:
            try:
                fp = stage.fingerprint(recipe, state, {d: results[d] for d in stage.depends}, offline=True)
            except FrankenmoeError:
                fp = None
            if fp is not None:
                key = stage_key(stage, recipe, fp, {d: results[d] for d in stage.depends})
                hit = cached_result(stage, layout, key)
                if hit:
                    results[stage.name] = hit
        size = estimate(stage.name, recipe, cfg)
        note = ""
        if size is None and stage.name in ("merge", "quantize", "evaluate"):
            note = (
                f"size unknown: config of {recipe.base_model.display()} not in the local Hub cache "
                "(plan --fetch reads it)"
            )
        elif stage.name == "resolve" and key is None:
            note = "sources not local yet; they will be downloaded"
        rows.append(
            PlanRow(
                stage.name,
                "cached" if stage.name in results else "will run",
                key,
                None if stage.name in results else size,
                note,
            )
        )
    state.save()
    return rows


def format_plan(recipe: Recipe, layout: Layout, rows: list[PlanRow]) -> str:
    lines = [f"plan for {recipe.name}: build in {layout.build}, publish to {layout.dist}"]
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
