"""verify: is the build right? Every check with its numbers, and a gate.

Compares the published 4-bit model against the 16-bit reference from `evaluate`
and applies the `verify:` thresholds. Writes `report/verify.json` (all numbers,
each check's pass/fail, the thresholds, overall `passed`), `report/verify.md` and
`report/routing.png`; they are published into dist/<name>/awq/ for the card. A
failed check stops the build (exit 6) before anything is pushed, unless the
recipe sets `verify.fail_on_mismatch: false` (recorded in verify.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

from pipeline.checkpoints.streaming import StreamingLM
from pipeline.checkpoints.tensor_file import Rows
from pipeline.errors import InputFileError, VerifyFailed
from pipeline.moe.evaluation import compare_candidate, dead_experts, routing_stats
from pipeline.moe.quality_limits import quality_limits
from pipeline.moe.report import outcome, render_markdown, render_routing_png
from pipeline.quantization.awq_layout import awq_form_problems
from pipeline.recipe import Recipe, VerifySection
from pipeline.stages.base import Stage, StageContext, StageResult
from pipeline.stages.evaluate import reference, reference_dir
from pipeline.stages.gates import routed_model
from pipeline.stages.quantize import QuantizeResult, quantize_result, quantized_model
from pipeline.support.jsonio import write_json

# A source whose non-MLP weights differ from the base's by more than this (relative
# norm) cannot be reproduced by forced routing; that is reported, not failed.
SHARED_WEIGHTS_TOL = 1e-6


class VerifyResult(TypedDict):
    passed: bool
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
    # 4: the candidate's log-probs are computed one window at a time
    version = 4
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
        for check in report["checks"]:
            ctx.log(f"verify    {check['name']:<22} {outcome(check)}  {check['summary']}")
        for warning in report["warnings"]:
            ctx.log(f"warning   {warning}")
        return {"passed": report["passed"], "failures": report["failures"], "enforced": report["enforced"]}

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
    )


def _check(name: str, passed: bool, summary: str, **numbers) -> dict:
    return {"name": name, "passed": bool(passed), "summary": summary, **numbers}


def _routing_check(v: VerifySection, cmp: dict, top_k: int, experts: int) -> dict:
    """Which experts run is what routing decides: per layer, the share of tokens whose
    top-k set is unchanged must reach `min_routing_agreement`. With top-k of k experts
    every expert sees every token, so that cannot fail and is said instead. The
    router weights' drift is always reported; it fails only past a limit the recipe
    sets (`max_router_weight_mae`: it grows with the quantization noise of every
    layer before the router, so no one number fits every model)."""
    worst_mae, worst_agree = max(cmp["router_weight_mae"]), min(cmp["router_topk_agreement"])
    mae_limit = v.max_router_weight_mae
    mae_ok = mae_limit is None or worst_mae <= mae_limit
    weights = f"router weights differ by at most {worst_mae:.4f} per layer" + (
        f" (max {mae_limit})" if mae_limit is not None else " (no limit set)"
    )
    if top_k >= experts:
        return _check(
            "routing_parity",
            mae_ok,
            f"every expert sees every token (top-{top_k} of {experts}); {weights}",
            router_weight_mae=cmp["router_weight_mae"],
            topk_applies=False,
        )
    return _check(
        "routing_parity",
        mae_ok and worst_agree >= v.min_routing_agreement,
        f"top-{top_k} experts agree on at least {worst_agree:.1%} of tokens at every layer "
        f"(min {v.min_routing_agreement:.0%}); {weights}",
        router_weight_mae=cmp["router_weight_mae"],
        router_topk_agreement=cmp["router_topk_agreement"],
        topk_applies=True,
    )


def _forced_routing_check(v: VerifySection, ref: dict, structure: dict) -> dict:
    """Routed fully to expert k, the MoE must reproduce source k exactly, but only
    where source k shares the base's attention, norms and embeddings (MLP-only
    fine-tunes): for other experts that is "not applicable", and with none the check
    is "skipped". For every expert it reports what survives of it in the merge (KL
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
        summary, status = f"expert {f['expert']} {why}", "fail"
    elif not applicable:
        summary, status = (
            (
                "skipped: no expert shares the base's non-MLP weights, so none can be reproduced exactly; "
                f"what survives of each: {survival}"
            ),
            "skipped",
        )
    else:
        others = [f["expert"] for f in forced if not f["applies"]]
        summary = (
            f"{len(applicable)} expert(s) sharing the base's non-MLP weights reproduce their source (largest log-prob "
            "difference "
            + ", ".join(f"{f['max_abs']:.2e}" for f in applicable)
            + ")"
            + (f"; not applicable to expert(s) {', '.join(map(str, others))}" if others else "")
            + (f"; what survives of each: {survival}" if survival and others else "")
        )
        status = "pass"
    return _check(
        "forced_routing",
        not bad,
        summary,
        status=status,
        experts=forced,
        atol=v.forced_routing_atol,
        max_forced_kl=v.max_forced_kl,
    )


def _quantization_facts(result: QuantizeResult) -> dict:
    """How the build's 4-bit model was made, for the reader of verify.json: group
    size, compute dtype, whether calibration went through every expert, and the
    calibration tokens each expert saw (and was routed) per layer."""
    keys = ("group_size", "compute_dtype", "calibrate_all_experts", "expert_tokens_seen", "expert_tokens")
    return {k: result[k] for k in keys if k in result}


def verify_candidate(
    v: VerifySection, evaluate: StageResult, merged: Path, candidate: Path, out: Path, quantization: dict | None = None
) -> dict:
    """Run every check of `candidate` (a folder in the published AWQ layout) against
    the 16-bit reference; write verify.json, verify.md and routing.png into `out`.
    `quantization`: how the build made it (absent for someone else's candidate)."""
    from safetensors import safe_open

    ref = reference(evaluate)
    merged_config = json.loads((merged / "config.json").read_text())
    limits = quality_limits(v, merged_config)
    checks = []

    s = ref["structure"]
    checks.append(
        _check(
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
    checks.append(
        _check(
            "consumer_load",
            not load_problems,
            "both folders load with no missing, mis-shaped or unexpected tensor; the 4-bit one is in the exact "
            "AWQ GEMM form (config, and qweight/qzeros/scales of every quantized linear)"
            if not load_problems
            else "; ".join(load_problems),
            problems=load_problems,
        )
    )

    if not load_problems:
        with safe_open(reference_dir(evaluate) / "reference.safetensors", framework="pt") as st:
            windows = [(d, ids) for d, ids in zip(ref["domains"], st.get_tensor("tokens").tolist())]
            ref_logprobs, ref_router = Rows(st, "logprobs"), st.get_tensor("router")  # log-probs: a window at a time
            cmp = compare_candidate(StreamingLM(candidate), windows, ref_logprobs, ref_router, ref["top_k"])
        router4 = cmp.pop("router_4bit")
        kl, top1, ppl = limits["max_mean_kl"], limits["min_top1_agreement"], limits["max_ppl_ratio"]
        q_ok = cmp["kl_mean"] <= kl and cmp["top1_agreement"] >= top1 and cmp["perplexity_ratio"] <= ppl
        checks.append(
            _check(
                "quantization_parity",
                q_ok,
                f"mean KL {cmp['kl_mean']:.4f} (max {kl}), p99 KL {cmp['kl_p99']:.4f}, top-1 agreement "
                f"{cmp['top1_agreement']:.1%} (min {top1:.0%}), perplexity x{cmp['perplexity_ratio']:.3f} (max x{ppl})",
                **{
                    k: cmp[k]
                    for k in (
                        "tokens",
                        "kl_mean",
                        "kl_p99",
                        "top1_agreement",
                        "perplexity_16bit",
                        "perplexity_4bit",
                        "perplexity_ratio",
                        "per_domain",
                    )
                },
            )
        )
        checks.append(_routing_check(v, cmp, ref["top_k"], len(ref["expert_sources"])))
        routing_4bit = routing_stats(router4, ref["domains"], ref["seq_len"], ref["top_k"])
    else:
        checks.append(_check("quantization_parity", False, "not measured: the candidate does not load"))
        checks.append(_check("routing_parity", False, "not measured: the candidate does not load"))
        routing_4bit = None

    dead = dead_experts(ref["routing_16bit"], v.dead_expert_share)
    checks.append(
        _check(
            "dead_experts",
            not (dead and v.fail_on_dead_experts),
            "no dead expert: each gets at least "
            f"{v.dead_expert_share:.0%} of the routed weight on some domain at every layer"
            if not dead
            else "; ".join(
                f"expert {d['expert']} ({ref['expert_sources'][d['expert']]}) is dead at {len(d['layers'])} "
                f"of {len(ref['routing_16bit'][ref['domains'][0]]['share'])} layers (at most "
                f"{d['largest']:.1%} of the routed weight on any domain)"
                for d in dead
            )
            + (
                ""
                if not dead
                else "; fit the routers (gates.fit: true)"
                + ("" if v.fail_on_dead_experts else " — reported, not failed (verify.fail_on_dead_experts)")
            ),
            experts=dead,
            share=v.dead_expert_share,
            enforced=v.fail_on_dead_experts,
        )
    )
    if dead:
        warnings.append(checks[-1]["summary"])

    failures = [f"{c['name']}: {c['summary']}" for c in checks if not c["passed"]]
    report = {
        "passed": not failures,
        "enforced": v.fail_on_mismatch,
        "failures": failures,
        "warnings": warnings,
        "quantization": quantization,
        "thresholds": {**v.model_dump(exclude={"files"}), **limits},
        "checks": checks,
        "routing_report": {
            "domains": sorted(set(ref["domains"])),
            "experts": ref["expert_sources"],
            "top_k": ref["top_k"],
            "routing_16bit": ref["routing_16bit"],
            "routing_16bit_hidden": ref.get("routing_16bit_hidden"),
            "routing_4bit": routing_4bit,
            "perplexity": ref["perplexity"],
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "verify.json", report)
    (out / "verify.md").write_text(render_markdown(report), encoding="utf-8")
    render_routing_png(report["routing_report"], out / "routing.png")
    return report
