"""verify: is the build right? Every check with its numbers, and a gate.

Compares the published 4-bit model against the 16-bit reference from `evaluate`
and applies the `verify:` thresholds. Writes `report/verify.json` (all numbers,
each check's state and reason (frankenmoe/measure/verdict.py), the thresholds, the
headline), `report/verify.md` and
`report/routing.png`; they are published into dist/<name>/awq/ for the card. A
failed check stops the build (exit 6) before anything is pushed, unless the
recipe sets `verify.fail_on_mismatch: false` (recorded in verify.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.checkpoints.tensor_file import Rows
from frankenmoe.errors import InputFileError, VerifyFailed
from frankenmoe.measure.evaluation import compare_candidate, dead_experts, routing_stats
from frankenmoe.measure.quality_limits import quality_limits
from frankenmoe.measure.report import render_markdown, render_routing_png
from frankenmoe.measure.verdict import (
    FAIL,
    NOT_APPLICABLE,
    NOT_MEASURED,
    PASS,
    WARN,
    build_report,
    check,
    judged,
    log_lines,
)
from frankenmoe.quantization import readers
from frankenmoe.quantization.awq_layout import awq_form_problems
from frankenmoe.recipe import Recipe, VerifySection
from frankenmoe.stages.base import Stage, StageContext, StageResult
from frankenmoe.stages.evaluate import reference, reference_dir
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.quantize import QuantizeResult, quantize_result, quantized_model
from frankenmoe.support.jsonio import write_json

# A source whose non-MLP weights differ from the base's by more than this (relative
# norm) cannot be reproduced by forced routing; that is reported, not failed.
SHARED_WEIGHTS_TOL = 1e-6


class VerifyResult(TypedDict):
    passed: bool  # the verdict is "passed": nothing failed and a quality check measured
    verdict: str  # passed, failed or not measured (frankenmoe/measure/verdict.py)
    counts: dict[str, int]  # checks per state
    failures: list[str]  # one line per failed check
    enforced: bool  # verify.fail_on_mismatch: a failure stops the build


def verify_result(result: StageResult) -> VerifyResult:
    return cast(VerifyResult, result.result)


def report_dir(result: StageResult) -> Path:
    """verify.json, verify.md and routing.png."""
    return result.path / "report"


class VerifyStage(Stage):
    name = "verify"
    # 2: consumer_load requires the exact AWQ GEMM form; 3: quantization parity per domain;
    # 4: the candidate's log-probs are computed one window at a time; 5: five check
    # states, consumer_load names its loader and the readers it did not try
    # 6: the loader is named by its module in the frankenmoe package (was pipeline/)
    version = 6
    depends = ("gates", "quantize", "evaluate")
    packages = ("torch", "transformers", "safetensors", "matplotlib")
    publishes = {"awq": "report"}

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return recipe.verify.model_dump(exclude={"files", "max_tokens", "seq_len"})

    def run(self, ctx: StageContext) -> dict[str, Any]:
        report = verify_candidate(
            ctx.recipe.verify,
            ctx.inputs["evaluate"],
            routed_model(ctx.inputs["gates"]),
            quantized_model(ctx.inputs["quantize"]),
            ctx.out / "report",
            quantization=_quantization_facts(quantize_result(ctx.inputs["quantize"])),
        )
        for line in log_lines(report, "verify"):
            ctx.log(line)
        for warning in report["warnings"]:
            ctx.log(f"warning   {warning}")
        return {
            "passed": report["passed"],
            "verdict": report["verdict"],
            "counts": report["counts"],
            "failures": report["failures"],
            "enforced": report["enforced"],
        }

    def blocking_error(self, result: StageResult) -> VerifyFailed | None:
        r = verify_result(result)
        return VerifyFailed(r["failures"]) if r["failures"] and r["enforced"] else None


def candidate_inputs(own_build: bool) -> list[str]:
    """The stages `frankenmoe verify` reads: the build's own 4-bit model needs quantize,
    someone else's candidate only the 16-bit model and its reference."""
    return [d for d in VerifyStage.depends if own_build or d != "quantize"]


def candidate_problems(done: dict[str, StageResult], candidate: Path) -> list[str]:
    """Why `candidate` cannot be compared with this build's merge at all (another
    model, another layout): checked before anything is loaded."""
    merged_config = json.loads((routed_model(done["gates"]) / "config.json").read_text())
    return [f"{candidate}: {p}" for p in awq_form_problems(candidate, merged_config)]


def verify_from_results(done: dict[str, StageResult], recipe: Recipe, candidate: Path | None, out: Path) -> dict:
    """`frankenmoe verify`: the checks of `candidate` (default: the build's own 4-bit
    model) against the finished 16-bit model and reference."""
    own = candidate is None
    return verify_candidate(
        recipe.verify,
        done["evaluate"],
        routed_model(done["gates"]),
        quantized_model(done["quantize"]) if own else candidate,
        out,
        quantization=_quantization_facts(quantize_result(done["quantize"])) if own else None,
        own_build=own,
    )


