"""The machine, not the recipe: full disks, read-only folders, too little space.

Disk-full cases use a real size-limited file system (a tmpfs mount) where the
machine allows it (root, or a container that permits mounts); elsewhere a write
hook raises the same ENOSPC a full disk would.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from frankenmoe.engine.build import Layout, run_stage
from frankenmoe.errors import EnvironmentProblem
from frankenmoe.stages.base import Facts
from frankenmoe.support.hashing import HashState
from tests.conftest import EXAMPLE, run_cli
from tests.test_build_cache import RECIPE, Counting


@contextmanager
def small_disk(path: Path, size: str, options: str = "") -> Iterator[bool]:
    """A tmpfs of `size` at `path`; yields False (and a plain folder) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}{',' + options if options else ''}", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


class Writes(Counting):
    """Writes 8 MB, as a stage filling the disk would."""

    name = "writes"

    def run(self, ctx):
        self.runs += 1
        if not self.mounted:  # the write hook: what a full disk answers
            (ctx.out / "part.bin").write_bytes(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        with open(ctx.out / "big.bin", "wb") as f:
            for _ in range(8):
                f.write(b"x" * 2**20)
                f.flush()
        return Facts()


def test_disk_filling_during_a_stage_keeps_nothing(tmp_path):
    with small_disk(tmp_path / "disk", "4m") as mounted:
        layout = Layout(tmp_path / "disk" / "build", tmp_path / "dist", "unit")
        stage = Writes()
        stage.mounted = mounted
        with pytest.raises(
            EnvironmentProblem, match=r"writes: disk full while writing .*; nothing was kept, free space and rerun"
        ):
            run_stage(stage, RECIPE, layout, {}, HashState(layout.build_root / ".h.json"), False, log=lambda _: None)
        assert list((layout.build / "writes").iterdir()) == [], "a partial output was kept"
        if mounted:
            assert shutil.disk_usage(layout.build_root).used < 2**20, "the partial file still fills the disk"


@pytest.mark.slow
def test_disk_filling_while_publishing_leaves_dist_as_it_was(example, tmp_path):
    """dist/ on a 1 MB file system: copying the 4-bit model there fails half-way."""
    build = tmp_path / "build"
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(build)], check=True)
    (build / "tiny-2x" / "published.json").unlink()
    with small_disk(tmp_path / "dist", "1m") as mounted:
        if not mounted:
            pytest.skip("mounting a small file system is not allowed here (the stage case above covers the hook)")
        proc = run_cli("build", str(EXAMPLE), build=build, dist=tmp_path / "dist")
        assert proc.returncode == 5, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: publish: disk full while writing {tmp_path / 'dist' / 'tiny-2x' / 'awq'}; it was left as it "
            "was, free space and rerun"
        ]
        assert [p.name for p in (tmp_path / "dist" / "tiny-2x").iterdir()] == [], "a partial folder was left in dist/"
    rerun = run_cli("build", str(EXAMPLE), build=build, dist=tmp_path / "dist")
    assert rerun.returncode == 0, rerun.stderr


@pytest.mark.slow
def test_too_little_free_space_is_refused_before_the_stage_starts(fixture_models, tmp_path):
    with small_disk(tmp_path / "disk", "256k") as mounted:
        if not mounted:
            pytest.skip("mounting a small file system is not allowed here (tests/test_build_cache.py covers the check)")
        proc = run_cli("build", str(EXAMPLE), build=tmp_path / "disk" / "build", dist=tmp_path / "dist")
        assert proc.returncode == 5, proc.stderr
        assert (
            proc.stderr.startswith("error: merge: needs about ")
            and "free some space or point FRANKENMOE_BUILD_DIR" in proc.stderr
        )
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not list((tmp_path / "disk" / "build" / "tiny-2x" / "merge").glob("*"))


def test_read_only_output_folder_is_one_line_exit_5(fixture_models, tmp_path):
    with small_disk(tmp_path / "ro", "1m", "ro") as mounted:
        if not mounted:
            pytest.skip("mounting a read-only file system is not allowed here")
        proc = run_cli("build", str(EXAMPLE), build=tmp_path / "ro" / "build", dist=tmp_path / "dist")
        assert proc.returncode == 5, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert str(tmp_path / "ro" / "build") in proc.stderr


def test_generate_on_a_missing_folder_names_it(tmp_path):
    proc = run_cli("generate", str(tmp_path / "nope"), "--prompt", "def f(")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip() == (
        f"error: generate: {tmp_path / 'nope'}: not a model folder (no config.json); "
        "give dist/<name>/awq or dist/<name>/merged"
    )


def test_operating_system_errors_say_what_to_do_by_kind():
    import errno

    from frankenmoe.errors import os_error_line

    assert os_error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")).endswith("check the path")
    assert "free some space" in os_error_line(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert "free some space" not in os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x"))
