"""The stage runner: keys, cache hits, atomic outputs, no partial result ever served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from frankenmoe.engine.build import Layout, build_lock, cached_result, publish, run_stage
from frankenmoe.errors import EnvironmentProblem
from frankenmoe.recipe import parse_recipe
from frankenmoe.stages.base import Facts, Stage
from frankenmoe.support.hashing import HashState

RECIPE = parse_recipe(
    {
        "base_model": "org/base",
        "experts": [
            {"source_model": "org/a", "positive_prompts": ["a"]},
            {"source_model": "org/b", "positive_prompts": ["b"]},
        ],
    },
    "unit",
)


class Runs(Facts):
    n: int


class Counting(Stage):
    name = "count"

    def __init__(self, fail_after_write=False, needs=None):
        self.runs = 0
        self.fail_after_write = fail_after_write
        self.needs = needs

    def config(self, recipe):
        return {"group_size": recipe.quantize.group_size}

    def estimate_bytes(self, recipe, inputs, base_config):
        return self.needs

    def run(self, ctx):
        self.runs += 1
        (ctx.out / "data.bin").write_bytes(b"x" * 1000)
        if self.fail_after_write:
            raise RuntimeError("killed mid-write")
        return Runs(n=self.runs)


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path / "build", tmp_path / "dist", "unit")


def run(stage, layout, recipe=RECIPE, force=False):
    state = HashState(layout.build_root / ".hash-state.json")
    return run_stage(stage, recipe, layout, {}, state, force, log=lambda _: None)


def test_second_run_is_cached_and_config_change_reruns(layout):
    stage = Counting()
    first, ran1, _ = run(stage, layout)
    second, ran2, _ = run(stage, layout)
    assert (ran1, ran2, stage.runs) == (True, False, 1)
    assert first.key == second.key
    record = json.loads((first.path / "record.json").read_text())
    assert record["files"]["data.bin"]["size"] == 1000 and len(record["files"]["data.bin"]["sha256"]) == 64
    changed = RECIPE.model_copy(update={"quantize": RECIPE.quantize.model_copy(update={"group_size": 64})})
    third, ran3, _ = run(stage, layout, changed)
    assert ran3 and third.key != first.key
    _, ran4, _ = run(stage, layout, force=True)
    assert ran4 and stage.runs == 3


def test_failed_stage_leaves_nothing(layout):
    with pytest.raises(RuntimeError):
        run(Counting(fail_after_write=True), layout)
    assert list((layout.build / "count").iterdir()) == []


def test_leftover_temp_folder_is_never_served_and_is_cleaned(layout):
    stage = Counting()
    result, _, _ = run(stage, layout)
    # Simulate a build killed before its rename: a temp folder with a record inside.
    partial = layout.build / "count" / f".tmp-{result.key}-99999"
    partial.mkdir()
    (partial / "record.json").write_text("{}")
    os.rename(result.path, layout.build / "count" / "moved-away")
    _, ran, _ = run(stage, layout)
    assert ran and not partial.exists()


def test_damaged_cache_entry_is_rebuilt(layout):
    stage = Counting()
    result, _, _ = run(stage, layout)
    (result.path / "data.bin").write_bytes(b"short")
    assert cached_result(stage, layout, result.key, HashState(layout.build_root / ".hash-state.json")) is None
    _, ran, _ = run(stage, layout)
    assert ran and stage.runs == 2


def test_a_flipped_byte_of_the_same_size_is_not_served(layout, monkeypatch):
    """The record's size alone cannot see it: a file whose stat changed is hashed again."""
    import frankenmoe.support.hashing as hashing

    stage = Counting()
    result, _, _ = run(stage, layout)
    data = result.path / "data.bin"
    time.sleep(0.05)  # past the file system's timestamp granularity, as any later edit is
    with open(data, "r+b") as f:  # in place, as an editor or a bad disk would: same size, same inode
        f.seek(500)
        f.write(b"y")
    assert data.stat().st_size == 1000
    assert cached_result(stage, layout, result.key, HashState(layout.build_root / ".hash-state.json")) is None
    again, ran, _ = run(stage, layout)
    assert ran and stage.runs == 2 and again.path == result.path and data.read_bytes() == b"x" * 1000
    # An unchanged file is never read again: a no-op lookup answers from the stat-keyed memo.
    read = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: read.append(p) or real(p))
    assert cached_result(stage, layout, again.key, HashState(layout.build_root / ".hash-state.json"))
    assert read == []


def test_not_enough_disk_is_refused_before_running(layout):
    stage = Counting(needs=10**18)
    with pytest.raises(EnvironmentProblem, match="needs about .* GB free"):
        run(stage, layout)
    assert stage.runs == 0


