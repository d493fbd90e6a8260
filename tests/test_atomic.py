"""One atomic-folder writer for every output folder: the old folder or the new one,
never half of one; a full disk said as such."""

from __future__ import annotations

import errno
import os

import pytest

from frankenmoe.errors import EnvironmentProblem
from frankenmoe.support.atomic import atomic_folder, link_or_copy


def test_a_finished_block_replaces_the_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_folder(final, "disk full") as tmp:
        assert tmp.parent == final.parent and tmp.is_dir() and not list(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").is_file()  # untouched until the block is through
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failure_keeps_the_old_folder_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_folder(final, "disk full") as tmp:
            (tmp / "partial.txt").write_text("x")
            raise RuntimeError("half-way")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_is_said_as_such(tmp_path):
    with pytest.raises(EnvironmentProblem, match="^stage: disk full"):
        with atomic_folder(tmp_path / "out", "stage: disk full"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(tmp_path.iterdir())


def test_link_or_copy_links_and_copies_where_it_cannot_link(tmp_path, monkeypatch):
    src = tmp_path / "a.bin"
    src.write_bytes(b"weights")
    link_or_copy(src, tmp_path / "linked.bin")
    assert os.stat(tmp_path / "linked.bin").st_ino == os.stat(src).st_ino

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    link_or_copy(src, tmp_path / "copied.bin")
    assert (tmp_path / "copied.bin").read_bytes() == b"weights"
    assert os.stat(tmp_path / "copied.bin").st_ino != os.stat(src).st_ino

    def full(a, b):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError, match="No space"):
        link_or_copy(src, tmp_path / "never.bin")
