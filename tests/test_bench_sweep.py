"""The sweep projection in `make bench` (bench/sweep.py): the schedule it computes and
the task graph it schedules, the 2x7B recipe's own stages through the engine's graph."""

from __future__ import annotations

from bench.sweep import LIKE, longest_chain, schedule, sweep_tasks


def test_a_schedule_waits_for_inputs_and_for_a_free_worker():
    tasks = {"a": (1.0, ()), "b": (2.0, ("a",)), "c": (3.0, ("a",)), "d": (1.0, ("b", "c"))}
    assert schedule(tasks, 1) == 7.0  # every task, one after another
    assert schedule(tasks, 2) == 5.0  # b and c side by side, d after the slower
    assert schedule(tasks, 8) == 5.0  # no more room to use
    assert longest_chain(tasks) == ["a", "c", "d"]


def test_the_four_mode_sweep_shares_what_does_not_read_the_merge():
    stages = ("lock", "resolve", "merge", "gates", "quantize", "baseline", "evaluate", "verify", "gguf", "card")
    times = {s: {"s": 1.0} for s in (*stages, "manifest", "gates_fit")}
    tasks = sweep_tasks(times)
    per = {}
    for name in tasks:
        per[name.split("[")[0]] = per.get(name.split("[")[0], 0) + 1
    # resolve and baseline once for all, a merge per gate mode (fitted reuses hidden's), the rest per variant
    assert {k: per[k] for k in ("resolve", "baseline", "merge", "gates", "quantize", "evaluate", "verify")} == {
        "resolve": 1,
        "baseline": 1,
        "merge": 3,
        "gates": 4,
        "quantize": 4,
        "evaluate": 4,
        "verify": 4,
    }
    assert tasks["gates[fitted]"][1] == ("merge[hidden]",)
    assert set(LIKE) <= set(times)
