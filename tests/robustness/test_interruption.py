"""kill -9 at the worst moments: during merge, during quantize, while a stage writes
its output files and while dist/ is being assembled. The rerun must complete and
give the bytes of an uninterrupted build; no partial folder is ever served from
the cache or shown under its final name in dist/.

The "while writing" cases run the real CLI through a small wrapper that slows a
write call down and notes each one in a file, so the kill lands mid-write every
time instead of by luck.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, REPO, run_cli
from tests.test_example_build import file_hashes

pytestmark = pytest.mark.slow

SLOW_WRITES = """
import os, sys, time
mark = os.environ["WRITE_MARKS"]

def noted(fn):
    def slow(*args, **kwargs):
        out = fn(*args, **kwargs)
        with open(mark, "a") as f:
            f.write(f"{args[1]}\\n")
        time.sleep(0.1)
        return out
    return slow

import safetensors.torch
safetensors.torch.save_file = noted(safetensors.torch.save_file)
os.link = noted(os.link)
from frankenmoe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_build(build: Path, dist: Path, wrapper: Path | None = None, **popen) -> subprocess.Popen:
    env = {
        **os.environ,
        "FRANKENMOE_BUILD_DIR": str(build),
        "FRANKENMOE_DIST_DIR": str(dist),
        "FRANKENMOE_NO_PROGRESS": "1",
    }
    if wrapper:
        env["WRITE_MARKS"] = str(wrapper.with_suffix(".marks"))
    cmd = [sys.executable, str(wrapper)] if wrapper else [sys.executable, "-m", "frankenmoe.cli"]
    return subprocess.Popen(
        [*cmd, "build", str(EXAMPLE)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen
    )


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the build ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def marks(wrapper: Path, containing: str) -> list[str]:
    f = wrapper.with_suffix(".marks")
    return [l for l in f.read_text().splitlines() if containing in l] if f.exists() else []


def finished_keys(stage_dir: Path) -> list[Path]:
    return [p for p in stage_dir.iterdir() if not p.name.startswith(".tmp-")] if stage_dir.is_dir() else []


def same_model_files(a: Path, b: Path) -> None:
    ha, hb = file_hashes(a), file_hashes(b)
    shared = [
        n
        for n in ha
        if n.endswith(".safetensors") or n in ("config.json", "model.safetensors.index.json", "tokenizer.json")
    ]
    assert len(shared) >= 4 and {n: ha[n] for n in shared} == {n: hb.get(n) for n in shared}


@pytest.fixture
def wrapper(tmp_path) -> Path:
    path = tmp_path / "slow_writes.py"
    path.write_text(SLOW_WRITES)
    return path


def test_kill_during_merge_then_resume_gives_identical_bytes(example, tmp_path):
    build, dist = tmp_path / "build", tmp_path / "dist"
    proc = start_build(build, dist, start_new_session=True)
    merge_dir = build / "tiny-2x" / "merge"
    wait_for(proc, lambda: merge_dir.is_dir() and any(merge_dir.glob(".tmp-*")), "merge started")
    time.sleep(1.0)  # well inside mergekit's work
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert finished_keys(merge_dir) == [], "a partial merge was kept"
    assert not (dist / "tiny-2x" / "merged").exists()
    rerun = run_cli("build", str(EXAMPLE), "--until", "gates", build=build, dist=dist)
    assert rerun.returncode == 0, rerun.stderr
    assert "merge     ran" in rerun.stdout and not any(merge_dir.glob(".tmp-*"))
    same_model_files(dist / "tiny-2x" / "merged", example["merged"])


def test_kill_while_merge_writes_its_shards(example, tmp_path, wrapper):
    build, dist = tmp_path / "build", tmp_path / "dist"
    proc = start_build(build, dist, wrapper)
    wait_for(
        proc,
        lambda: len([m for m in marks(wrapper, "/merge/.tmp-") if "/model/" in m]) >= 3,
        "three merge shards were written",
    )
    proc.kill()
    proc.wait()
    merge_dir = build / "tiny-2x" / "merge"
    partial = list(merge_dir.glob(".tmp-*/model/*.safetensors"))
    assert 3 <= len(partial) < 8, "the kill did not land while the shards were written"
    assert finished_keys(merge_dir) == []
    rerun = run_cli("build", str(EXAMPLE), "--until", "gates", build=build, dist=dist)
    assert rerun.returncode == 0, rerun.stderr
    assert "merge     ran" in rerun.stdout and not any(merge_dir.glob(".tmp-*"))
    same_model_files(dist / "tiny-2x" / "merged", example["merged"])


def test_kill_while_dist_is_assembled(example, tmp_path, wrapper):
    """All stages cached (a hard-linked copy of the example's cache); the kill
    lands while the AWQ folder is being linked into dist/."""
    build, dist = tmp_path / "build", tmp_path / "dist"
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(build)], check=True)
    (build / "tiny-2x" / "published.json").unlink()
    proc = start_build(build, dist, wrapper)
    wait_for(proc, lambda: len(marks(wrapper, "/.awq.tmp-")) >= 3, "dist/tiny-2x/awq was being assembled")
    proc.kill()
    proc.wait()
    assert not (dist / "tiny-2x" / "awq").exists(), "a partial folder appeared under its final name"
    assert any((dist / "tiny-2x").glob(".awq.tmp-*"))
    rerun = run_cli("build", str(EXAMPLE), build=build, dist=dist)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in (dist / "tiny-2x").iterdir()) == ["awq", "merged", "w4a16"], "leftovers remain"
    for folder in ("awq", "merged"):
        assert file_hashes(dist / "tiny-2x" / folder) == file_hashes(example[folder])


def test_kill_during_quantize_stops_the_engine_and_resumes(example, tmp_path):
    """kill -9 of the build alone (not its process group): the GPTQModel child must
    die with it, nothing partial is kept, and the rerun gives the same bytes.
    The stages before quantize come from a hard-linked copy of the example's cache."""
    build, dist = tmp_path / "build", tmp_path / "dist"
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(build)], check=True)
    for later in ("quantize", "evaluate", "verify", "card", "manifest", "published.json"):
        path = build / "tiny-2x" / later
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    proc = start_build(build, dist)
    quantize_dir = build / "tiny-2x" / "quantize"
    wait_for(proc, lambda: any(quantize_dir.glob(".tmp-*/engine-spec.json")), "quantize started")
    spec = next(quantize_dir.glob(".tmp-*/engine-spec.json"))
    time.sleep(3.0)  # the engine is loading or quantizing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    engine_gone = time.monotonic() + 10
    while _engine_running(spec):
        assert time.monotonic() < engine_gone, "the quantization engine outlived the killed build"
        time.sleep(0.2)
    assert finished_keys(quantize_dir) == [], "a partial quantize was kept"
    rerun = run_cli("build", str(EXAMPLE), "--until", "quantize", build=build, dist=dist)
    assert rerun.returncode == 0, rerun.stderr
    assert "merge     cached" in rerun.stdout and "quantize  ran" in rerun.stdout
    same_model_files(dist / "tiny-2x" / "awq", example["awq"])


def _engine_running(spec: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(spec.resolve()).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False
