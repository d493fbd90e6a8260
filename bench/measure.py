"""Running a command the way the benchmarks time it: wall time and the peak memory of
its whole process tree, with the build and dist folders of one root; reading which
stage folder a build's output says ran, and copying a recipe to another folder.

Peak memory is sampled, not read from getrusage: the kernel's ru_maxrss of the
children is the peak of the largest single child, so a build (the parent) and its
GPTQModel child, both resident at once, would count as the larger of the two. The
sampler adds up the RSS of every process in the command's session (it starts a new
one) every SAMPLE_S seconds and keeps the largest sum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SAMPLE_S = 0.1
PAGE = os.sysconf("SC_PAGE_SIZE")


def session_rss(sid: int) -> int:
    """Bytes resident in every live process of session `sid` (the command and all it started)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) != sid:  # field 6 of stat: the session id
                continue
            with open(f"/proc/{entry.name}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):  # the process ended between the listing and the read
            continue
    return total


class TreeMemory:
    """The largest summed RSS of a session's processes, sampled in a thread."""

    def __init__(self, sid: int) -> None:
        self.sid, self.peak = sid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, session_rss(self.sid))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(
    cmd: list[str], env: dict | None = None, timeout: float | None = None, cwd: Path = REPO, ok: tuple[int, ...] = (0,)
) -> dict:
    """Run `cmd`; wall time and peak RSS of its process tree (sampled: see the module
    docstring). Past `timeout` seconds it is stopped and {"timed_out": True} returned;
    an exit code not in `ok` stops the bench with the command's output."""
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
    memory = TreeMemory(proc.pid)  # start_new_session: the command leads its own session
    expired = threading.Event()
    timer = threading.Timer(timeout, lambda: (expired.set(), os.killpg(proc.pid, 9))) if timeout else None
    if timer:
        timer.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    peak = max(memory.stop(), usage.ru_maxrss * 1024)  # a peak shorter than a sample still counts
    if timer:
        timer.cancel()
    if expired.is_set():
        return {"timed_out": True}
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{out[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20), "out": out, "exit_code": code}


def build_env(root: Path) -> dict:
    """A build under `root`, with a benchmark score store of its own (the machine's would
    serve scores an earlier run computed, and the evals stage would be timed reading them)."""
    return {
        "FRANKENMOE_BUILD_DIR": str(root / "build"),
        "FRANKENMOE_DIST_DIR": str(root / "dist"),
        "FRANKENMOE_EVALS_STORE": str(root / "evals-store"),
    }


def stage_record(stage: str, out: str) -> dict:
    """The record of the stage that `out` (a build's output) says ran."""
    return json.loads((Path(ran_line(stage, out).split()[-1]) / "record.json").read_text())


def ran_line(stage: str, out: str) -> str:
    return next(line for line in out.splitlines() if line.split()[:2] == [stage, "ran"])


def movable_recipe(recipe_file: Path) -> dict:
    """The recipe's mapping with its local model folders made absolute: relative
    ones are relative to the recipe's folder, and the bench writes copies elsewhere."""
    data = yaml.safe_load(recipe_file.read_text())
    root = recipe_file.resolve().parent
    local = lambda ref: str((root / ref).resolve()) if isinstance(ref, str) and (root / ref).is_dir() else ref  # noqa: E731
    data["base_model"] = local(data["base_model"])
    for expert in data["experts"]:
        expert["source_model"] = local(expert["source_model"])
    return data
