"""gates: optionally fit the routers on training text (pipeline/moe/router_fit.py).

With `gates.fit: false` (the default, so a plain mergekit recipe gives what
mergekit gives) the output is the merged model itself, hard-linked. With
`gates.fit: true` only `block_sparse_moe.gate.weight` of each layer is trained,
on `gates.files` (never the evaluation text), and written back in the same
layout; every other tensor stays byte-identical, so `quantize`, `verify`, `card`
and `push` work unchanged. The record keeps the loss curve and the expert-usage
entropy per layer before and after.

Output: `model/`, the 16-bit MoE that the later stages use and that is published
as dist/<name>/merged/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict, cast

from pipeline.checkpoints.shape import ModelShape
from pipeline.errors import InputFileError
from pipeline.moe.calibration import check_not_evaluation_text, check_text_files, source_fingerprint, token_windows
from pipeline.recipe import CalibrationSection, Recipe
from pipeline.stages.base import Stage, StageContext, StageResult
from pipeline.stages.merge import merged_model
from pipeline.support.device import require_gpu_if_asked
from pipeline.support.hashing import HashState
from pipeline.support.paths import portable


class GatesResult(TypedDict, total=False):
    fitted: bool  # False: mergekit's routers as they are
    device: str
    compute_dtype: str
    windows: dict[str, int]  # training windows per file
    heldout_windows: dict[str, int]
    loss: list[float]  # per step, on its training batch
    heldout_loss: list[dict]  # {"step", "loss"} per check; step 0 before fitting
    best_step: int  # whose routers were kept (0: mergekit's)
    stopped: str
    seconds_per_step: float
    expert_usage_entropy_bits: dict[str, Any]
    rewritten_shards: list[str]


def gates_result(result: StageResult) -> GatesResult:
    return cast(GatesResult, result.result)


def routed_model(result: StageResult) -> Path:
    """The MoE folder with the routers the build uses (fitted or mergekit's)."""
    return result.path / "model"


class GatesStage(Stage):
    name = "gates"
    depends = ("merge",)
    packages = ("torch", "transformers", "safetensors", "tokenizers")
    publishes = {"merged": "model"}

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return recipe.gates.model_dump() if recipe.gates.fit else {"fit": False}

    def preflight(self, recipe: Recipe) -> None:
        if recipe.gates.fit:
            check_text_files(recipe, "gates.files", recipe.gates.files)
            check_not_evaluation_text(
                recipe, "gates.files", recipe.gates.files, "fitting on it would make verify's numbers meaningless"
            )
            require_gpu_if_asked(recipe.gates.device, "gates.device")

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        if not recipe.gates.fit:
            return {}
        from pipeline.moe.router_fit import fit_compute

        return {
            "text": source_fingerprint(CalibrationSection(files=recipe.gates.files), state, recipe.root, "gates.files"),
            # Where and in which dtype the fit computes shapes the fitted bytes.
            "compute": fit_compute(recipe.gates.device, recipe.gates.dtype),
        }

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult], base_config: dict | None) -> int | None:
        if not recipe.gates.fit:
            return None
        if "merge" in inputs:
            return sum(f["size"] for f in inputs["merge"].files.values())
        return None if base_config is None else ModelShape.of(base_config).bytes(len(recipe.experts), recipe.dtype)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from pipeline.moe.router_fit import write_fitted

        g = ctx.recipe.gates
        merged = merged_model(ctx.inputs["merge"])
        if not g.fit:
            write_fitted(merged, ctx.out / "model", {})  # hard links: the merge output as it is
            return {"fitted": False}

        from transformers import AutoTokenizer

        from pipeline.checkpoints.loading import load_merged
        from pipeline.moe.router_fit import Schedule, fit_compute, fit_routers, split_heldout

        compute = fit_compute(g.device, g.dtype)  # as in the key
        tokenizer = AutoTokenizer.from_pretrained(merged)
        groups = [token_windows([ctx.recipe.path(f)], tokenizer, g.seq_len, f"gates.files: {f}") for f in g.files]
        try:
            train, heldout = split_heldout(groups, g.holdout)
        except ValueError as e:
            f = g.files[e.args[0]]
            raise InputFileError(
                f"gates.files: {f}: {len(groups[e.args[0]])} window(s) of gates.seq_len ({g.seq_len}) tokens; the fit "
                "holds some out to know when to stop, so each file needs at least 2: add text or lower gates.seq_len"
            ) from None
        model = load_merged(merged, dtype=compute["dtype"])  # as it computes: bfloat16 is half the memory
        schedule = Schedule(g.steps, g.check_every, g.patience)
        fit = fit_routers(model, train, heldout, schedule, g.lr, g.batch_size, g.seed, g.balance, compute)
        rewritten = write_fitted(merged, ctx.out / "model", fit.routers)
        steps = len(fit.loss)
        ctx.log(
            f"gates     fitted {len(fit.routers)} routers in {fit.seconds:.1f}s ({compute['dtype']}, "
            f"{fit.seconds / steps:.2f}s a step) on {sum(map(len, train))} windows, {sum(map(len, heldout))} held out: "
            f"held-out loss {fit.heldout[0]['loss']:.4f} at the start, {fit.heldout[-1]['loss']:.4f} after {steps} "
            f"steps; kept step {fit.best_step}; {fit.stopped}"
        )
        return {
            "fitted": True,
            "device": compute["device"],
            "compute_dtype": compute["dtype"],
            "windows": {portable(f): len(w) for f, w in zip(g.files, train)},
            "heldout_windows": {portable(f): len(w) for f, w in zip(g.files, heldout)},
            "loss": fit.loss,
            "heldout_loss": fit.heldout,
            "best_step": fit.best_step,
            "stopped": fit.stopped,
            "seconds_per_step": round(fit.seconds / steps, 3),
            "expert_usage_entropy_bits": {"hidden": fit.entropy_before, "fitted": fit.entropy_after},
            "rewritten_shards": rewritten,
        }
