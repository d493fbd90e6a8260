"""`rebuild-check`: rebuild a published folder from the recipe and lock in its
`build.json` and compare the bytes.

It writes out the recipe and lock embedded in the folder's manifest, has the engine
build them (locked, in a process of its own, frankenmoe/engine/repro.py) and compares
the folder's files with the rebuilt ones, naming the stage that made any that differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import yaml

from frankenmoe.engine.repro import compare, made_by, run_build, tree_hashes
from frankenmoe.errors import InputFileError, NotReproducible
from frankenmoe.provenance.manifest_format import MANIFEST, read_manifest
from frankenmoe.recipe import NAME_RE
from frankenmoe.stages.base import Stage
from frankenmoe.support.hashing import sha256_file
from frankenmoe.support.owned import claim_work_folder


def rebuild_check(
    folder: Path, work: Path, stages: Sequence[Stage], recipe_dir: Path = Path("."), log=print
) -> list[str]:
    """Rebuild a published folder from its embedded recipe and lock; compare bytes.
    Relative model and data paths in the recipe are read from `recipe_dir` (where
    the original recipe was); Hub models are fetched at the locked commits."""
    manifest = read_manifest(folder)
    recipe_data, name, which = manifest["recipe"], manifest["recipe"]["name"], manifest["folder"]
    for field, value in (("recipe.name", name), ("folder", which)):
        if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
            raise InputFileError(f"{folder / MANIFEST}: {field} {value!r} is not a folder name; it was edited")
    claim_work_folder(work, [f"{name}.yaml", f"{name}.lock.json", "build", "dist"], "rebuild-check: --work")
    recipe_file = work / f"{name}.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    lock_file = work / f"{name}.lock.json"
    lock_file.write_text(json.dumps(manifest["lock"], indent=2, sort_keys=True) + "\n", encoding="utf-8")
    run_build(recipe_file, work, stages, log, lock_file=lock_file, paths_from=recipe_dir.resolve())
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
