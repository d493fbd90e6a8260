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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.checkpoints.tensor_file import Rows
from frankenmoe.errors import InputFileError, VerifyFailed
from frankenmoe.measure.checks import (
    DEAD_EXPERTS,
    PARITY_CHECKS,
    ROUTING_PARITY,
    SHARED_WEIGHTS_TOL,
    dead_experts_check,
    forced_routing_check,
    parity_checks,
)
from frankenmoe.measure.documents import Reference, RoutingStats
from frankenmoe.measure.evaluation import compare_candidate, routing_stats
from frankenmoe.measure.quality_limits import quality_limits
from frankenmoe.measure.report import render_markdown, render_routing_png
from frankenmoe.measure.routing_page import RoutedModel, RoutedText, template_sha256, write_routing_page
from frankenmoe.measure.verdict import (
    NOT_MEASURED,
    build_report,
    check,
    judged,
    log_lines,
    named,
)
from frankenmoe.quantization import readers
from frankenmoe.quantization.awq_layout import awq_form_problems
from frankenmoe.recipe import Recipe, VerifySection
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.evaluate import reference, reference_dir
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.quantize import QuantizeResult, quantize_result, quantized_model
from frankenmoe.support.jsonio import write_json


class VerifyResult(Facts):
    passed: bool  # the verdict is "passed": nothing failed and a quality check measured
    verdict: str  # passed, failed or not measured (frankenmoe/measure/verdict.py)
    counts: dict[str, int]  # checks per state
    failures: list[str]  # one line per failed check
    enforced: bool  # verify.fail_on_mismatch: a failure stops the build


def verify_result(result: StageResult) -> VerifyResult:
    return result.read(VerifyResult)


def report_dir(result: StageResult) -> Path:
    """verify.json, verify.md and routing.png."""
    return result.path / "report"


