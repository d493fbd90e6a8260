"""The router probe (bench/router_probe.py): one run on the example's merge, and its table."""

from __future__ import annotations

import pytest

from bench.router_probe import probe, table
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
            "start 128 windows",
            "start 128 windows even",
            "adam 1e-3",
            "adam 5e-3",
            "adam 5e-3 balance",
            "distill 5e-3",
        }
        assert d["models"][d["best_expert"]]["vs_best"]["value"] == 0.0
    fits = doc["adam"]["fits"]
    assert set(fits) == {"adam 1e-3", "adam 5e-3", "adam 5e-3 balance", "distill 5e-3"}
    assert all(f["heldout"][0]["step"] == 0 and len(f["heldout"]) >= 2 for f in fits.values())
    routed = set(doc["domains"]["code"]["models"]) - {"experts[0]", "experts[1]"}
    assert set(doc["dead_experts"]) == routed
    for dead in doc["dead_experts"].values():
        assert all(d["expert"] in (0, 1) and 1 <= d["layers"] <= doc["layers"] for d in dead)
    assert "\nDead experts (less than 5% of the routed weight at a layer on every domain): " in table(doc)
    assert set(doc["top1_on_best"]) == routed
    for shares in doc["top1_on_best"].values():
        assert set(shares) == {"code", "prose"}
        assert all(0 <= s["lowest"] <= s["mean"] <= 1 for s in shares.values())
    assert set(doc["starts"]) == {"start", "start 128 windows", "start 128 windows even"}
    for start in doc["starts"].values():
        assert len(start["accuracy"]) == len(start["heldout_accuracy"]) == doc["layers"]
    # More fitting windows than the default start's 32 where the text has them.
    assert doc["starts"]["start 128 windows"]["windows"] > doc["starts"]["start"]["windows"]
    assert "\n| start | " in table(doc).split("heaviest expert")[1]


def test_top1_on_best_reads_each_domains_own_best_expert():
    from bench.router_probe import on_best

    shares = {"code": [[0.9, 0.1], [0.5, 0.5]], "prose": [[0.2, 0.8], [0.4, 0.6]]}
    compared = {"code": {"best_expert": "experts[0]"}, "prose": {"best_expert": "experts[1]"}}
    assert on_best(shares, compared, ["experts[0]", "experts[1]"]) == {
        "code": {"mean": 0.7, "lowest": 0.5},
        "prose": {"mean": 0.7, "lowest": 0.6},
    }


def test_the_probes_nlls_and_routers_are_what_verifys_reader_computes(example):
    """window_nll (the probe's scorer, on a loaded model) against StreamingLM, the
    layer-streaming reader verify's reference comes from, on the same windows."""
    import torch

    from bench.router_probe import window_nll
    from frankenmoe.checkpoints.loading import load_merged
    from frankenmoe.checkpoints.streaming import StreamingLM

    g = torch.Generator().manual_seed(0)
    windows = [("code", torch.randint(0, 1000, (33,), generator=g).tolist()) for _ in range(3)]
    nll, router = window_nll(load_merged(example["merged"]), windows, "test")
    streamed = list(StreamingLM(example["merged"]).run([w[:-1] for _, w in windows]))
    expected = [
        -float(lp.gather(1, torch.tensor(w[1:]).unsqueeze(1)).sum()) for (lp, _), (_, w) in zip(streamed, windows)
    ]
    assert nll == pytest.approx(expected, rel=1e-4)
    assert router.shape == (len(streamed[0][1]), 3 * 32, streamed[0][1].shape[-1])
    assert torch.allclose(router, torch.cat([r for _, r in streamed], dim=1), atol=1e-5)


def test_the_probe_tables_in_the_docs_are_what_its_command_writes_from_the_committed_results():
    """Each bench/router-probe-*.json renders (bench.router_probe.table) to its .md
    file, and that table is quoted whole in docs/routing-and-study.md."""
    import json

    from tests.conftest import REPO

    docs = (REPO / "docs" / "routing-and-study.md").read_text(encoding="utf-8")
    results = sorted((REPO / "bench").glob("router-probe-*.json"))
    assert len(results) >= 3
    for f in results:
        written = f.with_suffix(".md").read_text(encoding="utf-8")
        assert table(json.loads(f.read_text(encoding="utf-8"))) == written, f.name
        assert written in docs, f.name


def test_the_decision_table_in_the_docs_is_what_its_command_writes():
    """bench/router_summary.py over the committed probe results gives
    bench/router-summary.md, quoted whole in docs/routing-and-study.md."""
    from bench.router_summary import committed, summary
    from tests.conftest import REPO

    written = (REPO / "bench" / "router-summary.md").read_text(encoding="utf-8")
    assert summary(committed()) == written
    assert written in (REPO / "docs" / "routing-and-study.md").read_text(encoding="utf-8")


def test_the_default_fit_is_the_probes_adam_5e_3():
    """The summary reports the probe's `adam 5e-3` as what gates.fit runs by default:
    its start, schedule, rate and batches must be the recipe's defaults."""
    from bench.router_probe import ADAM, ADAM_VARIANTS
    from frankenmoe.recipe.sections import GatesSection

    g = GatesSection()
    assert g.start == "best_expert" and ADAM_VARIANTS["adam 5e-3"] == (g.lr, g.balance, False)
    assert (ADAM.steps, ADAM.check_every, ADAM.patience, ADAM.warmup) == (g.steps, g.check_every, g.patience, g.warmup)


def test_the_target_needs_the_upper_end_within_2_percent_and_below_worse_hidden_routers():
    from bench.router_summary import met

    def models(fit_upper: float, hidden: float, vs_hidden_upper: float) -> dict:
        return {
            "hidden": {"vs_best": {"value": hidden}},
            "adam 5e-3": {"vs_best": {"ci95": [0.0, fit_upper]}, "vs_hidden": {"ci95": [-0.1, vs_hidden_upper]}},
        }

    assert met(models(0.019, 0.10, -0.05))
    assert not met(models(0.021, 0.10, -0.05))  # the upper end above 2%
    assert not met(models(0.015, 0.10, 0.01))  # not told below hidden routers that are worse than 2%
    assert met(models(0.015, -0.01, 0.01))  # hidden already within 2%: no need to beat them


def test_the_four_recipe_run_gives_the_committed_rows_again():
    """bench/router-probe-default/ holds one later run of the probe over all four real
    recipes (the decision's variants only): every row it measured equals the row the
    earlier probes of that recipe committed, interval included, so the decision
    table does not rest on one run's luck or on state left by other variants."""
    import json

    from bench.router_summary import committed, merged
    from tests.conftest import REPO

    before = merged(committed())
    again = sorted((REPO / "bench" / "router-probe-default").glob("*.json"))
    assert {json.loads(f.read_text(encoding="utf-8"))["recipe"] for f in again} == set(before)
    for f in again:
        doc = json.loads(f.read_text(encoding="utf-8"))
        for domain, r in doc["domains"].items():
            for variant, m in r["models"].items():
                assert m["vs_best"] == before[doc["recipe"]][domain][variant]["vs_best"], (f.name, domain, variant)
