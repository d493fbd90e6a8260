"""Stage keys: the one place a key is computed, for a build, for cached results
(`verify`, `push --dry-run`) and for `plan`.

A stage's key is a hash of its recipe section, its code version, the keys of the
stages it depends on, its extra inputs (file hashes) and the versions of the tools
that shape its bytes."""

from __future__ import annotations

from frankenmoe import __version__
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Stage, StageResult
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.support.versions import tool_versions


def key_material(
    stage: Stage, recipe: Recipe, state: HashState, deps: dict[str, StageResult], offline: bool = False
) -> dict | None:
    """Everything that shapes a stage's output bytes; None when an input is not at
    hand and `offline` forbids fetching it (plan, cached results)."""
    fingerprint = stage.fingerprint(recipe, state, deps, offline=offline)
    if fingerprint is None:
        return None
    return {
        "stage": stage.name,
        "stage_version": stage.version,
        "config": stage.config(recipe),
        "fingerprint": fingerprint,
        "inputs": {name: res.key for name, res in sorted(deps.items())},
        "versions": tool_versions(list(stage.packages)),
        "frankenmoe": __version__,
    }


def key_of(material: dict) -> str:
    return sha256_json(material)[:16]
