"""Running a tool in a child process of its own, so its process-wide state (logging,
seeds, library settings) never leaks into the build: the AWQ engine and lm-eval run so."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from pathlib import Path
from typing import Callable


def die_with_parent() -> None:
    """A kill -9 of the build must not leave the child running on."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_relaying_stdout(cmd: list[str], env: dict[str, str], log_file: Path, relay: Callable[[str], None]) -> int:
    """Run `cmd` with its stderr in `log_file` and each line it prints on stdout passed
    to `relay` as it comes (its progress lines); the exit status. Ctrl-C kills it."""
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=die_with_parent)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip():
                    relay(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
