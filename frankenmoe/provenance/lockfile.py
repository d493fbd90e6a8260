"""The lock file: every input and tool version that shapes a build's bytes, pinned.

`frankenmoe lock RECIPE` writes `<recipe stem>.lock.json` next to the recipe; a
build with `--locked` refuses to start, one line per item, when anything it would
use differs from it. The same lock (computed afresh) is part of every build: the
build id is a hash of it and the recipe, and it is embedded in each published
folder's `build.json`, so a published model names exactly what made it.

What is pinned: each source model's resolved commit and the sha256 of every file
used from it; the sha256 of every calibration and evaluation file (and of a custom
card template); the exact versions of the packages that shape output bytes;
seeds, thread count and the CPU capability torch dispatches to (a different one
rounds differently, so bytes are only promised on the same platform).
Paths are kept as the recipe writes them; absolute ones by file name only, so a
lock is the same in every clone and never reveals the build machine's layout.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

from frankenmoe import __version__
from frankenmoe.checkpoints.sources import locate, model_files
from frankenmoe.errors import InputFileError, LockMismatch
from frankenmoe.quantization import llama_cpp
from frankenmoe.quantization.awq_engine import compute_path
from frankenmoe.recipe import Recipe
from frankenmoe.recipe.fields import path_fields
from frankenmoe.routing.router_fit import fit_compute
from frankenmoe.support.determinism import THREADS
from frankenmoe.support.device import cpu_capability, device_class
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.support.jsonio import read_document
from frankenmoe.support.paths import portable, resolve_path
from frankenmoe.support.versions import tool_versions
from frankenmoe.text.calibration import dataset_identity

FORMAT = 1


def lock_path(recipe_file: Path) -> Path:
    """recipes/tiny-2x.yaml -> recipes/tiny-2x.lock.json"""
    return recipe_file.with_name(f"{recipe_file.stem}.lock.json")


def _data_files(section: str, files: list[str], state: HashState, root: Path) -> dict[str, str]:
    out = {}
    for name in files:
        path = resolve_path(name, root)
        if not path.is_file():
            raise InputFileError(f"{section}: {name}: file not found")
        out[portable(name)] = state.sha256(path)
    return out


def current_lock(
    recipe: Recipe, state: HashState, packages: Sequence[str], download: bool = True
) -> dict[str, Any] | None:
    """The lock for this recipe as things are now; None when `download` is off and
    a Hub model is not in the local cache, or a calibration dataset is not pinned to a commit.
    `packages`: those whose versions shape the bytes, as the stages declare them
    (frankenmoe.stages.base.pinned_packages); the lock lists them, never a list of its own."""
    models = {}
    for role, ref in recipe.all_models():
        located = locate(role, ref, recipe.root, download=download)
        if located is None:
            return None
        models[role] = {
            "ref": portable(ref.display()) if located.commit is None else ref.display(),
            "commit": located.commit,
            "files": {f.name: state.sha256(f) for f in model_files(located.path)},
        }
    cal = recipe.quantize.calibration
    data = {"verify.files": _data_files("verify.files", recipe.verify.files, state, recipe.root)}
    if cal.dataset:
        identity = dataset_identity(cal.dataset, state, offline=not download)
        if identity is None:
            return None
        data["quantize.calibration.dataset"] = identity
    else:
        data["quantize.calibration.files"] = _data_files("quantize.calibration.files", cal.files, state, recipe.root)
    if recipe.gates.fit:
        data["gates.files"] = _data_files("gates.files", recipe.gates.files, state, recipe.root)
    if recipe.card.template:
        data["card.template"] = _data_files("card.template", [recipe.card.template], state, recipe.root)
    return {
        "format": FORMAT,
        "recipe": recipe.name,
        "models": models,
        "data": data,
        "packages": {"frankenmoe": __version__, **tool_versions(sorted(packages))},
        "python": platform.python_version(),
        "seeds": {"merge.seed": recipe.merge.seed, "quantize.calibration.seed": cal.seed},
        "threads": THREADS,
        "platform": {
            "machine": platform.machine(),
            "cpu_capability": cpu_capability(state),
            "merge_compute": device_class(recipe.merge.device),
            "quantize_compute": compute_path(),
            **({"gates_compute": fit_compute(recipe.gates.device, recipe.gates.dtype)} if recipe.gates.fit else {}),
        },
        **({"llama.cpp": llama_cpp_pin()} if recipe.gguf.enabled else {}),
    }


def llama_cpp_pin() -> dict[str, str]:
    """What makes the GGUF bytes and llama.cpp's numbers: the sdist (its vendored
    llama.cpp commit) and the flags it was built with."""
    return {
        "llama_cpp_python": llama_cpp.VERSION,
        "sdist_sha256": llama_cpp.SDIST_SHA256,
        "commit": llama_cpp.LLAMA_CPP_COMMIT,
        "build_flags": llama_cpp.BUILD_FLAGS,
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
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: value}


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
