"""`frankenmoe study`: every gate mode built through the cache, compared side by
side, and the same study.json from two studies in separate folders."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLE, run_cli

pytestmark = pytest.mark.slow


def study(root):
    proc = run_cli("study", str(EXAMPLE), build=root / "build", dist=root / "dist", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    out = root / "build" / "tiny-2x" / "study"
    return proc, out


def test_study_compares_every_mode_and_is_reproducible(fixture_models, tmp_path):
    proc, out = study(tmp_path / "a")
    data = json.loads((out / "study.json").read_text())
    assert data["modes"] == ["hidden", "cheap_embed", "random", "fitted"]
    for mode, row in data["results"].items():
        assert set(row["per_domain"]) == {"code", "prose"}
        assert row["per_domain"]["code"]["best_expert"] == "expert 0"  # the code expert, on code
        assert 0 <= sum(row["expert_usage_entropy_bits"].values()) / 2 <= 1.0  # log2(2 experts)
        assert len(row["routing"]["code"]["mean_gate_weight"]) == 4  # layers
    hidden, fitted = data["results"]["hidden"], data["results"]["fitted"]
    # fitting lowers perplexity on both domains against mergekit's hidden-state routers
    for d in ("code", "prose"):
        assert fitted["per_domain"][d]["perplexity"] < hidden["per_domain"][d]["perplexity"]
    assert "| fitted |" in proc.stdout and (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "a" / "dist").exists()  # the variants never publish into dist/
    _, again = study(tmp_path / "b")
    strip = lambda d: {k: v for k, v in d.items() if k != "wall_s"}  # noqa: E731
    assert strip(json.loads((again / "study.json").read_text())) == strip(data)


def test_unknown_mode_is_a_usage_error(tmp_path):
    proc = run_cli("study", str(EXAMPLE), "--modes", "hidden,best", build=tmp_path / "build")
    assert proc.returncode == 2 and "--modes: unknown mode 'best'" in proc.stderr
    assert not (tmp_path / "build" / "tiny-2x").exists()
