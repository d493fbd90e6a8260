"""Verify's quality limits follow the model's size unless the recipe sets them; dead
experts are found from the routing statistics."""

from __future__ import annotations

from bench.synthetic import SHAPES
from frankenmoe.measure.documents import ForcedRouting, MergeStructure
from frankenmoe.measure.evaluation import dead_experts
from frankenmoe.measure.quality_limits import quality_limits
from frankenmoe.recipe import VerifySection

SMOLLM2 = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
MISTRAL_7B = {**SHAPES["7b"], "tie_word_embeddings": False}


def test_the_tier_is_chosen_by_the_dense_parameter_count():
    assert quality_limits(VerifySection(), SMOLLM2)["dense_params"] == 134_515_008  # SmolLM2-135M
    assert quality_limits(VerifySection(), MISTRAL_7B)["dense_params"] == 7_241_732_096  # Mistral-7B


def test_unset_limits_come_from_the_size_tier_and_the_recipe_wins():
    small, large = quality_limits(VerifySection(), SMOLLM2), quality_limits(VerifySection(), MISTRAL_7B)
    assert (large["max_mean_kl"], large["min_top1_agreement"], large["max_ppl_ratio"]) == (0.05, 0.90, 1.05)
    assert small["max_mean_kl"] > large["max_mean_kl"] and small["min_top1_agreement"] < large["min_top1_agreement"]
    assert small["max_mean_kl_from"] == "model size"
    mine = quality_limits(VerifySection(max_mean_kl=0.01), SMOLLM2)
    assert mine["max_mean_kl"] == 0.01 and mine["max_mean_kl_from"] == "recipe"
    assert mine["min_top1_agreement"] == small["min_top1_agreement"]


def test_an_expert_below_the_share_on_every_domain_is_dead_at_that_layer():
    routing = {  # 3 layers, 3 experts; expert 0 starves at layers 0 and 2 on both domains
        "code": {"mean_gate_weight": [[0.01, 0.6, 0.39], [0.2, 0.5, 0.3], [0.0, 0.5, 0.5]]},
        "prose": {"mean_gate_weight": [[0.03, 0.2, 0.77], [0.01, 0.2, 0.79], [0.04, 0.3, 0.66]]},
    }
    assert dead_experts(routing, 0.05) == [{"expert": 0, "layers": [0, 2], "largest": 0.04}]
    assert dead_experts(routing, 0.01) == []


def _ref(diffs: list[dict]) -> tuple[list[ForcedRouting], MergeStructure]:
    forced = [
        ForcedRouting(
            expert=e,
            max_abs=0.0 if not d else 2.5,
            mean_abs=0.0,
            kl_mean=0.0 if not d else 0.3,
            perplexity_forced_moe=10.0,
            perplexity_source=9.0,
        )
        for e, d in enumerate(diffs)
    ]
    return forced, MergeStructure(tensors_checked=0, mismatches=[], expert_non_mlp_relative_diff=diffs)


def test_forced_routing_is_not_applicable_to_fully_fine_tuned_experts():
    from frankenmoe.measure.checks import forced_routing_check

    ref, structure = _ref([{"attention": 0.2}, {"attention": 0.1}])  # neither shares the base's attention
    check = forced_routing_check(VerifySection(), ref, structure)
    assert check["state"] == "not_applicable"
    assert check["summary"].startswith("no expert shares the base's non-MLP weights")
    assert "expert 0: KL 0.3000, perplexity 10.00 vs source 9.00" in check["summary"]
    assert [f["applies"] for f in check["experts"]] == [False, False]

    ref, structure = _ref([{}, {"attention": 0.1}])  # expert 0 is an MLP-only fine-tune
    check = forced_routing_check(VerifySection(), ref, structure)
    assert check["state"] == "pass" and "not applicable to expert(s) 1" in check["summary"]

    limited = forced_routing_check(VerifySection(max_forced_kl=0.1), ref, structure)
    assert limited["state"] == "fail"
    assert "expert 1 keeps too little of its source: KL 0.3000 (max 0.1)" in limited["summary"]
