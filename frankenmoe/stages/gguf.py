"""gguf: GGUF files of the merged MoE, made and checked by llama.cpp itself.

llama.cpp's converter turns the `gates` model into a 16-bit GGUF; llama.cpp's
quantizer makes each type of `gguf.types` from it (frankenmoe/quantization/llama_cpp.py).
Each file is then loaded by llama.cpp, which computes its logits on the held-out
windows of `evaluate`; they are compared with the 16-bit reference there (mean and
p99 KL, top-1 agreement, perplexity ratio, each per domain), and llama.cpp's own
reading of the expert count and experts per token is compared with the merge's.

Output, published as dist/<name>/gguf/: `<name>-<TYPE>.gguf` per type,
`verify.json` and `verify.md` (the `card` stage adds its README.md). The
converter's and quantizer's logs stay in the cache (`logs/`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from frankenmoe.checkpoints.sources import locate
from frankenmoe.errors import IncompatibleModelsError, VerifyFailed
from frankenmoe.measure.quality_limits import gguf_limits
from frankenmoe.measure.verdict import FAIL, NOT_MEASURED, PASS, build_report, check, judged, log_lines, markdown_table
from frankenmoe.quantization.llama_cpp import (
    BUILD_FLAGS,
    FTYPES,
    LLAMA_CPP_COMMIT,
    SDIST_SHA256,
    VERSION,
    convert,
    converter_refusal,
    parity,
    quantize,
    require_converter,
)
from frankenmoe.recipe import GgufSection, Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.evaluate import reference_dir
from frankenmoe.stages.gates import routed_model
from frankenmoe.support.determinism import THREADS
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json

ARCHITECTURE = "MixtralForCausalLM"  # what the merge writes (stages/merge.py)


FTYPE_NAMES = {code: name for name, code in FTYPES.items()}


class GgufResult(Facts):
    wall_s: dict[str, float]  # convert, quantize, check (llama.cpp's logits)
    files: dict[str, str]  # type -> file name
    passed: bool  # the verdict is "passed" (frankenmoe/measure/verdict.py)
    verdict: str
    failures: list[str]
    enforced: bool


def gguf_result(result: StageResult) -> GgufResult:
    return result.read(GgufResult)


def gguf_dir(result: StageResult) -> Path:
    """The folder of the GGUF files (gguf_result's `files` are named in it)."""
    return result.path / "gguf"


def gguf_report(result: StageResult) -> dict:
    """The stage's verify.json: the checks of every file."""
    return json.loads((gguf_dir(result) / "verify.json").read_text())


class GgufStage(Stage):
    name = "gguf"
    # 2: five check states; the card moved to `card`. 3: expert placement judged by the
    # share of the experts' difference each slice keeps
    version = 3
    depends = ("gates", "evaluate")
    packages = ("llama-cpp-python", "torch", "transformers", "tokenizers")
    publishes = {"gguf": "gguf"}
    diagnostics = ("logs/",)

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.gguf.enabled

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {"gguf": recipe.gguf.model_dump()}

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        # What makes the GGUF bytes and llama.cpp's numbers: the sdist (its vendored
        # llama.cpp commit) and the flags it was built with.
        return {
            "llama.cpp": {
                "llama_cpp_python": VERSION,
                "sdist_sha256": SDIST_SHA256,
                "commit": LLAMA_CPP_COMMIT,
                "build_flags": BUILD_FLAGS,
            }
        }

    def preflight(self, recipe: Recipe) -> None:
        """llama.cpp's converter must take the model: its architecture and its
        tokenizer's pre-tokenizer (from the base, whose tokenizer the merge keeps)."""
        require_converter()
        base = locate("base", recipe.base_model, recipe.root, download=False)
        if base is None or not (base.path / "config.json").is_file():
            return  # a Hub base not downloaded yet: checked again when the stage runs
        why = converter_refusal(base.path, ARCHITECTURE)
        if why:
            raise IncompatibleModelsError(f"gguf: {why}; set gguf.enabled: false to build without GGUF files")

    def run(self, ctx: StageContext) -> GgufResult:
        recipe, g = ctx.recipe, ctx.recipe.gguf
        merged = routed_model(ctx.inputs["gates"])
        why = converter_refusal(merged, ARCHITECTURE)
        if why:
            raise IncompatibleModelsError(f"gguf: {why}; set gguf.enabled: false to build without GGUF files")
        out, logs, scratch = ctx.out / "gguf", ctx.out / "logs", ctx.out / "scratch"
        for d in (out, logs, scratch):
            d.mkdir()
        cfg = json.loads((merged / "config.json").read_text())
        outtype = "bf16" if cfg.get("torch_dtype", cfg.get("dtype")) == "bfloat16" else "f16"
        full = scratch / f"{recipe.name}-{outtype.upper()}.gguf"
        t0 = time.monotonic()
        convert(merged, full, logs / "convert.log", outtype, recipe.name)
        t1 = time.monotonic()
        files = {}
        for t in g.types:
            files[t] = f"{recipe.name}-{t}.gguf"
            quantize(full, out / files[t], t, THREADS, logs / f"quantize-{t}.log")
            ctx.log(f"gguf      {files[t]}: {(out / files[t]).stat().st_size / 1e6:.1f} MB")
        shutil.rmtree(scratch)
        t2 = time.monotonic()
        paths = {t: out / f for t, f in files.items()}
        report = check_files(g, ctx.inputs["evaluate"], merged, paths, out, logs, ctx.log)
        seconds = {"convert": t1 - t0, "quantize": t2 - t1, "check": time.monotonic() - t2}
        return GgufResult(
            # "wall_s" (the moment, not the result) is left out of build.json
            wall_s={k: round(v, 1) for k, v in seconds.items()},
            files=files,
            passed=report["passed"],
            verdict=report["verdict"],
            failures=report["failures"],
            enforced=g.fail_on_mismatch,
        )

    def blocking_error(self, result: StageResult) -> VerifyFailed | None:
        r = gguf_result(result)
        if not (r.failures and r.enforced):
            return None
        return VerifyFailed(
            r.failures,
            hint="the build stopped before publishing further; see dist/<name>/gguf/verify.md, or set "
            "gguf.fail_on_mismatch: false to continue anyway (recorded in its verify.json)",
        )


def check_files(
    g: GgufSection,
    evaluate: StageResult,
    merged: Path,
    files: dict[str | None, Path],
    out: Path,
    logs: Path,
    log=print,
) -> dict:
    """llama.cpp's logits of each file against the 16-bit reference, and its reading
    of the MoE's shape; verify.json and verify.md in `out`. `files`: {type or None: path}
    (None: someone else's file, whose type llama.cpp reads from it)."""
    logs.mkdir(parents=True, exist_ok=True)
    config = json.loads((merged / "config.json").read_text())
    checks: list[dict] = []
    per_type = {}
    want = {"expert_count": config["num_local_experts"], "expert_used_count": config["num_experts_per_tok"]}
    for t, path in files.items():
        measured = parity(path, reference_dir(evaluate), merged, THREADS, logs / f"parity-{path.stem}.log")
        facts, cmp, experts = measured["metadata"], measured["parity"], measured["experts"]
        t = t or FTYPE_NAMES.get(facts["file_type"], "Q4_K_M")  # someone else's file: by what it says
        limits = gguf_limits(g, t, config)
        shape = {k: facts[k] for k in want}
        checks.append(
            judged(
                f"{t}: expert count",
                shape == want,
                f"llama.cpp reads {shape['expert_count']} experts, {shape['expert_used_count']} per token"
                + ("" if shape == want else f" (the merge has {want['expert_count']}, {want['expert_used_count']})"),
                **shape,
            )
        )
        checks.append(_placement_check(t, experts))
        checks.append(
            judged(
                parity_name(t),
                cmp["kl_mean"] <= limits["max_mean_kl"]
                and cmp["top1_agreement"] >= limits["min_top1_agreement"]
                and cmp["perplexity_ratio"] <= limits["max_ppl_ratio"],
                f"mean KL {cmp['kl_mean']:.4f} (max {limits['max_mean_kl']}), p99 KL {cmp['kl_p99']:.4f}, "
                f"top-1 {cmp['top1_agreement']:.1%} (min {limits['min_top1_agreement']:.0%}), perplexity "
                f"x{cmp['perplexity_ratio']:.3f} (max x{limits['max_ppl_ratio']})",
                quality=True,
                **cmp,
            )
        )
        per_type[t] = {"file": path.name, "bytes": path.stat().st_size, "limits": limits, "read_by_llama_cpp": facts}
    report = build_report(
        checks,
        g.fail_on_mismatch,
        files=per_type,
        reference="the 16-bit model's log-probs on the held-out windows of `evaluate` (transformers, float32)",
    )
    for line in log_lines(report, "gguf"):
        log(line)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "verify.json", report)
    (out / "verify.md").write_text(render(report), encoding="utf-8")
    return report


