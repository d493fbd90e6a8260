"""Every FRANKENMOE_* environment variable, read here and nowhere else.

The README's "Environment variables" section lists the same names (a test checks
it). Each is read when asked, not at import: the tests and the CLI set them per
process. The AWQ ones take the environment to read (`environ`), as the engine's
child process gets its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

BUILD_DIR = "FRANKENMOE_BUILD_DIR"  # where build/ is (default ./build)
DIST_DIR = "FRANKENMOE_DIST_DIR"  # where dist/ is (default ./dist)
NO_PROGRESS = "FRANKENMOE_NO_PROGRESS"  # any value: no progress bars, even on a terminal
CACHE = "FRANKENMOE_CACHE"  # the machine-wide cache: llama.cpp's wheel (default ~/.cache/frankenmoe)
EVALS_STORE = "FRANKENMOE_EVALS_STORE"  # the benchmark score store (default $FRANKENMOE_CACHE/evals)
FIXTURES_CACHE = "FRANKENMOE_FIXTURES_CACHE"  # the examples' models shared by clones; empty: off
AWQ_DTYPE = "FRANKENMOE_AWQ_DTYPE"  # float16, bfloat16 or float32: AWQ's compute dtype instead of the machine's
AWQ_SPEEDUPS = "FRANKENMOE_AWQ_SPEEDUPS"  # all (default), none, or a comma list of the engine's speed-ups
AWQ_PROGRESS_FD = "FRANKENMOE_AWQ_PROGRESS_FD"  # internal: the pipe the AWQ child writes its layer lines to
TEST_EXAMPLE = "FRANKENMOE_TEST_EXAMPLE"  # tests: a finished build of recipes/tiny-2x.yaml to reuse
TEST_REAL_EXAMPLE = "FRANKENMOE_TEST_REAL_EXAMPLE"  # tests: a finished build of recipes/smollm2-2x.yaml to reuse
RECIPE = "FRANKENMOE_RECIPE"  # CI (a repository variable of the workflow): the recipe it builds and pushes

VARIABLES = (
    BUILD_DIR,
    DIST_DIR,
    NO_PROGRESS,
    CACHE,
    EVALS_STORE,
    FIXTURES_CACHE,
    AWQ_DTYPE,
    AWQ_SPEEDUPS,
    AWQ_PROGRESS_FD,
    TEST_EXAMPLE,
    TEST_REAL_EXAMPLE,
    RECIPE,
)


def build_root() -> Path:
    return Path(os.environ.get(BUILD_DIR, "build"))


def dist_root() -> Path:
    return Path(os.environ.get(DIST_DIR, "dist"))


def progress_off() -> bool:
    return bool(os.environ.get(NO_PROGRESS))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE, Path.home() / ".cache" / "frankenmoe"))


def evals_store() -> Path:
    """Scores kept once per machine, shared by every recipe and clone; repro-check gives each build its own."""
    value = os.environ.get(EVALS_STORE)
    return Path(value) if value else cache_root() / "evals"


def fixtures_cache() -> Path | None:
    """FRANKENMOE_FIXTURES_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/frankenmoe/fixtures; None when set empty."""
    value = os.environ.get(FIXTURES_CACHE)
    if value is not None:
        return Path(value) if value else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "frankenmoe" / "fixtures"


def awq_dtype(environ: Mapping[str, str]) -> str:
    """The AWQ compute dtype asked for, "" for the machine's own."""
    return environ.get(AWQ_DTYPE, "").strip()


def awq_speedups(environ: Mapping[str, str]) -> str | None:
    """The speed-ups asked for as written (None: not set, all of them)."""
    return environ.get(AWQ_SPEEDUPS)


def awq_progress_fd(environ: Mapping[str, str]) -> int | None:
    value = environ.get(AWQ_PROGRESS_FD, "")
    return int(value) if value.isdigit() else None


def reused_build(name: str) -> Path | None:
    """The finished build a test may reuse: `example` (tiny) or `real` (smollm2)."""
    value = os.environ.get(TEST_EXAMPLE if name == "example" else TEST_REAL_EXAMPLE)
    return Path(value) if value else None
