"""The router probe (bench/router_probe.py): its distance from the best expert and the
paired intervals, on numbers whose answer is known, and one run on the example's merge."""

from __future__ import annotations

import math

from bench.router_probe import compare, probe, table
from tests.conftest import EXAMPLE


def test_the_distance_from_the_best_expert_and_its_paired_interval():
    domains, tokens = ["code"] * 6 + ["prose"] * 6, [100] * 12
    e0 = [200.0, 210, 190, 205, 195, 200] + [400.0] * 6  # best on code
    e1 = [300.0] * 6 + [250.0, 260, 240, 255, 245, 250]  # best on prose
    nll = {"experts[0]": e0, "experts[1]": e1, "hidden": [n + 10 for n in e0[:6]] + [n + 20 for n in e1[6:]]}
    nll["same as best"] = e0[:6] + e1[6:]
    out = compare(domains, tokens, nll, ["experts[0]", "experts[1]"])
    assert out["code"]["best_expert"] == "experts[0]" and out["prose"]["best_expert"] == "experts[1]"
    code, prose = out["code"]["variants"], out["prose"]["variants"]
    # 10 nats more per 100-token window on every window: exp(0.1) - 1, whatever the resample
    assert math.isclose(code["hidden"]["vs_best"]["value"], math.exp(0.1) - 1)
    assert all(math.isclose(x, math.exp(0.1) - 1) for x in code["hidden"]["vs_best"]["ci95"])
    assert math.isclose(prose["hidden"]["vs_best"]["value"], math.exp(0.2) - 1)
    assert code["same as best"]["vs_best"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert prose["same as best"]["vs_hidden"]["ci95"][1] < 0  # the interval says it beats hidden
    assert "| hidden | +10.5% [+10.5%, +10.5%] | +22.1% [+22.1%, +22.1%] |" in table(
        {"recipe": "r", "experts": 2, "experts_per_token": 2, "draws": 2000, "domains": out}
    )


def test_the_probe_runs_on_the_examples_merge(example, monkeypatch):
    monkeypatch.setenv("FRANKENMOE_BUILD_DIR", str(example["root"] / "build"))
    doc = probe(EXAMPLE, 512, log=lambda line: None)
    assert set(doc["domains"]) == {"code", "prose"} and doc["start_experts"] is not None
    for d in doc["domains"].values():
        assert d["windows"] >= 2 and set(d["variants"]) == {
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
        assert d["variants"][d["best_expert"]]["vs_best"]["value"] == 0.0
    fits = doc["adam"]["fits"]
    assert set(fits) == {"adam 1e-3", "adam 5e-3", "adam 5e-3 balance", "distill 5e-3"}
    assert all(f["heldout"][0]["step"] == 0 and len(f["heldout"]) >= 2 for f in fits.values())
