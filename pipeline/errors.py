"""Error classes, each with the exit code the CLI returns for it.

Every user-facing failure is one of these: the CLI prints its message on one line
(no traceback) and exits with its code. The table is in the README.
"""

from __future__ import annotations


class FrankenmoeError(Exception):
    """Base class: one problem, or a list of them, each printed on its own line."""

    exit_code = 1

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class RecipeError(FrankenmoeError):
    """The recipe is malformed: every problem at once, one line each."""

    exit_code = 2


class IncompatibleModelsError(FrankenmoeError):
    """Source models that cannot be merged together (architecture, shapes, tokenizer)."""

    exit_code = 3


class InputFileError(FrankenmoeError):
    """A model, calibration or other input file is missing, corrupt or unreadable."""

    exit_code = 4


class EnvironmentProblem(FrankenmoeError):
    """The machine cannot run the build: disk space, permissions, a busy build lock."""

    exit_code = 5


class VerifyFailed(FrankenmoeError):
    """A verify check failed; one line per failed check."""

    exit_code = 6

    def lines(self) -> list[str]:
        return [f"verify failed: {f}" for f in self.problems] + [
            "the build stopped before publishing further; see dist/<name>/awq/verify.md, "
            "or set verify.fail_on_mismatch: false to continue anyway (recorded in verify.json)"
        ]


class PublishError(FrankenmoeError):
    exit_code = 7
