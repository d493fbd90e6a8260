"""The shipped CI workflow runs as committed: what it checks exists."""

from __future__ import annotations

import glob
import re

import pytest
import yaml

from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "build.yml"


def test_the_release_jobs_locked_build_has_its_lock_file():
    flow = yaml.safe_load(WORKFLOW.read_text())
    default = re.search(r"\|\| '([^']+)'", flow["env"]["RECIPE"]).group(1)
    steps = [s.get("run", "") for s in flow["jobs"]["release"]["steps"]]
    assert any("--locked" in s and '"$RECIPE"' in s for s in steps)
    assert (REPO / default).is_file() and (REPO / default).with_suffix(".lock.json").is_file(), default


def test_the_cache_keys_name_files_that_exist():
    for pattern in re.findall(r"hashFiles\(([^)]*)\)", WORKFLOW.read_text()):
        for path in re.findall(r"'([^']+)'", pattern):
            assert glob.glob(str(REPO / path), recursive=True), f"hashFiles names {path}, which is not here"


@pytest.mark.slow
def test_the_committed_real_example_lock_matches_its_inputs(monkeypatch):
    """recipes/smollm2-2x.lock.json (what the release job checks) is refreshed whenever the example's inputs change."""
    from pathlib import Path

    from frankenmoe.example.catalog import ensure_example
    from frankenmoe.provenance.lockfile import differences, read_lock
    from frankenmoe.recipe import load_recipe
    from frankenmoe.stages import STAGES
    from frankenmoe.stages.base import lock_now
    from frankenmoe.support.hashing import HashState

    ensure_example("smollm2", REPO / "fixtures", log=lambda _: None)
    monkeypatch.chdir(REPO)
    committed = read_lock(REPO / "recipes" / "smollm2-2x.lock.json")
    now = lock_now(
        STAGES, load_recipe(REPO / "recipes" / "smollm2-2x.yaml"), HashState(Path("/nonexistent/state.json"))
    )
    if committed["platform"] != now["platform"]:
        pytest.skip(f"the example was locked on {committed['platform']}; this machine is {now['platform']}")
    assert differences(committed, now) == []
