"""Every user-facing error class, and the one table that gives each its exit code.

Every failure a user can fix is one of these: the CLI prints its message on one line
per problem (no traceback) and exits with `exit_code(error)`. Exit 1 is left to
internal errors (a bug, printed with its traceback). The README's "Errors and exit
codes" table is checked against `EXIT_CODES` by a test.
"""

from __future__ import annotations

import errno


class FrankenmoeError(Exception):
    """Base class, never raised itself: one problem, or a list of them, each printed on its own line."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class RecipeError(FrankenmoeError):
    """The recipe is malformed: every problem at once, one line each."""


class UsageError(FrankenmoeError):
    """The command line asks for something that does not exist (an unknown stage)."""


class StageListError(FrankenmoeError):
    """The stage list the engine is given cannot run in order: a stage listed twice,
    or one depending on a stage that is not before it (a mistake in a new stage)."""


class IncompatibleModelsError(FrankenmoeError):
    """Source models that cannot be merged together (architecture, shapes, tokenizer)."""


class InputFileError(FrankenmoeError):
    """A model, calibration or other input file is missing, corrupt or unreadable."""


class UndercalibratedExpert(InputFileError):
    """Calibration text that never reaches an expert cannot calibrate it."""


class EnvironmentProblem(FrankenmoeError):
    """The machine cannot run the build: disk space, permissions, a missing GPU or tool."""


class VerifyFailed(FrankenmoeError):
    """A verify check failed; one line per failed check."""

    BUILD_HINT = (
        "the build stopped before publishing further; see dist/<name>/awq/verify.md, "
        "or set verify.fail_on_mismatch: false to continue anyway (recorded in verify.json)"
    )

    def __init__(self, problems: str | list[str], hint: str | None = BUILD_HINT) -> None:
        super().__init__(problems)
        self.hint = hint

    def lines(self) -> list[str]:
        return [f"verify failed: {f}" for f in self.problems] + ([self.hint] if self.hint else [])


class PublishError(FrankenmoeError):
    """The push was refused or failed; nothing half-pushed (a Hub commit is atomic)."""


class LockMismatch(FrankenmoeError):
    """`build --locked` / `lock --check`: the inputs or the environment differ from the lock file."""


class NotReproducible(FrankenmoeError):
    """Two builds of the same inputs gave different bytes."""


class NotBuiltError(FrankenmoeError):
    """A command that reads a finished build (verify, push --dry-run) found none."""


class ToolFailed(FrankenmoeError):
    """A tool the build runs (mergekit, the AWQ engine, llama.cpp, a nested build)
    failed; its own message is printed above."""


# Most specific first is not needed: `exit_code` walks each error's class hierarchy.
EXIT_CODES: dict[type[FrankenmoeError], int] = {
    RecipeError: 2,
    UsageError: 2,
    StageListError: 2,
    IncompatibleModelsError: 3,
    InputFileError: 4,
    EnvironmentProblem: 5,
    VerifyFailed: 6,
    PublishError: 7,
    LockMismatch: 8,
    NotReproducible: 9,
    NotBuiltError: 10,
    ToolFailed: 11,
}
INTERNAL_ERROR = 1
INTERRUPTED = 130


def exit_code(error: FrankenmoeError) -> int:
    """The exit code for an error, by its class or the nearest listed ancestor."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return INTERNAL_ERROR


# Operating-system errors the build expects from the machine: each has a remedy.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EMFILE,
    errno.ENFILE,
}


def os_error_line(e: OSError) -> str:
    """One line that says what to do about this operating-system error, by its kind."""
    where = f"{e.filename}: " if e.filename else ""
    hint = {
        errno.ENOSPC: "free some space, or point FRANKENMOE_BUILD_DIR / FRANKENMOE_DIST_DIR at a larger disk",
        errno.EDQUOT: "free some space, or point FRANKENMOE_BUILD_DIR / FRANKENMOE_DIST_DIR at a larger disk",
        errno.ENOENT: "check the path",
        errno.EACCES: "check its permissions",
        errno.EPERM: "check its permissions",
        errno.EROFS: "it is on a read-only file system; use a writable folder (FRANKENMOE_BUILD_DIR / "
        "FRANKENMOE_DIST_DIR move the build)",
    }.get(e.errno, "check the folder (FRANKENMOE_BUILD_DIR / FRANKENMOE_DIST_DIR move the build)")
    return f"{where}{e.strerror or e}; {hint}"
