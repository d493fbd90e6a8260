"""What one variant of a sweep (or one gate mode of the study) measured, as one row:
the same numbers whichever experiment built it, so their reports can be compared."""

from __future__ import annotations

from frankenmoe.measure.checks import QUANTIZATION_PARITY
from frankenmoe.measure.documents import Reference
from frankenmoe.measure.evaluation import dead_experts
from frankenmoe.measure.metrics import gate_weight_entropy_bits
from frankenmoe.measure.verdict import PASS, WARN, named


def summarize(reference: Reference, verify: dict | None, share: float) -> dict:
    """One mode's row: perplexities against the best expert and the base, routing,
    entropy, dead experts (and 4-bit parity when quantized)."""
    ppl = reference.perplexity
    experts = [k for k in ppl if k.startswith("experts[")]
    domains = sorted(ppl["moe"])
    routing = reference.routing_16bit
    per_domain = {}
    for d in domains:
        best = min(experts, key=lambda k: ppl[k][d])
        per_domain[d] = {
            "perplexity": ppl["moe"][d],
            "best_expert": best,
            "best_expert_perplexity": ppl[best][d],
            "vs_best_expert": ppl["moe"][d] / ppl[best][d] - 1,
            "base_perplexity": ppl["base"][d],
            "vs_base": ppl["moe"][d] / ppl["base"][d] - 1,
        }
    dead = dead_experts(routing, share)
    for d in dead:  # an expert best on no domain has nothing to do on this text: its death is no loss here
        d["best_on"] = [dom for dom in domains if per_domain[dom]["best_expert"] == f"experts[{d['expert']}]"]
    row = {
        "per_domain": per_domain,
        "routing": routing,
        "expert_usage_entropy_bits": {d: gate_weight_entropy_bits(routing[d]["mean_gate_weight"]) for d in domains},
        "dead_experts": dead,
        # As verify states it (without verify.fail_on_dead_experts): a dead expert is a warning.
        "dead_experts_state": WARN if dead else PASS,
    }
    if verify is not None:
        q = named(verify, QUANTIZATION_PARITY)
        row["quantized"] = {
            "state": q["state"],
            **{k: q.get(k) for k in ("kl_mean", "top1_agreement", "perplexity_ratio", "per_domain")},
        }
        row["verify"] = verify["headline"]
    return row