def _routing_check(v: VerifySection, cmp: dict, top_k: int, experts: int) -> dict:
    """Which experts run is what routing decides: per layer, the share of tokens whose
    top-k set is unchanged must reach `min_routing_agreement`. With top-k of k experts
    every expert sees every token, so that part cannot fail: the check then judges
    only the router weights' drift, and only where the recipe sets a limit
    (`max_router_weight_mae`: it grows with the quantization noise of every layer
    before the router, so no one number fits every model); with none it is
    not applicable. The drift is always reported."""
    worst_mae, worst_agree = max(cmp["router_weight_mae"]), min(cmp["router_topk_agreement"])
    mae_limit = v.max_router_weight_mae
    mae_ok = mae_limit is None or worst_mae <= mae_limit
    weights = f"router weights differ by at most {worst_mae:.4f} per layer" + (
        f" (max {mae_limit})" if mae_limit is not None else " (no limit set: verify.max_router_weight_mae)"
    )
    if top_k >= experts:
        reason = (
            f"every expert sees every token (top-{top_k} of {experts}), so which experts run cannot change; {weights}"
        )
        return check(
            "routing_parity",
            NOT_APPLICABLE if mae_limit is None else PASS if mae_ok else FAIL,
            reason,
            quality=True,
            router_weight_mae=cmp["router_weight_mae"],
            topk_applies=False,
        )
    return judged(
        "routing_parity",
        mae_ok and worst_agree >= v.min_routing_agreement,
        f"top-{top_k} experts agree on at least {worst_agree:.1%} of tokens at every layer "
        f"(min {v.min_routing_agreement:.0%}); {weights}",
        quality=True,
        router_weight_mae=cmp["router_weight_mae"],
        router_topk_agreement=cmp["router_topk_agreement"],
        topk_applies=True,
    )


def _forced_routing_check(v: VerifySection, ref: dict, structure: dict) -> dict:
    """Routed fully to expert k, the MoE must reproduce source k exactly, but only
    where source k shares the base's attention, norms and embeddings (MLP-only
    fine-tunes): for other experts that is not applicable, and with none the whole
    check is. For every expert it reports what survives of it in the merge (KL
    and perplexity of the forced MoE against the source), with an optional limit."""
    forced = []
    for f in ref["forced_routing"]:
        shares = all(d <= SHARED_WEIGHTS_TOL for d in structure["expert_non_mlp_relative_diff"][f["expert"]].values())
        exact = f["max_abs"] <= v.forced_routing_atol
        kl_ok = v.max_forced_kl is None or f.get("kl_mean", 0.0) <= v.max_forced_kl
        forced.append({**f, "applies": shares, "passed": (exact or not shares) and kl_ok})
    survival = "; ".join(
        f"expert {f['expert']}: KL {f['kl_mean']:.4f}, perplexity {f['perplexity_forced_moe']:.2f} vs source "
        f"{f['perplexity_source']:.2f}"
        for f in forced
        if "kl_mean" in f
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


def _dead_experts_check(v: VerifySection, routing: dict | None, experts: list[str], whose: str) -> dict:
    """Experts the routers starve, from `routing` (per domain and layer): `warn`
    when some are dead, `fail` only when the recipe asks (verify.fail_on_dead_experts)."""
    if routing is None:
        return check("dead_experts", NOT_MEASURED, f"not measured: {whose} routing was not measured")
    dead = dead_experts(routing, v.dead_expert_share)
    layers = len(next(iter(routing.values()))["share"])
    if not dead:
        return check(
            "dead_experts",
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
        "dead_experts",
        FAIL if v.fail_on_dead_experts else WARN,
        f"{whose} routing: {listed}; fit the routers (gates.fit: true)"
        + ("" if v.fail_on_dead_experts else "; reported, not failed (verify.fail_on_dead_experts)"),
        experts=dead,
        share=v.dead_expert_share,
        enforced=v.fail_on_dead_experts,
    )


def _quantization_facts(result: QuantizeResult) -> dict:
    """How the build's 4-bit model was made, for the reader of verify.json: group
    size, compute dtype, whether calibration went through every expert, and the
    calibration tokens each expert saw (and was routed) per layer."""
    keys = (
        "group_size",
        "compute_dtype",
        "calibrate_all_experts",
        "expert_tokens_seen",
        "expert_tokens_in_statistics",
        "expert_tokens",
    )
    return {k: result[k] for k in keys if k in result}


QUANTIZATION_PARITY = "quantization_parity"  # the check study and bench read


def compare_with_reference(evaluate: StageResult, lm) -> dict:
    """The candidate `lm` (anything with StreamingLM's `run`) on the reference's windows,
    against the 16-bit log-probs and router weights `evaluate` stored."""
    from safetensors import safe_open

    ref = reference(evaluate)
    with safe_open(reference_dir(evaluate) / "reference.safetensors", framework="pt") as st:
        windows = [(d, ids) for d, ids in zip(ref["domains"], st.get_tensor("tokens").tolist())]
        ref_logprobs, ref_router = Rows(st, "logprobs"), st.get_tensor("router")  # log-probs: a window at a time
        return compare_candidate(lm, windows, ref_logprobs, ref_router, ref["top_k"])


PARITY_CHECKS = (QUANTIZATION_PARITY, "routing_parity")  # what parity_checks returns, in order


def parity_checks(v: VerifySection, limits: dict, cmp: dict, ref: dict) -> list[dict]:
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
        _routing_check(v, cmp, ref["top_k"], len(ref["expert_sources"])),
    ]


