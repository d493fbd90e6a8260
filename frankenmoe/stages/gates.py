"""gates: optionally fit the routers on training text (frankenmoe/routing/router_fit.py).

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

from dataclasses import asdict
from pathlib import Path
from typing import Any

from frankenmoe.checkpoints.loading import load_merged
from frankenmoe.checkpoints.shape import ModelShape
from frankenmoe.errors import InputFileError
from frankenmoe.recipe import CalibrationSection, Recipe
from frankenmoe.routing.router_fit import Schedule, fit_compute, fit_routers, split_heldout, write_fitted
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.merge import merged_model
from frankenmoe.support.device import require_gpu_if_asked
from frankenmoe.support.hashing import HashState
from frankenmoe.support.paths import portable
from frankenmoe.text.calibration import check_not_evaluation_text, check_text_files, source_fingerprint, token_windows


class GatesResult(Facts):
    """Only `fitted` when the routers are mergekit's; the rest describes a fit."""

    fitted: bool  # False: mergekit's routers as they are
    device: str | None = None
    compute_dtype: str | None = None
    windows: dict[str, int] = {}  # training windows per file
    heldout_windows: dict[str, int] = {}
    start: dict[str, Any] = {}  # the best_expert start (router_fit.StartResult), or {"from": "routers"}
    loss: list[float] = []  # per step, on its training batch
    heldout_loss: list[dict[str, Any]] = []  # {"step", "loss"} per check; step 0 before any Adam step
    best_step: int = 0  # whose routers were kept (0: the start's, or mergekit's)
    stopped: str | None = None
    seconds: float | None = None  # the whole fit, start included
    seconds_per_step: float | None = None  # an Adam step's (None: no step)
    expert_usage_entropy_bits: dict[str, Any] = {}
    rewritten_shards: list[str] = []


def gates_result(result: StageResult) -> GatesResult:
    return result.read(GatesResult)


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

    def run(self, ctx: StageContext) -> GatesResult:
        g = ctx.recipe.gates
        merged = merged_model(ctx.inputs["merge"])
        if not g.fit:
            write_fitted(merged, ctx.out / "model", {})  # hard links: the merge output as it is
            return GatesResult(fitted=False)

        from transformers import AutoTokenizer

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
        schedule = Schedule(g.steps, g.check_every, g.patience, g.warmup)
        fit = fit_routers(model, train, heldout, schedule, g.lr, g.batch_size, g.seed, g.balance, compute, g.start)
        rewritten = write_fitted(merged, ctx.out / "model", fit.routers)
        steps = len(fit.loss)
        start = {"from": "routers"} if fit.start is None else {"from": "best_expert", **asdict(fit.start)}
        if fit.start is not None:
            best = ", ".join(f"{portable(f)} -> expert {e}" for f, e in zip(g.files, fit.start.experts))
            ctx.log(
                f"gates     start: {best}; routers fitted to them in {fit.start.seconds:.1f}s, top-1 accuracy "
                f"{min(fit.start.accuracy):.3f}-{max(fit.start.accuracy):.3f} over the layers on the fitting windows, "
                f"{min(fit.start.heldout_accuracy):.3f}-{max(fit.start.heldout_accuracy):.3f} on the held-out ones"
            )
        adam = fit.seconds - (fit.start.seconds if fit.start else 0.0)
        ctx.log(
            f"gates     fitted {len(fit.routers)} routers in {fit.seconds:.1f}s ({compute['dtype']}"
            f"{f', {adam / steps:.2f}s a step' if steps else ''}) on {sum(map(len, train))} windows, "
            f"{sum(map(len, heldout))} held out: held-out loss {fit.heldout[0]['loss']:.4f} after the start, "
            f"{fit.heldout[-1]['loss']:.4f} after {steps} steps; kept step {fit.best_step}; {fit.stopped}"
        )
        return GatesResult(
            fitted=True,
            device=compute["device"],
            compute_dtype=compute["dtype"],
            windows={portable(f): len(w) for f, w in zip(g.files, train)},
            heldout_windows={portable(f): len(w) for f, w in zip(g.files, heldout)},
            start=start,
            loss=fit.loss,
            heldout_loss=fit.heldout,
            best_step=fit.best_step,
            stopped=fit.stopped,
            seconds=round(fit.seconds, 3),
            seconds_per_step=round(adam / steps, 3) if steps else None,
            expert_usage_entropy_bits={"hidden": fit.entropy_before, "fitted": fit.entropy_after},
            rewritten_shards=rewritten,
        )
