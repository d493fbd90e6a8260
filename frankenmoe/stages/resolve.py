"""resolve: find every source model on disk (downloading Hub ids) and preflight them.

Output: `sources.json`, one entry per model (role, reference, resolved commit,
files with sha256 and size, config summary). The merge reads model paths from the
record, so everything after this stage works on local, pinned, hashed files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from frankenmoe.checkpoints.sources import LocatedModel, card_facts, check_configs, locate, model_files, preflight
from frankenmoe.errors import RecipeError
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json
from frankenmoe.support.paths import portable


class ResolvedModel(Facts):
    role: str  # "base" or "experts[i]"
    ref: str  # as the recipe names it (portable)
    hub_id: str | None
    commit: str | None
    path: str  # local folder (never published)
    files: dict[str, dict]
    config: dict[str, Any]
    license: str | None
    derived_from: str | None
    about: str | None


class ResolveResult(Facts):
    models: list[ResolvedModel]  # base first, then the experts in recipe order


def resolved_models(result: StageResult) -> list[ResolvedModel]:
    return result.read(ResolveResult).models


def model_paths(result: StageResult) -> dict[str, Path]:
    """{role: local folder} of every source model."""
    return {m.role: Path(m.path) for m in resolved_models(result)}


def local_models(recipe: Recipe) -> list[LocatedModel] | None:
    """Every source model of the recipe, base first, when all are on disk (no
    download); None while any Hub id is not in the local cache yet."""
    located = [locate(role, ref, recipe.root, download=False) for role, ref in recipe.all_models()]
    return None if any(m is None for m in located) else cast(list[LocatedModel], located)


def source_licenses(recipe: Recipe) -> dict[str, str | None] | None:
    """{role: the license its model card states}, from the cards alone (no weights),
    or None while a Hub model is not downloaded yet."""
    located = local_models(recipe)
    return None if located is None else {m.role: card_facts(m)["license"] for m in located}


def resolve_license(recipe: Recipe, source_licenses: dict[str, str | None]) -> str:
    """The recipe's `card.license`, else the one license every source states."""
    if recipe.card.license:
        return recipe.card.license
    found = set(source_licenses.values())
    if len(found) == 1 and None not in found:
        return found.pop()
    stated = ", ".join(f"{role}: {lic or 'none stated'}" for role, lic in source_licenses.items())
    raise RecipeError(
        [f"card.license: the source models do not agree on a license ({stated}); set card.license in the recipe"]
    )


class ResolveStage(Stage):
    name = "resolve"
    packages = ("huggingface-hub",)

    def config(self, recipe: Recipe) -> dict[str, Any]:
        # Local folders are identified by their content (the fingerprint), not their
        # path, so the same models at another path give the same key.
        models = []
        for role, ref in recipe.all_models():
            hub = ref.looks_like_hub_id(recipe.root)
            models.append({"role": role, "hub_id": ref.id if hub else None, "revision": ref.revision})
        return {"models": models, "trust_remote_code": recipe.trust_remote_code}

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        out = {}
        for role, ref in recipe.all_models():
            located = locate(role, ref, recipe.root, download=not offline)
            if located is None:
                return None
            out[role] = {
                "commit": located.commit,
                "files": {f.name: state.sha256(f) for f in model_files(located.path)},
            }
        return out

    def preflight(self, recipe: Recipe) -> None:
        """The models' configs, where they are on disk already (Hub ids not yet
        downloaded are checked when the stage runs): a mismatch is found before merge."""
        located = local_models(recipe)
        if located is not None:
            check_configs(located, recipe.trust_remote_code)

    def run(self, ctx: StageContext) -> ResolveResult:
        located = [locate(role, ref, ctx.recipe.root) for role, ref in ctx.recipe.all_models()]
        summaries = preflight(located, ctx.recipe.trust_remote_code)
        models = []
        for m in located:
            files = {f.name: {"sha256": ctx.state.sha256(f), "size": f.stat().st_size} for f in model_files(m.path)}
            models.append(
                ResolvedModel(
                    role=m.role,
                    ref=portable(m.ref.display()),
                    hub_id=m.ref.id if m.commit else None,
                    commit=m.commit,
                    path=str(m.path),
                    files=files,
                    config=summaries[m.role],
                    **card_facts(m),
                )
            )
            ctx.log(
                f"resolve   {m.role}: {m.ref.display()}" + (f" @ {m.commit[:12]}" if m.commit else " (local folder)")
            )
        write_json(ctx.out / "sources.json", {"models": [m.model_dump(mode="json", exclude={"path"}) for m in models]})
        return ResolveResult(models=models)