def hold_lock(layout, seconds: float) -> subprocess.Popen:
    """Another process that takes the build lock, says so, and holds it."""
    layout.build.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, time\n"
                f"fd = os.open({str(layout.build / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'123'); print('locked', flush=True); "
                f"time.sleep({seconds})\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_build_waits_for_the_lock(layout):
    holder = hold_lock(layout, 1.5)
    said = []
    t0 = time.monotonic()
    with build_lock(layout, said.append):
        waited = time.monotonic() - t0
    holder.wait()
    assert said and said[0] == "waiting for another build of unit to finish (pid 123) ..."
    assert waited > 0.5


def test_lock_of_a_killed_build_does_not_block(layout):
    holder = hold_lock(layout, 60)
    holder.kill()
    holder.wait()
    said = []
    with build_lock(layout, said.append):
        pass
    assert said == []


def test_unusable_build_folder_is_one_line_exit_5(tmp_path):
    from tests.conftest import EXAMPLE, run_cli

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the build folder should be")
    proc = run_cli("build", str(EXAMPLE), build=blocker, dist=tmp_path / "dist")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.startswith(f"error: {blocker}") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_hash_memo_reads_a_hard_linked_file_once(tmp_path, monkeypatch):
    import frankenmoe.support.hashing as hashing

    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 100)
    os.link(a, tmp_path / "b.bin")
    reads = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: reads.append(p) or real(p))
    state = HashState(tmp_path / "memo.json")
    assert state.sha256(a) == state.sha256(tmp_path / "b.bin") == real(a)
    assert reads == [a]
    a.write_bytes(b"y" * 101)  # new content, new stat: read again under either name
    assert state.sha256(tmp_path / "b.bin") == real(a) and len(reads) == 2


class Publishing(Stage):
    """Writes other bytes on each run under the same key, as a forced rerun on other hardware may."""

    name = "pub"
    publishes = {"out": "model"}

    def __init__(self):
        self.runs = 0

    def config(self, recipe):
        return {}

    def run(self, ctx):
        self.runs += 1
        (ctx.out / "model").mkdir()
        (ctx.out / "model" / "weights.bin").write_bytes(b"run %d" % self.runs)
        return Facts()


def test_forced_rerun_with_other_bytes_updates_dist(layout):
    stage = Publishing()
    first, _, _ = run(stage, layout)
    publish({"pub": first}, layout, {"out"}, [stage])
    assert (layout.dist / "out" / "weights.bin").read_bytes() == b"run 1"
    again, ran, _ = run(stage, layout, force=True)
    assert ran and again.key == first.key
    publish({"pub": again}, layout, {"out"}, [stage])
    assert (layout.dist / "out" / "weights.bin").read_bytes() == b"run 2"


class Pid(Facts):
    pid: int


class Slow(Stage):
    """Writes its pid, then takes a second: long enough for a second writer to arrive."""

    name = "slow"

    def config(self, recipe):
        return {}

    def run(self, ctx):
        (ctx.out / "pid").write_text(str(os.getpid()))
        time.sleep(1.0)
        (ctx.out / "data.bin").write_bytes(b"y" * 4096)
        return Pid(pid=os.getpid())


RACER = """
import json, sys, time
from pathlib import Path
from frankenmoe.engine.build import Layout, run_stage
from frankenmoe.support.hashing import HashState
from tests.test_build_cache import RECIPE, Slow
root, start = Path(sys.argv[1]), float(sys.argv[2])
layout = Layout(root / "build", root / "dist", "unit")
time.sleep(max(0.0, start - time.time()))  # both racers call run_stage at the same moment
result, ran, _ = run_stage(Slow(), RECIPE, layout, {}, HashState(root / "build" / ".hash-state.json"), False, print)
print(json.dumps({"ran": ran, "key": result.key, "path": str(result.path), "pid": result.result["pid"]}))
"""


def test_two_processes_racing_on_one_key_leave_one_result(layout, tmp_path):
    """Two workers (a sweep's variants, machines on one shared build folder) reach
    one stage key at once: one computes it, the other is served that very folder."""
    start = time.time() + 3.0  # after both interpreters have imported the engine
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
        )
        for _ in range(2)
    ]
    said = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in racers]
    assert all(p.returncode == 0 for p in racers)
    assert sorted(s["ran"] for s in said) == [False, True]  # computed once
    winner = next(s for s in said if s["ran"])
    assert {s["key"] for s in said} == {winner["key"]} and {s["path"] for s in said} == {winner["path"]}
    assert {s["pid"] for s in said} == {winner["pid"]}  # both read the one result the winner wrote
    stage_dir = layout.stage_dir("slow")
    assert [p.name for p in stage_dir.iterdir()] == [winner["key"]]  # no second folder, no temp left
    final = stage_dir / winner["key"]
    assert (final / "pid").read_text() == str(winner["pid"]) and (final / "data.bin").stat().st_size == 4096
    record = json.loads((final / "record.json").read_text())
    assert record["result"] == {"pid": winner["pid"]}
