"""Keep a third-party engine's console output in a log file when nobody watches.

GPTQModel prints banners, tables and bars of its own. On a terminal the user sees
them (a 40-minute run needs its progress); in CI and pipes they go to a log file
in the stage folder, named in the error if the engine fails.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.progress import bars_enabled


@contextmanager
def engine_output(log_file: Path) -> Iterator[None]:
    if bars_enabled():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
