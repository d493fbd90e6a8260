"""No command deletes what it did not create: a user's file in a folder frankenmoe
works in or publishes into survives, and the command refuses in one line (exit 2)."""

from __future__ import annotations

import json

import pytest

from frankenmoe.errors import UsageError
from frankenmoe.support.owned import MARKER, claim_work_folder
from tests.conftest import EXAMPLE, run_cli


def one_line_refusal(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def users_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    return path


def test_a_work_folder_frankenmoe_made_is_emptied_of_its_own_entries_only(tmp_path):
    work = claim_work_folder(tmp_path / "w", ["a", "b"], "--work")
    (work / "a").mkdir()
    (work / "a" / "x").write_text("old build")
    (work / "b").write_text("old")
    claim_work_folder(work, ["a", "b"], "--work")  # its own: cleaned
    assert sorted(p.name for p in work.iterdir()) == [MARKER]
    (work / "a").mkdir()
    (work / "notes.txt").write_text("mine")  # a user's file put in later
    with pytest.raises(UsageError, match="notes.txt, which frankenmoe did not make"):
        claim_work_folder(work, ["a", "b"], "--work")
    assert (work / "notes.txt").read_text() == "mine" and (work / "a").is_dir()


def test_a_folder_without_the_marker_is_never_emptied(tmp_path):
    theirs = users_folder(tmp_path / "theirs")
    (theirs / "a").mkdir()  # even where the names are the ones the command writes
    with pytest.raises(UsageError, match="--work .*theirs: holds a, notes.txt"):
        claim_work_folder(theirs, ["a", "b"], "--work")
    assert (theirs / "notes.txt").is_file() and (theirs / "a").is_dir()
    assert claim_work_folder(tmp_path / "empty", ["a"], "--work").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="a file, not a folder"):
        claim_work_folder(tmp_path / "file", ["a"], "--work")


def test_repro_check_refuses_a_work_folder_with_a_users_file(fixture_models, tmp_path):
    work = users_folder(tmp_path / "work")
    proc = run_cli("repro-check", str(EXAMPLE), "--work", str(work), build=tmp_path / "build", timeout=120)
    one_line_refusal(proc, "repro-check: --work", "notes.txt")
    assert (work / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_rebuild_check_refuses_a_work_folder_with_a_users_file(example, tmp_path):
    work = users_folder(tmp_path / "work")
    proc = run_cli("rebuild-check", str(example["merged"]), "--work", str(work), build=tmp_path / "build")
    one_line_refusal(proc, "rebuild-check: --work", "notes.txt")
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_rebuild_check_refuses_an_edited_name_that_leaves_the_work_folder(example, tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    manifest = json.loads((example["merged"] / "build.json").read_text())
    manifest["recipe"]["name"] = "../../escape"
    (folder / "build.json").write_text(json.dumps(manifest))
    proc = run_cli("rebuild-check", str(folder), "--work", str(tmp_path / "work"), build=tmp_path / "build")
    assert proc.returncode == 4 and "recipe.name '../../escape' is not a folder name" in proc.stderr, proc.stderr
    assert not (tmp_path / "escape").exists()


def test_build_refuses_to_publish_over_a_users_file_before_any_stage_runs(fixture_models, tmp_path):
    dist = tmp_path / "dist"
    awq = users_folder(dist / "tiny-2x" / "awq")
    proc = run_cli("build", str(EXAMPLE), build=tmp_path / "build", dist=dist, timeout=120)
    one_line_refusal(proc, str(awq), "notes.txt", "no frankenmoe build published there")
    assert (awq / "notes.txt").read_text() == "mine\n"
    assert not (tmp_path / "build" / "tiny-2x" / "resolve").exists()  # nothing ran


def test_a_published_folder_keeps_being_replaced_by_the_build_that_made_it(example, tmp_path):
    """The folder's own files (its build.json lists them) are no reason to refuse,
    also for a build folder that has never seen this dist folder."""
    from frankenmoe.engine.publish import foreign_files

    assert foreign_files(example["awq"], None) == []
    (example["awq"] / "notes.txt").write_text("mine")
    try:
        assert foreign_files(example["awq"], None) == ["notes.txt"]
    finally:
        (example["awq"] / "notes.txt").unlink()


def test_fixtures_refuses_an_out_folder_holding_other_files(tmp_path):
    users_folder(tmp_path / "out" / "tiny")
    proc = run_cli("fixtures", "--only", "tiny", "--out", str(tmp_path / "out"), timeout=120)
    one_line_refusal(proc, "fixtures:", "notes.txt", "are not example models")
    assert (tmp_path / "out" / "tiny" / "notes.txt").read_text() == "mine\n"