def parity_name(t: str) -> str:
    """The name of a GGUF type's parity check in verify.json (the card and bench read it)."""
    return f"{t}: parity"


def _placement_check(t: str, experts: dict) -> dict:
    """Each expert slice in the file is the merge's expert of that index
    (llama_cpp.expert_identity); where the quantization error hides the difference
    between two experts, that is not measured, never passed."""
    if experts["expert_tensors"] == 0:
        return check(f"{t}: expert placement", FAIL, "no expert tensors found in the file", **experts)
    if experts["misplaced"]:
        return check(
            f"{t}: expert placement",
            FAIL,
            f"{len(experts['misplaced'])} expert tensors are not where the merge has them: "
            + "; ".join(experts["misplaced"][:3]),
            **experts,
        )
    if experts["indistinguishable"]:
        return check(
            f"{t}: expert placement",
            NOT_MEASURED,
            f"not measured: {experts['indistinguishable']} of {experts['expert_tensors']} expert slices keep less "
            f"than {experts['min_kept_needed']:.0%} of the merge's difference between experts at this type "
            f"(lowest {experts['min_kept']:.2f}), so a swapped expert could not be told apart there; the other "
            f"{experts['expert_tensors'] - experts['indistinguishable']} are their own expert",
            **experts,
        )
    return check(
        f"{t}: expert placement",
        PASS,
        f"each of {experts['expert_tensors']} expert slices is its own expert of the merge, keeping at least "
        f"{experts['min_kept']:.0%} of the experts' difference (relative error at most "
        f"{experts['max_relative_error']:.3f})",
        quality=True,
        **experts,
    )


def render(report: dict) -> str:
    lines = markdown_table(report, "GGUF verification by llama.cpp", "gguf.fail_on_mismatch")
    parity = [c for c in report["checks"] if c["name"].endswith(": parity") and "per_domain" in c]
    domains = sorted(parity[0]["per_domain"]) if parity else []
    if domains:
        lines += ["", "Per domain (mean KL / top-1 / perplexity ratio):", ""]
        lines += ["| type | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
        for c in parity:
            cells = [
                f"{d['kl_mean']:.4f} / {d['top1_agreement']:.1%} / x{d['perplexity_ratio']:.3f}"
                for d in (c["per_domain"][k] for k in domains)
            ]
            lines.append(f"| {c['name'].split(':')[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
