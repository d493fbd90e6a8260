"""baseline: the base model and each expert on the held-out evaluation text.

What a MoE is measured against does not depend on how it is routed, so this stage
depends on the sources alone: every build of a recipe whose sources and evaluation
settings are unchanged shares it, whatever its gate mode or fitted routers (the
routing study builds one MoE per mode and computes this once). Each model is
streamed one layer at a time (frankenmoe/checkpoints/streaming.py).

Output: baseline.json, the per-domain perplexity of `base` and of `expert i`, and
the sha256 of the evaluation token ids, which `evaluate` checks against its own.
"""

from __future__ import annotations

from typing import Any

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.errors import InputFileError
from frankenmoe.measure.documents import Baseline
from frankenmoe.measure.evaluation import eval_windows, lm_perplexity
from frankenmoe.recipe import CalibrationSection, Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.resolve import model_paths
from frankenmoe.support.determinism import seed_everything
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.text.calibration import check_text_files, source_fingerprint


def baseline(result: StageResult) -> Baseline:
    return Baseline.read(result.path / "baseline.json")


class HeldOutResult(Facts):
    windows: int  # held-out windows measured


def windows_sha256(windows: list[tuple[str, list[int]]]) -> str:
    return sha256_json([[d, ids] for d, ids in windows])


class HeldOutTextStage(Stage):
    """A stage that reads the held-out evaluation text (`verify.files`, cut into
    `verify.seq_len` windows up to `verify.max_tokens`): its settings and content
    are in the key."""

    def config(self, recipe: Recipe) -> dict[str, Any]:
        v = recipe.verify
        return {"files": v.files, "max_tokens": v.max_tokens, "seq_len": v.seq_len}

    def preflight(self, recipe: Recipe) -> None:
        check_text_files(recipe, "verify.files", recipe.verify.files)

    @staticmethod
    def windows(recipe: Recipe, tokenizer) -> list[tuple[str, list[int]]]:
        """The held-out windows; none at all is the recipe's problem, said in one line."""
        v = recipe.verify
        windows = eval_windows([recipe.path(f) for f in v.files], tokenizer, v.seq_len, v.max_tokens)
        if not windows:
            raise InputFileError(
                f"verify.files: no evaluation window of {v.seq_len + 1} tokens in {', '.join(v.files)}; "
                "give more text or a smaller verify.seq_len"
            )
        return windows

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        return {
            "eval": source_fingerprint(
                CalibrationSection(files=recipe.verify.files), state, recipe.root, "verify.files"
            )
        }


class BaselineStage(HeldOutTextStage):
    name = "baseline"
    version = 3  # 2: log-probs computed one window at a time; 3: experts keyed experts[i], the recipe's name
    depends = ("resolve",)
    packages = ("torch", "transformers", "safetensors", "tokenizers")

    def run(self, ctx: StageContext) -> HeldOutResult:
        from transformers import AutoTokenizer

        seed_everything(0)
        paths = model_paths(ctx.inputs["resolve"])
        # mergekit copies the base's tokenizer into the MoE: these are evaluate's windows.
        tokenizer = AutoTokenizer.from_pretrained(paths["base"])
        windows = self.windows(ctx.recipe, tokenizer)
        ppl = {"base": lm_perplexity(StreamingLM(paths["base"]), windows, desc="baseline: base model")}
        for i in range(len(ctx.recipe.experts)):
            expert = StreamingLM(paths[f"experts[{i}]"])
            ppl[f"experts[{i}]"] = lm_perplexity(expert, windows, desc=f"baseline: expert {i}")
        Baseline(windows_sha256=windows_sha256(windows), perplexity=ppl).write(ctx.out / "baseline.json")
        ctx.log(f"baseline  base and {len(ctx.recipe.experts)} experts on {len(windows)} windows")
        return HeldOutResult(windows=len(windows))
