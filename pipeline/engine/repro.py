"""Proving reproducibility: build twice and compare, or rebuild a published folder.

`repro-check` builds a recipe twice, each in its own fresh build and dist folder
(no shared cache, no shared hash memo), in separate processes, and compares the
sha256 of every published file. `rebuild-check` takes a published folder, writes
out the recipe and lock embedded in its `build.json`, rebuilds with `--locked`
and compares the folder's files with the rebuilt ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import yaml

from pipeline.errors import NotReproducible, ToolFailed
from pipeline.provenance.manifest_format import MANIFEST, read_manifest
from pipeline.stages.base import Stage, published_subfolder
from pipeline.support.hashing import sha256_file


def run_build(recipe_file: Path, root: Path, extra: list[str], log) -> None:
    """`frankenmoe build` in its own process, with build/ and dist/ under `root`."""
    env = {**os.environ, "FRANKENMOE_BUILD_DIR": str(root / "build"), "FRANKENMOE_DIST_DIR": str(root / "dist")}
    log(f"building {recipe_file} in {root}")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "build", str(recipe_file), *extra], env=env)
    if proc.returncode != 0:
        raise ToolFailed(f"the build in {root} failed (exit {proc.returncode}); see its output above")


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
    from pipeline.recipe import load_recipe

    recipe = load_recipe(recipe_file)
    shutil.rmtree(work, ignore_errors=True)
    for side in ("a", "b"):
        run_build(recipe_file, work / side, [], log)
    a, b = (tree_hashes(work / side / "dist" / recipe.name) for side in ("a", "b"))
    rows, bad = compare(a, b, made_by(work / "a" / "build" / recipe.name, stages), ("build a", "build b"))
    log("\n".join(rows))
    if bad:
        raise NotReproducible(
            [f"repro-check: {line}" for line in bad] + [f"both builds are kept under {work} for a diff"]
        )
    log(f"repro-check: {len(a)} files under dist/{recipe.name}/ identical in two independent builds ({work})")
    return rows


def rebuild_check(
    folder: Path, work: Path, stages: Sequence[Stage], recipe_dir: Path = Path("."), log=print
) -> list[str]:
    """Rebuild a published folder from its embedded recipe and lock; compare bytes.
    Relative model and data paths in the recipe are read from `recipe_dir` (where
    the original recipe was); Hub models are fetched at the locked commits."""
    manifest = read_manifest(folder)
    recipe_data, name, which = manifest["recipe"], manifest["recipe"]["name"], manifest["folder"]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    recipe_file = work / f"{name}.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (work / f"{name}.lock.json").write_text(
        json.dumps(manifest["lock"], indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    run_build(recipe_file, work, ["--locked", "--paths-from", str(recipe_dir.resolve())], log)
    rebuilt_dir = work / "dist" / name / which
    published = {rel: sha256_file(folder / rel) for rel in [*manifest["files"], MANIFEST] if (folder / rel).is_file()}
    rebuilt = {rel: h for rel, h in tree_hashes(rebuilt_dir).items()}
    made = made_by(work / "build" / name, stages)
    makers = {k.split("/", 1)[1]: v for k, v in made.items() if k.startswith(which + "/")}
    rows, bad = compare(published, rebuilt, makers, ("published", "rebuilt"))
    log("\n".join(rows))
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() not in published and ".cache" not in p.parts
    )
    if extra:
        log(f"not part of the build (ignored): {', '.join(extra)}")
    if bad:
        raise NotReproducible([f"rebuild-check: {line}" for line in bad] + [f"the rebuild is kept under {work}"])
    log(
        f"rebuild-check: {folder} is byte-identical to a fresh build of its recipe and lock (build "
        f"{manifest['build_id']})"
    )
    return rows
