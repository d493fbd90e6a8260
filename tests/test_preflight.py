"""Preflight: every problem the recipe and the sources' files decide is found before
merge, from every stage at once, and `plan` runs the same checks and writes nothing."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from frankenmoe.engine.build import build
from frankenmoe.engine.cache import Layout
from frankenmoe.engine.plan import make_plan
from frankenmoe.errors import StageListError, exit_code
from frankenmoe.stages.base import Stage
from tests.conftest import REPO, example_data, run_cli, tiny_mistral, write_recipe
from tests.test_build_cache import RECIPE


@pytest.fixture
def wide_expert_recipe(tmp_path, fixture_models):
    """The example with its prose expert replaced by one of another hidden_size:
    resolve refuses it from the configs alone."""
    data = example_data()
    odd = tiny_mistral(
        tmp_path / "wide", hidden=128, inter=768, layers=4, vocab=2048, tokenizer_from=fixture_models / "base"
    )
    data["experts"][1]["source_model"] = str(odd)
    return data


def _tree(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def test_plan_refuses_an_expert_of_another_width_as_the_build_would(tmp_path, wide_expert_recipe):
    recipe = write_recipe(tmp_path / "wide.yaml", wide_expert_recipe)
    for command in ("plan", "build"):
        proc = run_cli(command, str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
        assert proc.returncode == 3, (command, proc.stderr)
        assert "error: hidden_size differs: base " in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "build" / "tiny-2x" / "merge").exists()  # refused before any stage ran


def test_two_problems_in_two_stages_are_both_reported(tmp_path, wide_expert_recipe):
    wide_expert_recipe["quantize"]["calibration"]["files"] = ["missing.jsonl"]
    recipe = write_recipe(tmp_path / "two.yaml", wide_expert_recipe)
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stderr  # the first stage's class, as a build stopping there gives
    assert any(line.startswith("error: hidden_size differs: base ") for line in lines), lines
    assert any(line.startswith("error: quantize.calibration.files: ") for line in lines), lines
    assert not (tmp_path / "build" / "tiny-2x" / "merge").exists()


def test_sources_that_state_no_license_are_refused_before_merge(tmp_path, fixture_models):
    data = example_data()
    data.pop("card")  # the tiny models' folders have no model card: no license stated
    recipe = write_recipe(tmp_path / "nolicense.yaml", data)
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 2, proc.stderr
    assert "card.license: the source models do not agree on a license (base: none stated" in proc.stderr
    assert not (tmp_path / "build" / "tiny-2x" / "merge").exists()


def test_plan_leaves_the_file_tree_unchanged(tmp_path, fixture_models):
    recipe = write_recipe(tmp_path / "recipe.yaml", example_data())
    (tmp_path / "build").mkdir()
    before = _tree(tmp_path)
    proc = run_cli("plan", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    assert "merge     will run" in proc.stdout
    assert _tree(tmp_path) == before


def test_plan_does_not_repair_a_damaged_cache_folder(tmp_path):
    from tests.test_engine import Fake

    layout = Layout(tmp_path / "build", tmp_path / "dist", "unit")
    stages = [Fake("a")]
    done = build(RECIPE, layout, stages, log=lambda _: None)
    (done["a"].path / "files" / "a.txt").write_text("damaged: another size")
    before = _tree(tmp_path)
    assert [r.status for r in make_plan(RECIPE, layout, stages)] == ["will run"]
    assert _tree(tmp_path) == before


class Needs(Stage):
    def __init__(self, name, depends):
        self.name, self.depends = name, tuple(depends)

    def config(self, recipe):
        return {}


def test_a_stage_list_with_a_missing_dependency_is_one_error_exit_2(tmp_path):
    layout = Layout(tmp_path / "build", tmp_path / "dist", "unit")
    for call in (lambda s: build(RECIPE, layout, s, log=lambda _: None), lambda s: make_plan(RECIPE, layout, s)):
        with pytest.raises(StageListError) as e:
            call([Needs("a", ()), Needs("b", ["nope"])])
        assert e.value.lines() == ["stage 'b' depends on 'nope', which is not an earlier stage in the list"]
        assert exit_code(e.value) == 2
    assert not (tmp_path / "build").exists()


def test_the_cli_says_so_in_one_line(tmp_path, fixture_models):
    """A new stage with a dependency that is not in the list, through the real CLI."""
    recipe = write_recipe(tmp_path / "recipe.yaml", example_data())
    code = (
        "import sys, frankenmoe.stages as s\n"
        "from frankenmoe.cli import main\n"
        "from tests.test_preflight import Needs\n"
        "s.STAGES = (*s.STAGES, Needs('leaderboard', ['no-such-stage']))\n"
        f"sys.exit(main(['plan', {str(recipe)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: stage 'leaderboard' depends on 'no-such-stage', which is not an earlier stage in the list"
    ]
