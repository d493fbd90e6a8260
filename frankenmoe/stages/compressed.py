"""w4a16: the 4-bit model as compressed-tensors, the format transformers and vLLM read.

Made from the quantize stage's AutoAWQ folder by compressed-tensors' own converter
(`convert_checkpoint` with `AutoAWQConverter`: W4A16, pack-quantized), not by a packer
of ours, so the bytes are what the library writes. Then verified through the reader
users run: transformers' `AutoModelForCausalLM.from_pretrained` must load it with no
missing, unexpected or mismatched key, and that model is measured against the 16-bit
reference on verify's windows with verify's limits. Its report (verify.json,
verify.md, routing.png) names the reader and its version. Published as dist/<name>/w4a16/.

transformers reads only symmetric experts (with zero points it stops on "Asymmetric
quant requires zero-point values"; frankenmoe/quantization/readers.py), so the stage
runs only where `quantize.zero_point` is false.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, Iterator

from frankenmoe.checkpoints.loading import LoadedLM, load_merged
from frankenmoe.errors import InputFileError, VerifyFailed
from frankenmoe.measure.checks import PARITY_CHECKS, parity_checks
from frankenmoe.measure.evaluation import routing_stats
from frankenmoe.measure.quality_limits import quality_limits
from frankenmoe.measure.routing_page import template_sha256
from frankenmoe.measure.verdict import NOT_MEASURED, build_report, check, judged, log_lines
from frankenmoe.quantization import readers
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.evaluate import reference
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.quantize import quantized_model
from frankenmoe.stages.verify import RoutingPageInputs, compare_with_reference, routing_report, write_report
from frankenmoe.support.progress import bars_enabled
from frankenmoe.support.versions import tool_versions

FOLDER = "w4a16"


class CompressedResult(Facts):
    failures: list[str]  # one line per failed check
    enforced: bool  # verify.fail_on_mismatch: a failure stops the build
    reader: str  # the reader verify loaded the folder with, and its version
    converter: str  # the package whose converter wrote it, and its version


def compressed_result(result: StageResult) -> CompressedResult:
    return result.read(CompressedResult)


def compressed_dir(result: StageResult) -> Path:
    return result.path / FOLDER


class CompressedStage(Stage):
    name = "w4a16"
    # 2: the record names the converter and its version; 3: routing.html; 4: routing parity
    # reports the share of routed weight kept on the same experts
    version = 4
    depends = ("gates", "quantize", "evaluate")
    packages = ("compressed-tensors", "transformers", "torch", "safetensors")
    publishes = {FOLDER: FOLDER}
    diagnostics = ("logs/",)

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.quantize.compressed_tensors and readers.transformers_reads(recipe.quantize.zero_point)

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {
            **recipe.verify.model_dump(exclude={"files", "max_tokens", "seq_len"}),
            "routing_page": template_sha256(),
        }

    def run(self, ctx: StageContext) -> CompressedResult:
        out = ctx.out / FOLDER
        (ctx.out / "logs").mkdir()
        log_file = ctx.out / "logs" / "w4a16.log"
        with libraries_output(log_file):
            convert(quantized_model(ctx.inputs["quantize"]), out)
        converter = f"compressed-tensors {tool_versions(['compressed-tensors'])['compressed-tensors']}"
        ctx.log(f"w4a16     converted by {converter}")
        merged = routed_model(ctx.inputs["gates"])
        report = verify_through_transformers(ctx.recipe, ctx.inputs["evaluate"], merged, out, log_file)
        for line in log_lines(report, "w4a16"):
            ctx.log(line)
        return CompressedResult(
            failures=report["failures"],
            enforced=report["enforced"],
            reader=readers.transformers_name(),
            converter=converter,
        )

    def blocking_error(self, result: StageResult) -> VerifyFailed | None:
        r = compressed_result(result)
        hint = f"see dist/<name>/{FOLDER}/verify.md, or set verify.fail_on_mismatch: false to continue anyway"
        return VerifyFailed(r.failures, hint=hint) if r.failures and r.enforced else None


@contextmanager
def libraries_output(log_file: Path) -> Iterator[None]:
    """On a terminal, nothing changes; otherwise what libraries write to stderr goes to
    `log_file` (compressed-tensors draws its own bars whatever TQDM_DISABLE says)."""
    if bars_enabled():
        yield
        return
    with open(log_file, "a", encoding="utf-8") as f, redirect_stderr(f):
        yield


def convert(awq: Path, out: Path) -> None:
    """compressed-tensors' converter over the AutoAWQ folder, on the CPU, one file at a time."""
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    convert_checkpoint(awq, out, AutoAWQConverter.from_pretrained(str(awq)), max_workers=1, device="cpu")


def first_forward(model) -> None:
    """compressed-tensors dispatches the model, drawing its own bar, at the first
    forward pass: one token through it here keeps that bar in the stage's log."""
    import torch

    with torch.no_grad():
        model(input_ids=torch.tensor([[0]]))


def verify_through_transformers(
    recipe: Recipe, evaluate: StageResult, merged: Path, folder: Path, log_file: Path
) -> dict:
    """Load `folder` with transformers (strict), measure it against the 16-bit
    reference, write verify.json and verify.md into it; the report."""
    v = recipe.verify
    ref = reference(evaluate)
    limits = quality_limits(v, json.loads((merged / "config.json").read_text()))
    reader = readers.transformers_name()
    try:
        with libraries_output(log_file):
            model = load_merged(folder)
            first_forward(model)
        problems = []
    except InputFileError as e:
        problems = [str(e)]
    checks = [
        judged(
            "consumer_load",
            not problems,
            f"with {reader} AutoModelForCausalLM.from_pretrained: no missing, unexpected or mismatched key"
            if not problems
            else "; ".join(problems),
            problems=problems,
            loader=f"{reader} AutoModelForCausalLM.from_pretrained",
        )
    ]
    routing = router = None
    if not problems:
        cmp = compare_with_reference(evaluate, LoadedLM(model))
        checks += parity_checks(v, limits, cmp, ref)
        router = cmp["router_4bit"]
        routing = routing_stats(router, ref.domains, ref.seq_len, ref.top_k)
    else:
        checks += [check(name, NOT_MEASURED, "not measured: the folder does not load") for name in PARITY_CHECKS]
    report = build_report(
        checks,
        v.fail_on_mismatch,
        candidate=f"this build's 4-bit model as compressed-tensors, read by {reader}",
        warnings=[],
        quantization=None,
        thresholds={**v.model_dump(exclude={"files"}), **limits},
        routing_report=routing_report(ref, routing),
    )
    write_report(report, folder, RoutingPageInputs(recipe.name, evaluate, merged, "4-bit (compressed-tensors)", router))
    return report
