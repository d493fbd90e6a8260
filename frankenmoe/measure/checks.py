"""The checks verify judges a 4-bit model by, from measured numbers and the recipe's
`verify:` limits: quantization and routing parity, forced routing, dead experts.
Each returns a check record (frankenmoe/measure/verdict.py) with its numbers; the
verify and w4a16 stages run them, study and bench read them by name."""

from __future__ import annotations

from frankenmoe.measure.documents import ForcedRouting, MergeStructure, Reference, RoutingStats
from frankenmoe.measure.evaluation import dead_experts
from frankenmoe.measure.verdict import FAIL, NOT_APPLICABLE, NOT_MEASURED, PASS, WARN, check, judged
from frankenmoe.recipe import VerifySection

# A source whose non-MLP weights differ from the base's by more than this (relative
# norm) cannot be reproduced by forced routing; that is reported, not failed.
SHARED_WEIGHTS_TOL = 1e-6
# Check names other modules read reports by (verdict.named): study and bench, the routing page.
QUANTIZATION_PARITY, ROUTING_PARITY, DEAD_EXPERTS = "quantization_parity", "routing_parity", "dead_experts"


def routing_check(v: VerifySection, cmp: dict, top_k: int, experts: int) -> dict:
    """Which experts run is what routing decides: per layer, the share of tokens whose
    top-k set is unchanged must reach `min_routing_agreement`. With top-k of k experts
    every expert sees every token, so that part cannot fail: the check then judges
    only the router weights' drift, and only where the recipe sets a limit
    (`max_router_weight_mae`: it grows with the quantization noise of every layer
    before the router, so no one number fits every model); with none it is
    not applicable. The drift, and the share of routed weight that stays on the same
    experts (a swapped expert counts by its gate weight, so a sharp router's swapped
    low-weight second expert counts little), are always reported, not judged: no
    limit for the share has been set from measurements yet."""
    worst_mae, worst_agree = max(cmp["router_weight_mae"]), min(cmp["router_topk_agreement"])
    mae_limit = v.max_router_weight_mae
    mae_ok = mae_limit is None or worst_mae <= mae_limit
    weights = (
        f"router weights differ by at most {worst_mae:.4f} per layer"
        + (f" (max {mae_limit})" if mae_limit is not None else " (no limit set: verify.max_router_weight_mae)")
        + f"; at least {min(cmp['routed_weight_kept']):.1%} of the routed weight stays on the same experts"
        + " (reported, not judged)"
    )
    moved = {k: cmp[k] for k in ("tokens_topk_changed", "tokens_top1_changed", "routed_weight_kept")}
    if top_k >= experts:
        reason = (
            f"every expert sees every token (top-{top_k} of {experts}), so which experts run cannot change; {weights}"
        )
        return check(
            ROUTING_PARITY,
            NOT_APPLICABLE if mae_limit is None else PASS if mae_ok else FAIL,
            reason,
            quality=True,
            router_weight_mae=cmp["router_weight_mae"],
            **moved,
            topk_applies=False,
        )
    return judged(
        ROUTING_PARITY,
        mae_ok and worst_agree >= v.min_routing_agreement,
        f"top-{top_k} experts agree on at least {worst_agree:.1%} of tokens at every layer "
        f"(min {v.min_routing_agreement:.0%}); {weights}",
        quality=True,
        router_weight_mae=cmp["router_weight_mae"],
        router_topk_agreement=cmp["router_topk_agreement"],
        **moved,
        topk_applies=True,
    )