class VerifyStage(Stage):
    name = "verify"
    # 2: consumer_load requires the exact AWQ GEMM form; 3: quantization parity per domain;
    # 4: the candidate's log-probs are computed one window at a time; 5: five check
    # states, consumer_load names its loader and the readers it did not try
    # 6: the loader is named by its module in the frankenmoe package (was pipeline/)
    # 7: routing.html; routing parity counts the tokens routed elsewhere per layer
    # 8: routing parity reports the share of routed weight kept on the same experts
    version = 8
    depends = ("gates", "quantize", "evaluate")
    packages = ("torch", "transformers", "safetensors", "matplotlib", "jinja2", "tokenizers", "numpy")
    publishes = {"awq": "report"}

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {
            **recipe.verify.model_dump(exclude={"files", "max_tokens", "seq_len"}),
            "routing_page": template_sha256(),
        }

    def run(self, ctx: StageContext) -> VerifyResult:
        report = verify_candidate(
            ctx.recipe.name,
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
        return VerifyResult(
            passed=report["passed"],
            verdict=report["verdict"],
            counts=report["counts"],
            failures=report["failures"],
            enforced=report["enforced"],
        )

    def blocking_error(self, result: StageResult) -> VerifyFailed | None:
        r = verify_result(result)
        return VerifyFailed(r.failures) if r.failures and r.enforced else None


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
        recipe.name,
        recipe.verify,
        done["evaluate"],
        routed_model(done["gates"]),
        quantized_model(done["quantize"]) if own else candidate,
        out,
        quantization=_quantization_facts(quantize_result(done["quantize"])) if own else None,
        own_build=own,
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
    return result.model_dump(mode="json", include=set(keys))


def reference_windows(evaluate: StageResult) -> list[tuple[str, list[int]]]:
    """The held-out windows (domain, token ids) the reference was computed on."""
    from safetensors import safe_open

    with safe_open(reference_dir(evaluate) / "reference.safetensors", framework="pt") as st:
        return [(d, ids) for d, ids in zip(reference(evaluate).domains, st.get_tensor("tokens").tolist())]


def reference_router(evaluate: StageResult):
    """The 16-bit model's router softmax on those windows, [L, T, E]."""
    from safetensors import safe_open

    with safe_open(reference_dir(evaluate) / "reference.safetensors", framework="pt") as st:
        return st.get_tensor("router").float()


def compare_with_reference(evaluate: StageResult, lm) -> dict:
    """The candidate `lm` (anything with StreamingLM's `run`) on the reference's windows,
    against the 16-bit log-probs and router weights `evaluate` stored."""
    from safetensors import safe_open

    with safe_open(reference_dir(evaluate) / "reference.safetensors", framework="pt") as st:
        ref_logprobs = Rows(st, "logprobs")  # a window at a time
        return compare_candidate(
            lm, reference_windows(evaluate), ref_logprobs, reference_router(evaluate), reference(evaluate).top_k
        )


def verify_candidate(
    name: str,
    v: VerifySection,
    evaluate: StageResult,
    merged: Path,
    candidate: Path,
    out: Path,
    quantization: dict | None = None,
    own_build: bool = True,
) -> dict:
    """Run every check of `candidate` (a folder in the published AWQ layout) against
    the 16-bit reference; write verify.json, verify.md, routing.png and routing.html into `out`.
    `quantization`: how the build made it. `own_build` false (someone else's
    candidate): the checks of this build's own merge (its structure, forced routing)
    are not run on it and say so, and dead experts are judged on the candidate's
    own routing."""
    ref = reference(evaluate)
    merged_config = json.loads((merged / "config.json").read_text())
    limits = quality_limits(v, merged_config)
    checks = []

    s = ref.structure
    warnings = []
    if own_build:
        checks.append(
            judged(
                "merge_structure",
                not s.mismatches,
                f"{s.tensors_checked} tensors equal their source bit for bit"
                if not s.mismatches
                else f"{len(s.mismatches)} tensors differ, e.g. {s.mismatches[0]}",
                mismatches=s.mismatches,
                expert_non_mlp_relative_diff=s.expert_non_mlp_relative_diff,
            )
        )
        warnings = [
            f"expert {e} ({ref.expert_sources[e]}): {group} differs from the base by {d:.2%} (relative norm); "
            "only its MLP is used in the MoE, so this part of its training is lost"
            for e, groups in enumerate(s.expert_non_mlp_relative_diff)
            for group, d in groups.items()
            if d > SHARED_WEIGHTS_TOL
        ]
        checks.append(forced_routing_check(v, ref.forced_routing, s))
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

    routing_4bit = router_4bit = None
    if not load_problems:
        cmp = compare_with_reference(evaluate, StreamingLM(candidate))
        checks += parity_checks(v, limits, cmp, ref)
        router_4bit = cmp["router_4bit"]
        routing_4bit = routing_stats(router_4bit, ref.domains, ref.seq_len, ref.top_k)
    else:
        checks += [check(name, NOT_MEASURED, "not measured: the candidate does not load") for name in PARITY_CHECKS]

    if own_build:
        checks.append(dead_experts_check(v, ref.routing_16bit, ref.expert_sources, "the 16-bit"))
    else:
        checks.append(dead_experts_check(v, routing_4bit, ref.expert_sources, "the candidate's"))

    report = build_report(
        checks,
        v.fail_on_mismatch,
        candidate="this build's 4-bit model" if own_build else "a folder given to `frankenmoe verify --candidate`",
        warnings=warnings,
        quantization=quantization,
        thresholds={**v.model_dump(exclude={"files"}), **limits},
        routing_report=routing_report(ref, routing_4bit),
    )
    label = "4-bit (AWQ)" if own_build else "4-bit (candidate)"
    write_report(report, out, RoutingPageInputs(name, evaluate, merged, label, router_4bit))
    return report


def routing_report(ref: Reference, routing_4bit: RoutingStats | None) -> dict:
    """What the report's perplexity and routing sections show: the reference's, and the candidate's routing."""
    return {
        "domains": sorted(set(ref.domains)),
        "experts": ref.expert_sources,
        "top_k": ref.top_k,
        "routing_16bit": ref.routing_16bit,
        "routing_16bit_hidden": ref.routing_16bit_hidden,
        "routing_4bit": routing_4bit,
        "perplexity": ref.perplexity,
    }


def write_report(report: dict, out: Path, page: RoutingPageInputs) -> None:
    """verify.json, verify.md, routing.png and routing.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "verify.json", report)
    page_bytes = write_verify_page(out / "routing.html", report, page)
    (out / "verify.md").write_text(render_markdown(report, page_bytes), encoding="utf-8")
    render_routing_png(report["routing_report"], out / "routing.png")


def write_reference_page(path: Path, title: str, v: VerifySection, evaluate: StageResult, merged: Path) -> int:
    """The routing page of the 16-bit model alone (a study or sweep variant built up to
    `evaluate`): its routing and dead experts as verify would judge them; size in bytes."""
    from transformers import AutoTokenizer

    ref = reference(evaluate)
    routing, experts = ref.routing_16bit, ref.expert_sources
    models = [RoutedModel("16-bit", reference_router(evaluate), routing)]
    dead = dead_experts_check(v, routing, experts, "the 16-bit")
    text = RoutedText.decode(AutoTokenizer.from_pretrained(merged), reference_windows(evaluate))
    return write_routing_page(path, title, experts, ref.top_k, text, models, None, dead)


@dataclass(frozen=True)
class RoutingPageInputs:
    """What the routing page needs beside verify.json: the build's name, the reference
    (its text and 16-bit routers), the merged folder (its tokenizer), and the
    candidate's routers where it was measured."""

    title: str
    evaluate: StageResult
    merged: Path
    candidate_label: str
    candidate_router: Any = None  # torch.Tensor [L, T, E], or None where the candidate did not load


def write_verify_page(path: Path, report: dict, page: RoutingPageInputs) -> int:
    """routing.html from verify.json's numbers and the router arrays they came from; its size in bytes."""
    from transformers import AutoTokenizer

    rr = report["routing_report"]
    models = [RoutedModel("16-bit", reference_router(page.evaluate), rr["routing_16bit"])]
    changes = None
    if page.candidate_router is not None:
        models.append(RoutedModel(page.candidate_label, page.candidate_router, rr["routing_4bit"]))
        parity = named(report, ROUTING_PARITY)
        changes = {k: parity.get(k) for k in ("tokens_topk_changed", "tokens_top1_changed")}
    try:
        dead = named(report, DEAD_EXPERTS)
    except KeyError:  # the w4a16 report judges parity only; the build's verify.json has the check
        dead = None
    text = RoutedText.decode(AutoTokenizer.from_pretrained(page.merged), reference_windows(page.evaluate))
    return write_routing_page(path, page.title, rr["experts"], rr["top_k"], text, models, changes, dead)
