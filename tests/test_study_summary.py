"""A study row's dead experts say whether the text gave them anything to do: an
expert best on no domain of the held-out text has nothing to lose by dying there."""

from __future__ import annotations

from frankenmoe.measure.comparison import summarize
from frankenmoe.measure.documents import Reference
from frankenmoe.measure.sweep_report import dead_expert


def reference(weights: dict[str, list[list[float]]]) -> Reference:
    ppl = {
        "moe": {"code": 10.0, "prose": 12.0},
        "base": {"code": 11.0, "prose": 13.0},
        "experts[0]": {"code": 9.5, "prose": 14.0},  # best on code
        "experts[1]": {"code": 12.0, "prose": 11.5},  # best on prose
        "experts[2]": {"code": 10.5, "prose": 12.5},  # best on neither: a chat expert on code and prose
    }
    routing = {d: {"mean_gate_weight": w, "share": w, "top1_share": w} for d, w in weights.items()}
    return Reference.model_construct(perplexity=ppl, routing_16bit=routing)  # the two fields a row reads


def test_a_dead_expert_is_named_with_the_domains_it_is_best_on():
    # two layers; expert 2 gets nothing anywhere, expert 1 nothing at layer 1
    layer = {"code": [[0.6, 0.4, 0.0], [0.97, 0.03, 0.0]], "prose": [[0.3, 0.7, 0.0], [0.99, 0.01, 0.0]]}
    row = summarize(reference(layer), None, share=0.05)
    dead = {d["expert"]: d for d in row["dead_experts"]}
    assert dead[1]["layers"] == [1] and dead[1]["best_on"] == ["prose"]
    assert dead[2]["layers"] == [0, 1] and dead[2]["best_on"] == []
    assert dead_expert(dead[1]) == "expert 1 at 1 layers (best on prose)"
    assert dead_expert(dead[2], layers=True) == (
        "expert 2 at layers 0, 1 (best on no domain: nothing to do on this text)"
    )
