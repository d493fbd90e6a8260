"""The one interface every stage implements.

A stage reads its recipe section and the records of the stages it depends on, and
writes one output folder. The build (pipeline/build.py) owns everything else:
keys, the cache, atomic placement, records, publishing to dist/. Adding a stage is
a new module with a subclass of `Stage` and one line in `pipeline/stages/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pipeline.hashing import HashState
from pipeline.recipe import Recipe


@dataclass(frozen=True)
class StageResult:
    """A finished stage output: its folder and its record.json contents."""

    name: str
    key: str
    path: Path
    record: dict[str, Any]


@dataclass
class StageContext:
    recipe: Recipe
    out: Path  # the (temporary) folder the stage writes into
    inputs: dict[str, StageResult]  # results of the stages named in `depends`
    state: HashState
    dist: Path  # where this build publishes (dist/<name>), for stages that read it back
    log: Callable[[str], None] = print
    extras: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class. Subclasses set the class variables and implement `config` and `run`."""

    name: ClassVar[str]
    # Part of the key: bump it when a change to the stage's code changes what it
    # writes (bytes or record fields), so no cache anywhere serves the old output.
    version: ClassVar[int] = 1
    depends: ClassVar[tuple[str, ...]] = ()
    # Packages whose versions shape this stage's output bytes (part of the key).
    packages: ClassVar[tuple[str, ...]] = ()
    # dist/<name>/<key> <- <stage output>/<value>: what the build publishes.
    publishes: ClassVar[dict[str, str]] = {}
    # A stage that reads dist/<name>/ (push) gets it published before it runs;
    # otherwise dist/ is updated once, at the end of a successful build.
    reads_dist: ClassVar[bool] = False
    # Files that describe how the run went (logs, engine settings with local paths),
    # not its result: kept in the cache for debugging, left out of build.json.
    diagnostics: ClassVar[tuple[str, ...]] = ()
    # A stage whose result lives outside the build (the Hub): its record says what
    # happened last time, never whether it still holds, so it runs every build.
    never_cached: ClassVar[bool] = False

    def config(self, recipe: Recipe) -> dict[str, Any]:
        """The part of the recipe that shapes this stage's output (JSON-able)."""
        raise NotImplementedError

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        """Inputs outside the recipe and other stages (e.g. file hashes). Must be
        cheap on a no-op rebuild: use `state`, which hashes a file only when its stat
        changed. With `offline` (as `plan` asks), return None instead of fetching."""
        return {}

    def preflight(self, recipe: Recipe) -> None:
        """Checks of what the recipe, its files and the models' configs decide, run
        for every selected stage before any stage runs (seconds, no weights read):
        raise a FrankenmoeError naming the recipe key."""

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult]) -> int | None:
        """Disk space the output will need, for `plan` and the free-space check."""
        return None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Write the output into ctx.out; return facts for the record (metrics, sources)."""
        raise NotImplementedError


def published_files(inputs: dict[str, StageResult], folder: str) -> dict[str, dict]:
    """What dist/<name>/<folder> holds, from the records of the stages that publish
    into it: {relative path: {sha256, size}}."""
    from pipeline.stages import STAGES

    out = {}
    for stage in STAGES:
        res = inputs.get(stage.name)
        sub = stage.publishes.get(folder)
        if res is None or sub is None:
            continue
        for rel, meta in res.record["files"].items():
            if rel.startswith(sub + "/"):
                out[rel[len(sub) + 1 :]] = meta
    return out
