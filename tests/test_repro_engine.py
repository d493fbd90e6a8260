"""repro-check runs the engine with the stage list it is given, each build in a
process of its own, and names the stage that made a file that differs."""

from __future__ import annotations

import os

import pytest

from frankenmoe.engine.repro import repro_check
from frankenmoe.errors import NotReproducible
from frankenmoe.stages.base import Facts
from tests.conftest import write_recipe
from tests.test_engine import Fake


class Noisy(Fake):
    """Writes bytes that differ on every run: what repro-check must catch."""

    def run(self, ctx):
        out = ctx.out / "files"
        out.mkdir()
        (out / "noise.bin").write_bytes(os.urandom(16))
        return Facts()


def _recipe(tmp_path):
    return write_recipe(
        tmp_path / "unit.yaml",
        {
            "base_model": "org/base",
            "experts": [
                {"source_model": "org/a", "positive_prompts": ["a"]},
                {"source_model": "org/b", "positive_prompts": ["b"]},
            ],
        },
    )


def test_two_engine_builds_of_the_given_stages_compare_equal(tmp_path):
    stages = [Fake("a", publishes={"out": "files"}), Fake("b", ["a"], publishes={"out": "files"})]
    rows = repro_check(_recipe(tmp_path), tmp_path / "work", stages, log=lambda _: None)
    assert [r.split()[:2] for r in rows[1:]] == [["out/a.txt", "a"], ["out/b.txt", "b"]]
    assert all(r.endswith("same") for r in rows[1:])
    assert [s.runs for s in stages] == [0, 0]  # they ran in the child processes, not here


def test_a_stage_writing_other_bytes_each_time_is_named(tmp_path):
    stages = [Fake("a", publishes={"out": "files"}), Noisy("noisy", ["a"], publishes={"out": "files"})]
    with pytest.raises(NotReproducible, match=r"out/noise.bin \(made by noisy\) differs"):
        repro_check(_recipe(tmp_path), tmp_path / "work", stages, log=lambda _: None)


class StoreSeer(Fake):
    """Notes which benchmark score store its build would use (FRANKENMOE_EVALS_STORE)."""

    def run(self, ctx):
        (ctx.out / "store.txt").write_text(os.environ.get("FRANKENMOE_EVALS_STORE", ""))
        return Facts()


def test_each_build_gets_a_score_store_of_its_own(tmp_path):
    """A shared store would hand build b build a's benchmark scores: their comparison could not fail."""
    repro_check(_recipe(tmp_path), tmp_path / "work", [StoreSeer("seer")], log=lambda _: None)
    for side in ("a", "b"):
        (seen,) = (tmp_path / "work" / side / "build").rglob("store.txt")
        assert seen.read_text() == str(tmp_path / "work" / side / "evals-store")
