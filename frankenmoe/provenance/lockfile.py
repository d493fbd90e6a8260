"""The lock file: every input and tool version that shapes a build's bytes, pinned.

`frankenmoe lock RECIPE` writes `<recipe stem>.lock.json` next to the recipe; a
build with `--locked` refuses to start, one line per item, when anything it would
use differs from it. The same lock (computed afresh) is part of every build: the
build id is a hash of it and the recipe, and it is embedded in each published
folder's `build.json`, so a published model names exactly what made it.

What is pinned comes from the stages, nothing is listed here: under `stages`, each
enabled stage's fingerprint (the inputs outside the recipe that its key holds: each
source model's resolved commit and the sha256 of every file used from it, the sha256
of every calibration and evaluation file, the card template, where mergekit, AWQ and
the router fit compute, llama.cpp's sources); the exact versions of the packages the
stages declare; seeds, thread count and the CPU capability torch dispatches to (a
different one rounds differently, so bytes are only promised on the same platform).
Paths are kept as the recipe writes them; absolute ones by file name only, so a
lock is the same in every clone and never reveals the build machine's layout.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from frankenmoe import __version__
from frankenmoe.errors import LockMismatch
from frankenmoe.recipe import Recipe
from frankenmoe.recipe.fields import path_fields
from frankenmoe.support.determinism import THREADS
from frankenmoe.support.device import cpu_capability
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.support.jsonio import read_document
from frankenmoe.support.paths import portable
from frankenmoe.support.versions import tool_versions

FORMAT = 2  # 2: what the stages' fingerprints pin, by stage, instead of hand-listed models and data


def lock_path(recipe_file: Path) -> Path:
    """recipes/tiny-2x.yaml -> recipes/tiny-2x.lock.json"""
    return recipe_file.with_name(f"{recipe_file.stem}.lock.json")


def current_lock(recipe: Recipe, state: HashState, pins: Mapping[str, Any], packages: Sequence[str]) -> dict[str, Any]:
    """The lock for this recipe as things are now. Both parts come from the stages, where
    they are declared once: `pins`, each enabled stage's fingerprint (the model and text
    files it reads, where it computes: frankenmoe.stages.base.stage_pins), and `packages`,
    those whose versions shape the bytes (frankenmoe.stages.base.pinned_packages)."""
    cal = recipe.quantize.calibration
    return {
        "format": FORMAT,
        "recipe": recipe.name,
        "stages": dict(sorted(pins.items())),
        "packages": {"frankenmoe": __version__, **tool_versions(sorted(packages))},
        "python": platform.python_version(),
        "seeds": {"merge.seed": recipe.merge.seed, "quantize.calibration.seed": cal.seed},
        "threads": THREADS,
        "platform": {"machine": platform.machine(), "cpu_capability": cpu_capability(state)},
    }


def read_lock(path: Path) -> dict[str, Any]:
    return read_document(
        path,
        FORMAT,
        LockMismatch,
        "lock file not found; write it with `frankenmoe lock RECIPE`",
        "rewrite it with `frankenmoe lock RECIPE`",
    )


def require_match(locked: dict[str, Any], now: dict[str, Any], hint: str) -> None:
    """LockMismatch, one line per differing item and `hint` last, unless all match."""
    problems = differences(locked, now)
    if problems:
        raise LockMismatch([f"lock mismatch: {p}" for p in problems] + [hint])


def differences(locked: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per item that differs, named by its place in the lock."""
    flat_locked, flat_now = _flatten(locked), _flatten(now)
    out = []
    for where in sorted(set(flat_locked) | set(flat_now)):
        a, b = flat_locked.get(where, _MISSING), flat_now.get(where, _MISSING)
        if a == b:
            continue
        name = " / ".join(where)
        if a is _MISSING:
            out.append(f"{name}: not in the lock (now {_short(b)})")
        elif b is _MISSING:
            out.append(f"{name}: in the lock ({_short(a)}) but not used now")
        else:
            out.append(f"{name}: the lock has {_short(a)}, now {_short(b)}")
    return out


_MISSING = object()


def _flatten(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if _named_pairs(value):  # [[file name, sha256], ...]: in order, each file named on its own
        value = dict(value)
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: value}


def _named_pairs(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) for x in value)
        and len({x[0] for x in value}) == len(value)
    )


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}"
    return json.dumps(value)


def published_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as it is embedded in published files and hashed into the build id:
    every setting (defaults included, so a rebuild means the same thing whatever
    the defaults of a later version), paths made portable, and without
    `publish.push`, which says whether to push, not what is built."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["publish"].pop("push", None)
    for (*parents, last), value in path_fields(recipe):  # every field typed RecipePath
        parent = data
        for key in parents:
            parent = parent[key]
        parent[last] = portable(value)
    return data


def build_id(recipe: Recipe, lock: dict[str, Any]) -> str:
    """Names a build by what made it (the recipe and its lock), never by when."""
    return sha256_json({"recipe": published_recipe(recipe), "lock": lock})[:16]
