"""The `frankenmoe` command: validate, schema, plan, build, lock, verify, study, sweep, push,
generate, repro-check, rebuild-check, fixtures.

Every failure the user can fix prints one line per problem on stderr, without a
traceback, and exits with the code of its class (the README's "Errors and exit codes").
Here: the entry point and its catch-all; `arguments.py` the command line, `commands.py`
what each command does.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from frankenmoe.cli.arguments import parser
from frankenmoe.errors import (
    ENVIRONMENT_ERRNOS,
    EXIT_CODES,
    INTERNAL_ERROR,
    INTERRUPTED,
    EnvironmentProblem,
    FrankenmoeError,
    exit_code,
    os_error_line,
)
from frankenmoe.support import settings
from frankenmoe.support.progress import quiet_environment
from frankenmoe.support.secrets import scrub

__all__ = ["main", "parser"]


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except FrankenmoeError as e:
        for line in e.lines():
            print(scrub(f"error: {line}"), file=sys.stderr)
        return exit_code(e)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        return 141
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:  # not one the code expects from the machine: a bug
            return internal_error()
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_CODES[EnvironmentProblem]
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (finished stages are kept)", file=sys.stderr)
        return INTERRUPTED
    except Exception:  # a bug
        return internal_error()


def internal_error() -> int:
    """A bug, not a bad input: the traceback (never with a token in it) goes to a log
    file, stderr gets one line naming it, and the exit code is 1."""
    text = scrub(traceback.format_exc())
    name = f"internal-error-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    for folder in (settings.build_root() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            where = f"the traceback is in {folder / name}"
            break
        except OSError:
            continue
    else:
        where = "the traceback follows"
        print(text, file=sys.stderr, end="")
    last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    print(
        f"error: internal error ({last}): a bug in frankenmoe or a library, please report it; {where}",
        file=sys.stderr,
    )
    return INTERNAL_ERROR