def forced_routing_check(v: VerifySection, measured: list[ForcedRouting], structure: MergeStructure) -> dict:
    """Routed fully to expert k, the MoE must reproduce source k exactly, but only
    where source k shares the base's attention, norms and embeddings (MLP-only
    fine-tunes): for other experts that is not applicable, and with none the whole
    check is. For every expert it reports what survives of it in the merge (KL
    and perplexity of the forced MoE against the source), with an optional limit."""
    forced = []
    for f in measured:
        shares = all(d <= SHARED_WEIGHTS_TOL for d in structure.expert_non_mlp_relative_diff[f.expert].values())
        exact = f.max_abs <= v.forced_routing_atol
        kl_ok = v.max_forced_kl is None or f.kl_mean <= v.max_forced_kl
        forced.append({**f.model_dump(), "applies": shares, "passed": (exact or not shares) and kl_ok})
    survival = "; ".join(
        f"expert {f['expert']}: KL {f['kl_mean']:.4f}, perplexity {f['perplexity_forced_moe']:.2f} vs source "
        f"{f['perplexity_source']:.2f}"
        for f in forced
    )
    applicable = [f for f in forced if f["applies"]]
    bad = [f for f in forced if not f["passed"]]
    if bad:
        f = bad[0]
        why = (
            f"routed alone differs from its source by {f['max_abs']:.3g} (> {v.forced_routing_atol})"
            if f["applies"] and f["max_abs"] > v.forced_routing_atol
            else f"keeps too little of its source: KL {f['kl_mean']:.4f} (max {v.max_forced_kl})"
        )
        state, summary = FAIL, f"expert {f['expert']} {why}"
    elif not applicable and v.max_forced_kl is None:
        state, summary = (
            NOT_APPLICABLE,
            "no expert shares the base's non-MLP weights, so none can be reproduced exactly; "
            f"what survives of each: {survival}",
        )
    else:
        others = [f["expert"] for f in forced if not f["applies"]]
        summary = (
            f"{len(applicable)} expert(s) sharing the base's non-MLP weights reproduce their source (largest log-prob "
            "difference "
            + (", ".join(f"{f['max_abs']:.2e}" for f in applicable) or "-")
            + ")"
            + (f"; not applicable to expert(s) {', '.join(map(str, others))}" if others else "")
            + (f"; what survives of each: {survival}" if survival and others else "")
            + (f"; KL of each within max {v.max_forced_kl}" if v.max_forced_kl is not None else "")
        )
        state = PASS
    return check(
        "forced_routing",
        state,
        summary,
        quality=True,
        experts=forced,
        atol=v.forced_routing_atol,
        max_forced_kl=v.max_forced_kl,
    )


def dead_experts_check(v: VerifySection, routing: RoutingStats | None, experts: list[str], whose: str) -> dict:
    """Experts the routers starve, from `routing` (per domain and layer): `warn`
    when some are dead, `fail` only when the recipe asks (verify.fail_on_dead_experts)."""
    if routing is None:
        return check(DEAD_EXPERTS, NOT_MEASURED, f"not measured: {whose} routing was not measured")
    dead = dead_experts(routing, v.dead_expert_share)
    layers = len(next(iter(routing.values()))["share"])
    if not dead:
        return check(
            DEAD_EXPERTS,
            PASS,
            f"no dead expert in {whose} routing: each gets at least {v.dead_expert_share:.0%} of the routed weight "
            "on some domain at every layer",
            experts=dead,
            share=v.dead_expert_share,
            enforced=v.fail_on_dead_experts,
        )
    listed = "; ".join(
        f"expert {d['expert']} ({experts[d['expert']]}) is dead at {len(d['layers'])} of {layers} layers (at most "
        f"{d['largest']:.1%} of the routed weight on any domain)"
        for d in dead
    )
    return check(
        DEAD_EXPERTS,
        FAIL if v.fail_on_dead_experts else WARN,
        f"{whose} routing: {listed}; fit the routers (gates.fit: true)"
        + ("" if v.fail_on_dead_experts else "; reported, not failed (verify.fail_on_dead_experts)"),
        experts=dead,
        share=v.dead_expert_share,
        enforced=v.fail_on_dead_experts,
    )


PARITY_CHECKS = (QUANTIZATION_PARITY, ROUTING_PARITY)  # what parity_checks returns, in order


def parity_checks(v: VerifySection, limits: dict, cmp: dict, ref: Reference) -> list[dict]:
    """Quantization parity (KL, top-1, perplexity ratio within the limits) and routing
    parity of a candidate compared with the reference (`compare_with_reference`)."""
    kl, top1, ppl = limits["max_mean_kl"], limits["min_top1_agreement"], limits["max_ppl_ratio"]
    q_ok = cmp["kl_mean"] <= kl and cmp["top1_agreement"] >= top1 and cmp["perplexity_ratio"] <= ppl
    kept = ("tokens", "kl_mean", "kl_p99", "top1_agreement", "perplexity_16bit", "perplexity_4bit")
    return [
        judged(
            QUANTIZATION_PARITY,
            q_ok,
            f"mean KL {cmp['kl_mean']:.4f} (max {kl}), p99 KL {cmp['kl_p99']:.4f}, top-1 agreement "
            f"{cmp['top1_agreement']:.1%} (min {top1:.0%}), perplexity x{cmp['perplexity_ratio']:.3f} (max x{ppl})",
            quality=True,
            **{k: cmp[k] for k in (*kept, "perplexity_ratio", "per_domain")},
        ),
        routing_check(v, cmp, ref.top_k, len(ref.expert_sources)),
    ]
