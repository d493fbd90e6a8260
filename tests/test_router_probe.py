"""The router probe (bench/router_probe.py): one run on the example's merge, and its table."""

from __future__ import annotations

from bench.router_probe import probe
from tests.conftest import EXAMPLE


def test_the_probe_runs_on_the_examples_merge(example, monkeypatch):
    monkeypatch.setenv("FRANKENMOE_BUILD_DIR", str(example["root"] / "build"))
    doc = probe(EXAMPLE, 512, log=lambda line: None)
    assert set(doc["domains"]) == {"code", "prose"} and doc["start_experts"] is not None
    for d in doc["domains"].values():
        assert d["windows"] >= 2 and set(d["models"]) == {
            "experts[0]",
            "experts[1]",
            "hidden",
            "start",
            "start x2",
            "start x4",
            "start x8",
            "adam 1e-3",
            "adam 5e-3",
            "adam 5e-3 balance",
            "distill 5e-3",
        }
        assert d["models"][d["best_expert"]]["vs_best"]["value"] == 0.0
    fits = doc["adam"]["fits"]
    assert set(fits) == {"adam 1e-3", "adam 5e-3", "adam 5e-3 balance", "distill 5e-3"}
    assert all(f["heldout"][0]["step"] == 0 and len(f["heldout"]) >= 2 for f in fits.values())
