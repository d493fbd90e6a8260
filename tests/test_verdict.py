"""Five check states and one headline: a verdict never says more than was measured."""

from __future__ import annotations

from frankenmoe.measure.verdict import build_report, check, judged, tally
from frankenmoe.recipe import VerifySection


def test_the_headline_counts_states_and_says_passed_only_with_a_measured_quality_check():
    structural = judged("consumer_load", True, "loads")
    quality = judged("quantization_parity", True, "KL 0.01", quality=True)
    skipped = check("quantization_parity", "not_measured", "not measured: the candidate does not load", quality=True)
    report = build_report([structural, quality, check("routing_parity", "not_applicable", "top-2 of 2")], True)
    assert report["verdict"] == "passed" and report["passed"]
    assert report["headline"] == "passed (2 passed, 0 warnings, 1 not applicable, 0 failed)"
    # Nothing that compares outputs was measured: not "passed", and nothing failed either.
    report = build_report([structural, skipped], True)
    assert report["verdict"] == "not measured" and not report["passed"] and report["failures"] == []
    assert report["headline"] == "not measured (1 passed, 0 warnings, 0 not applicable, 1 not measured, 0 failed)"
    failed = build_report([structural, judged("quantization_parity", False, "KL 9", quality=True)], True)
    assert failed["verdict"] == "failed" and failed["failures"] == ["quantization_parity: KL 9"]
    assert tally([check("dead_experts", "warn", "expert 1 dead")]) == "0 passed, 1 warning, 0 not applicable, 0 failed"


def _cmp(mae: float) -> dict:
    moved = {"tokens_topk_changed": [0, 0], "tokens_top1_changed": [3, 1], "routed_weight_kept": [0.97, 0.99]}
    return {"router_weight_mae": [mae, mae / 2], "router_topk_agreement": [1.0, 1.0], **moved}


def test_routing_parity_at_top_k_of_k_cannot_pass_without_a_limit():
    from frankenmoe.measure.checks import routing_check

    free = routing_check(VerifySection(), _cmp(0.5), top_k=2, experts=2)
    assert free["state"] == "not_applicable" and "no limit set" in free["summary"]
    assert free["tokens_top1_changed"] == [3, 1]  # the routing page's per-layer counts, recorded either way
    assert routing_check(VerifySection(max_router_weight_mae=0.1), _cmp(0.05), 2, 2)["state"] == "pass"
    assert routing_check(VerifySection(max_router_weight_mae=0.1), _cmp(0.5), 2, 2)["state"] == "fail"
    low = {"router_weight_mae": [0.01], "router_topk_agreement": [0.5], "tokens_topk_changed": [8]}
    failed = routing_check(
        VerifySection(), {**low, "tokens_top1_changed": [9], "routed_weight_kept": [0.9]}, top_k=2, experts=3
    )
    assert failed["state"] == "fail" and failed["tokens_topk_changed"] == [8] and failed["tokens_top1_changed"] == [9]
    assert failed["routed_weight_kept"] == [0.9] and "at least 90.0% of the routed weight" in failed["summary"]


def test_a_swapped_low_weight_expert_costs_its_weight_not_the_token():
    """Routing parity's weight share: a token whose second expert changes keeps the
    weight its heaviest expert carries; one whose two experts both change keeps none."""
    import torch

    from frankenmoe.measure.evaluation import routing_changes

    # One layer, three tokens, three experts (router softmax rows).
    r16 = torch.tensor([[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]])
    r4 = torch.tensor([[[0.7, 0.1, 0.2], [0.6, 0.3, 0.1], [0.05, 0.15, 0.8]]])
    moved = routing_changes(r16, r4, top_k=2)
    assert moved["tokens_topk_changed"] == [2] and moved["tokens_top1_changed"] == [1]
    # Token 0 keeps expert 0 (7/9 of its weight both times), token 1 all, token 2 nothing in common but expert 1.
    kept = [7 / 9, 1.0, min(4 / 9, 0.15 / 0.95)]
    assert abs(moved["routed_weight_kept"][0] - sum(kept) / 3) < 1e-6


def _routing(share_of_expert_1: float) -> dict:
    layers = [[1 - share_of_expert_1, share_of_expert_1]] * 3
    return {d: {"share": layers, "mean_gate_weight": layers} for d in ("code", "prose")}


def test_a_listed_dead_expert_is_a_warning_and_fails_only_when_asked():
    from frankenmoe.measure.checks import dead_experts_check

    experts = ["code", "prose"]
    assert dead_experts_check(VerifySection(), _routing(0.5), experts, "the 16-bit")["state"] == "pass"
    dead = dead_experts_check(VerifySection(), _routing(0.0), experts, "the 16-bit")
    assert dead["state"] == "warn" and "expert 1 (prose) is dead at 3 of 3 layers" in dead["summary"]
    strict = dead_experts_check(VerifySection(fail_on_dead_experts=True), _routing(0.0), experts, "the 16-bit")
    assert strict["state"] == "fail"
    assert dead_experts_check(VerifySection(), None, experts, "the candidate's")["state"] == "not_measured"


def test_gguf_expert_placement_that_the_noise_hides_is_not_measured():
    from frankenmoe.stages.gguf import _placement_check

    facts = {
        "expert_tensors": 6,
        "misplaced": [],
        "indistinguishable": 0,
        "min_kept": 0.98,
        "min_kept_needed": 0.5,
        "max_relative_error": 0.1,
        "indistinguishable_slices": [],
    }
    assert _placement_check("Q8_0", facts)["state"] == "pass"
    assert _placement_check("Q4_K_M", {**facts, "indistinguishable": 2, "min_kept": 0.1})["state"] == ("not_measured")
    assert _placement_check("Q4_K_M", {**facts, "misplaced": ["blk.3 expert 0 is nearer 1"]})["state"] == "fail"
