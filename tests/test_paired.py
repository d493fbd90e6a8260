"""Paired comparisons (frankenmoe/measure/paired.py) on numbers whose answer is known."""

from __future__ import annotations

import math

from bench.router_probe import table
from frankenmoe.measure.paired import compare


def test_the_distance_from_the_best_expert_its_paired_interval_and_who_beats_whom():
    domains, tokens = ["code"] * 6 + ["prose"] * 6, [100] * 12
    e0 = [200.0, 210, 190, 205, 195, 200] + [400.0] * 6  # best on code
    e1 = [300.0] * 6 + [250.0, 260, 240, 255, 245, 250]  # best on prose
    nll = {"experts[0]": e0, "experts[1]": e1, "hidden": [n + 10 for n in e0[:6]] + [n + 20 for n in e1[6:]]}
    nll["same as best"] = e0[:6] + e1[6:]
    nll["noisy"] = [n + d for n, d in zip(nll["same as best"], [30, -30, 20, -20, 10, -10] * 2)]
    out = compare(domains, tokens, nll, ["experts[0]", "experts[1]"], against=("hidden",))
    assert out["code"]["best_expert"] == "experts[0]" and out["prose"]["best_expert"] == "experts[1]"
    code, prose = out["code"]["models"], out["prose"]["models"]
    # 10 nats more per 100-token window on every window: exp(0.1) - 1, whatever the resample
    assert math.isclose(code["hidden"]["vs_best"]["value"], math.exp(0.1) - 1)
    assert all(math.isclose(x, math.exp(0.1) - 1) for x in code["hidden"]["vs_best"]["ci95"])
    assert math.isclose(prose["hidden"]["vs_best"]["value"], math.exp(0.2) - 1)
    assert code["same as best"]["vs_best"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert prose["same as best"]["vs_hidden"]["ci95"][1] < 0  # the interval says it beats hidden
    # no net difference, but differences that vary by window: an interval around 0, no verdict
    lo, hi = code["noisy"]["vs_best"]["ci95"]
    assert code["noisy"]["vs_best"]["value"] == 0.0 and lo < 0 < hi
    # on code noisy is 10 nats a window below hidden on average, its windows scatter by 20-40:
    # no verdict; on prose, 20 below: it beats hidden
    assert out["code"]["beats"] == [["same as best", "hidden"]]
    assert sorted(out["prose"]["beats"]) == [["noisy", "hidden"], ["same as best", "hidden"]]
    assert "| hidden | +10.5% [+10.5%, +10.5%] | +22.1% [+22.1%, +22.1%] |" in table(
        {"recipe": "r", "experts": 2, "experts_per_token": 2, "draws": 2000, "domains": out}
    )