def verify_candidate(
    v: VerifySection,
    evaluate: StageResult,
    merged: Path,
    candidate: Path,
    out: Path,
    quantization: dict | None = None,
    own_build: bool = True,
) -> dict:
    """Run every check of `candidate` (a folder in the published AWQ layout) against
    the 16-bit reference; write verify.json, verify.md and routing.png into `out`.
    `quantization`: how the build made it. `own_build` false (someone else's
    candidate): the checks of this build's own merge (its structure, forced routing)
    are not run on it and say so, and dead experts are judged on the candidate's
    own routing."""
    ref = reference(evaluate)
    merged_config = json.loads((merged / "config.json").read_text())
    limits = quality_limits(v, merged_config)
    checks = []

    s = ref["structure"]
    warnings = []
    if own_build:
        checks.append(
            judged(
                "merge_structure",
                not s["mismatches"],
                f"{s['tensors_checked']} tensors equal their source bit for bit"
                if not s["mismatches"]
                else f"{len(s['mismatches'])} tensors differ, e.g. {s['mismatches'][0]}",
                mismatches=s["mismatches"],
                expert_non_mlp_relative_diff=s["expert_non_mlp_relative_diff"],
            )
        )
        warnings = [
            f"expert {e} ({ref['expert_sources'][e]}): {group} differs from the base by {d:.2%} (relative norm); "
            "only its MLP is used in the MoE, so this part of its training is lost"
            for e, groups in enumerate(s["expert_non_mlp_relative_diff"])
            for group, d in groups.items()
            if d > SHARED_WEIGHTS_TOL
        ]
        checks.append(_forced_routing_check(v, ref, s))
    else:
        why = "a check of this build's 16-bit merge against its sources; not run on the candidate"
        checks.append(check("merge_structure", NOT_MEASURED, f"not measured: {why}"))
        checks.append(check("forced_routing", NOT_MEASURED, f"not measured: {why}"))

    # The exact AWQ form first (config, then every quantized linear's three parts):
    # a candidate of another model or layout is refused before anything is loaded.
    load_problems = [f"awq: {p}" for p in awq_form_problems(candidate, merged_config)]
    for label, folder in (("merged", merged), ("awq", candidate)):
        if label == "awq" and load_problems:
            break
        try:
            load_problems += [f"{label}: {p}" for p in StreamingLM(folder).check()]
        except InputFileError as e:
            load_problems.append(f"{label}: {e}")
    not_tried = readers.not_tried()  # the AWQ card says how those measured elsewhere fail
    checks.append(
        judged(
            "consumer_load",
            not load_problems,
            f"with {readers.WORKING}, both folders load with no missing, mis-shaped or unexpected tensor; the 4-bit "
            "one is in the exact AWQ GEMM form (config, and qweight/qzeros/scales of every quantized linear); "
            f"readers not tried here: {not_tried}"
            if not load_problems
            else "; ".join(load_problems),
            problems=load_problems,
            loader=readers.WORKING,
            not_tried=not_tried,
        )
    )

    routing_4bit = None
    if not load_problems:
        cmp = compare_with_reference(evaluate, StreamingLM(candidate))
        checks += parity_checks(v, limits, cmp, ref)
        routing_4bit = routing_stats(cmp["router_4bit"], ref["domains"], ref["seq_len"], ref["top_k"])
    else:
        checks += [check(name, NOT_MEASURED, "not measured: the candidate does not load") for name in PARITY_CHECKS]

    if own_build:
        checks.append(_dead_experts_check(v, ref["routing_16bit"], ref["expert_sources"], "the 16-bit"))
    else:
        checks.append(_dead_experts_check(v, routing_4bit, ref["expert_sources"], "the candidate's"))

    report = build_report(
        checks,
        v.fail_on_mismatch,
        candidate="this build's 4-bit model" if own_build else "a folder given to `frankenmoe verify --candidate`",
        warnings=warnings,
        quantization=quantization,
        thresholds={**v.model_dump(exclude={"files"}), **limits},
        routing_report=routing_report(ref, routing_4bit),
    )
    write_report(report, out)
    return report


def routing_report(ref: dict, routing_4bit: dict | None) -> dict:
    """What the report's perplexity and routing sections show: the reference's, and the candidate's routing."""
    return {
        "domains": sorted(set(ref["domains"])),
        "experts": ref["expert_sources"],
        "top_k": ref["top_k"],
        "routing_16bit": ref["routing_16bit"],
        "routing_16bit_hidden": ref.get("routing_16bit_hidden"),
        "routing_4bit": routing_4bit,
        "perplexity": ref["perplexity"],
    }


def write_report(report: dict, out: Path) -> None:
    """verify.json, verify.md and routing.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "verify.json", report)
    (out / "verify.md").write_text(render_markdown(report), encoding="utf-8")
    render_routing_png(report["routing_report"], out / "routing.png")
