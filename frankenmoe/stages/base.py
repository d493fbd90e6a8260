"""The one interface every stage implements, and the only part of the engine a stage sees.

A stage reads its recipe section and the results of the stages it depends on, and
writes one output folder. The engine (frankenmoe/engine/) owns everything else:
keys, the cache, atomic placement, records, publishing to dist/. It never names
a stage: it runs whatever list it is given and asks each stage through the hooks
below. Adding a stage is a new module with a subclass of `Stage` and one line in
`frankenmoe/stages/__init__.py` (docs/adding-a-stage.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict

from frankenmoe.provenance.lockfile import current_lock
from frankenmoe.recipe import Recipe

if TYPE_CHECKING:
    from frankenmoe.errors import FrankenmoeError
    from frankenmoe.support.hashing import HashState


class Facts(BaseModel):
    """What a stage's `run` returns: one typed class per stage, which the engine writes
    into record.json's `result` and readers get back as the same class
    (`StageResult.read`). A field the stage leaves unset is left out of the record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def record(self) -> dict[str, Any]:
        """The JSON form written into record.json (and, by the manifest, build.json)."""
        return self.model_dump(mode="json", exclude_unset=True)


F = TypeVar("F", bound=Facts)


@dataclass(frozen=True)
class StageResult:
    """A finished stage output: its folder and its record.json contents. Stages read
    each other's results as the `Facts` class the stage returned, through the
    accessors their modules export."""

    name: str
    key: str
    path: Path
    record: dict[str, Any]

    @property
    def result(self) -> dict[str, Any]:
        """What the stage's `run` returned, in its JSON form (build.json copies it)."""
        return self.record["result"]

    def read(self, kind: type[F]) -> F:
        """What the stage's `run` returned, as its type again."""
        return kind.model_validate(self.record["result"])

    @property
    def files(self) -> dict[str, dict]:
        """{relative path: {sha256, size}} of every output file."""
        return self.record["files"]


@dataclass
class StageContext:
    recipe: Recipe
    out: Path  # the (temporary) folder the stage writes into
    inputs: dict[str, StageResult]  # results of the stages it depends on
    state: HashState
    dist: Path  # where this build publishes (dist/<name>), for stages that read it back
    log: Callable[[str], None] = print
    stages: Sequence[Stage] = ()  # the build's stage list, for stages that describe the others

    def published_files(self, folder: str) -> dict[str, dict]:
        return published_files(self.stages, self.inputs, folder)

    def folders(self) -> list[str]:
        """Every folder the build's stages publish files into, in a stable order."""
        return sorted(f for f in {f for s in self.stages for f in s.publishes} if self.published_files(f))


class Stage:
    """Base class. Subclasses set the class variables and implement `config` and `run`."""

    name: ClassVar[str]
    # Part of the key: bump it when a change to the stage's code changes what it
    # writes (bytes or record fields), so no cache anywhere serves the old output.
    version: ClassVar[int] = 1
    depends: ClassVar[tuple[str, ...]] = ()
    # Stages read when the recipe switches them on (the card describes the GGUF
    # files when there are any); a switched-off one is simply not an input.
    optional_depends: ClassVar[tuple[str, ...]] = ()
    # A stage that describes the whole build (the manifest) depends on every
    # stage before it in the list, whatever stages are added later.
    depends_on_all_earlier: ClassVar[bool] = False
    # Packages whose versions shape this stage's output bytes (part of the key).
    packages: ClassVar[tuple[str, ...]] = ()
    # dist/<name>/<key> <- <stage output>/<value>: what the build publishes.
    publishes: ClassVar[dict[str, str]] = {}
    # Also write <folder>/ into every folder the other stages publish (build.json).
    publishes_into_every_folder: ClassVar[bool] = False
    # The stage whose fingerprint is the lock, made of every other stage's: left out of it.
    pins_the_build: ClassVar[bool] = False
    # Files that describe how the run went (logs, engine settings with local paths),
    # not its result: kept in the cache for debugging, left out of build.json.
    diagnostics: ClassVar[tuple[str, ...]] = ()

    def config(self, recipe: Recipe) -> dict[str, Any]:
        """The part of the recipe that shapes this stage's output (JSON-able)."""
        raise NotImplementedError

    def enabled(self, recipe: Recipe) -> bool:
        """False when the recipe switches the stage off: it is then left out of the build."""
        return True

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        """Inputs outside the recipe and other stages (e.g. file hashes), portable (no
        local paths): the lock file pins them too. Must be cheap on a no-op rebuild: use
        `state`, which hashes a file only when its stat changed. With `offline` (as `plan`
        asks), return None instead of fetching."""
        return {}

    def preflight(self, recipe: Recipe) -> None:
        """Checks of what the recipe, its files and the models' configs decide, run
        for every selected stage before any stage runs (seconds, no weights read):
        raise a FrankenmoeError naming the recipe key."""

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult], base_config: dict | None) -> int | None:
        """Disk space the output will need, for `plan` and the free-space check: from
        the finished inputs when there are any, else from the base model's config."""
        return None

    def blocking_error(self, result: StageResult) -> FrankenmoeError | None:
        """An error that must stop the build after this stage's result is kept and
        published (a failed verify), or None."""
        return None

    def run(self, ctx: StageContext) -> Facts:
        """Write the output into ctx.out; return facts for the record (metrics, sources)."""
        raise NotImplementedError


def published_subfolder(stage: Stage, folder: str) -> str | None:
    """Where in `stage`'s output the files for dist/<name>/<folder> are, if any."""
    if folder in stage.publishes:
        return stage.publishes[folder]
    return folder if stage.publishes_into_every_folder else None


def published_files(stages: Sequence[Stage], inputs: dict[str, StageResult], folder: str) -> dict[str, dict]:
    """What dist/<name>/<folder> holds, from the records of the stages that publish
    into it: {relative path: {sha256, size}}."""
    out = {}
    for stage in stages:
        res = inputs.get(stage.name)
        sub = published_subfolder(stage, folder)
        if res is None or sub is None:
            continue
        for rel, meta in res.files.items():
            if rel.startswith(sub + "/"):
                out[rel[len(sub) + 1 :]] = meta
    return out


def pinned_packages(stages: Sequence[Stage]) -> list[str]:
    """Every package a stage declares (`Stage.packages`, part of its key): what the
    lock file pins. Declared once, on the stage that uses it."""
    return sorted({p for stage in stages for p in stage.packages})


def stage_pins(
    stages: Sequence[Stage], recipe: Recipe, state: HashState, offline: bool = False
) -> dict[str, dict[str, Any]] | None:
    """{stage: its fingerprint} of every enabled stage with one: what the lock pins
    besides packages and platform. A fingerprint reads the recipe and files, never
    another stage's result, so none are given. None when one is not known offline."""
    out = {}
    for stage in stages:
        if stage.pins_the_build or not stage.enabled(recipe):
            continue
        pins = stage.fingerprint(recipe, state, {}, offline)
        if pins is None:
            return None
        if pins:
            out[stage.name] = pins
    return out


def lock_now(stages: Sequence[Stage], recipe: Recipe, state: HashState, offline: bool = False) -> dict | None:
    """The lock of `recipe` built by `stages`, as things are now (None: see stage_pins)."""
    pins = stage_pins(stages, recipe, state, offline)
    return None if pins is None else current_lock(recipe, state, pins, pinned_packages(stages))
