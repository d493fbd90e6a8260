"""Running a command the way the benchmarks time it: wall time and peak RSS of the
process and its children, with the build and dist folders of one root."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def measure(cmd: list[str], env: dict | None = None, timeout: float | None = None, cwd: Path = REPO) -> dict:
    """Run `cmd`; wall time and peak RSS (of it and the children it waited for).
    Past `timeout` seconds it is stopped and {"timed_out": True} returned."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, "FRANKENMOE_NO_PROGRESS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    expired = threading.Event()
    timer = threading.Timer(timeout, lambda: (expired.set(), os.killpg(proc.pid, 9))) if timeout else None
    if timer:
        timer.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if timer:
        timer.cancel()
    if expired.is_set():
        return {"timed_out": True}
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{out[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "out": out}


def build_env(root: Path) -> dict:
    return {"FRANKENMOE_BUILD_DIR": str(root / "build"), "FRANKENMOE_DIST_DIR": str(root / "dist")}
