"""Proving reproducibility: build twice and compare.

`repro-check` builds a recipe twice with the stage list it is given, each in its
own fresh build and dist folder (no shared cache, no shared hash memo) and its own
process (no state of one build reaches the other), and compares the sha256 of every
published file. `rebuild-check` (frankenmoe/engine/rebuild.py) uses the same
pieces on a published folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from frankenmoe.engine.build import build
from frankenmoe.engine.cache import Layout
from frankenmoe.errors import FrankenmoeError, NotReproducible, ToolFailed, exit_code
from frankenmoe.provenance.lockfile import read_lock
from frankenmoe.recipe import load_recipe
from frankenmoe.stages.base import Stage, published_subfolder
from frankenmoe.support import settings
from frankenmoe.support.hashing import sha256_file
from frankenmoe.support.owned import claim_work_folder
from frankenmoe.support.progress import quiet_environment
from frankenmoe.support.secrets import scrub


def run_build(
    recipe_file: Path,
    root: Path,
    stages: Sequence[Stage],
    log,
    lock_file: Path | None = None,
    paths_from: Path | None = None,
) -> None:
    """The engine's build of `recipe_file` with `stages`, build/ and dist/ under
    `root`, in a fresh process of its own; `lock_file` makes it a locked build,
    `paths_from` resolves the recipe's relative paths from another folder."""
    log(f"building {recipe_file} in {root}")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        code = child.submit(_build, recipe_file, root, tuple(stages), lock_file, paths_from).result()
    if code != 0:
        raise ToolFailed(f"the build in {root} failed (exit {code}); see its output above")


def _build(
    recipe_file: Path, root: Path, stages: Sequence[Stage], lock_file: Path | None, paths_from: Path | None
) -> int:
    """In the child: the build, its problems printed as the CLI prints them; their exit code."""
    quiet_environment()
    # each build computes its benchmark scores itself: a shared store would hand the
    # second build the first one's, and the comparison of those files could not fail
    os.environ[settings.EVALS_STORE] = str(root / "evals-store")
    try:
        recipe = load_recipe(recipe_file, root=paths_from)
        locked = read_lock(lock_file) if lock_file is not None else None
        build(recipe, Layout(root / "build", root / "dist", recipe.name), stages, locked=locked)
    except FrankenmoeError as e:
        for line in e.lines():
            print(scrub(f"error: {line}"), file=sys.stderr, flush=True)
        return exit_code(e)
    return 0


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def made_by(build_dir: Path, stages: Sequence[Stage]) -> dict[str, str]:
    """{published path: stage} from the stage records of a finished build."""
    folders = {f for s in stages for f in s.publishes}
    out = {}
    for stage in stages:
        for record_file in (build_dir / stage.name).glob("*/record.json"):
            files = json.loads(record_file.read_text())["files"]
            for folder in sorted(folders):
                if (sub := published_subfolder(stage, folder)) is None:
                    continue
                for rel in files:
                    if rel.startswith(sub + "/"):
                        out[f"{folder}/{rel[len(sub) + 1 :]}"] = stage.name
    return out


def compare(
    a: dict[str, str], b: dict[str, str], stages: dict[str, str], labels: tuple[str, str]
) -> tuple[list[str], list[str]]:
    """A table of both hashes per file, and one line per file that differs."""
    width = max([len(f) for f in a | b] + [4])
    rows = [f"{'file':<{width}}  {'stage':<9} {labels[0]:<12}  {labels[1]:<12}  result"]
    bad = []
    for f in sorted(set(a) | set(b)):
        ha, hb = a.get(f, "missing"), b.get(f, "missing")
        same = ha == hb
        rows.append(
            f"{f:<{width}}  {stages.get(f, '?'):<9} {ha[:12]:<12}  {hb[:12]:<12}  {'same' if same else 'DIFFERENT'}"
        )
        if not same:
            bad.append(
                f"{f} (made by {stages.get(f, 'an unknown stage')}) differs: {labels[0]} {ha[:12]}, {labels[1]} "
                f"{hb[:12]}"
            )
    return rows, bad


def repro_check(recipe_file: Path, work: Path, stages: Sequence[Stage], log=print) -> list[str]:
    """Build twice from scratch and compare every file under dist/<name>/."""
    recipe = load_recipe(recipe_file)
    claim_work_folder(work, ["a", "b"], "repro-check: --work")
    for side in ("a", "b"):
        run_build(recipe_file, work / side, stages, log)
    a, b = (tree_hashes(work / side / "dist" / recipe.name) for side in ("a", "b"))
    rows, bad = compare(a, b, made_by(work / "a" / "build" / recipe.name, stages), ("build a", "build b"))
    log("\n".join(rows))
    if bad:
        raise NotReproducible(
            [f"repro-check: {line}" for line in bad] + [f"both builds are kept under {work} for a diff"]
        )
    log(f"repro-check: {len(a)} files under dist/{recipe.name}/ identical in two independent builds ({work})")
    return rows
