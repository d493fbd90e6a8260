"""quantize: AWQ 4-bit with GPTQModel, published in AutoAWQ's Mixtral GEMM layout.

Steps:
1. pick calibration windows (pipeline/calibration.py) and, on the 16-bit model,
   count the tokens the router sends to each expert: an expert that sees too few
   calibration tokens gets badly chosen scales, so that fails here, before the
   expensive part, naming layer and expert;
2. quantize with GPTQModel (AWQ, GEMM format) into a scratch folder;
3. rewrite to the published contract (pipeline/awq_layout.py): AutoAWQ tensor
   names, FP16 everywhere but the packed ints, exactly the documented
   `quantization_config`, no engine side files (they carry temporary paths and
   timings), shards of at most `quantize.shard_size`;
4. keep routing exact: AWQ divides `post_attention_layernorm` by per-channel
   scales (folding them into the experts), but the router reads that norm's
   output too and the engine leaves it alone. Multiplying the router's input
   columns by old_norm / new_norm gives the router the logits it had before.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from pipeline.awq_layout import published_name, quantization_config
from pipeline.calibration import calibration_windows, source_fingerprint
from pipeline.checkpoint import renamed_pieces, write_sharded
from pipeline.awq_engine import run_engine
from pipeline.errors import FrankenmoeError, InputFileError, RecipeError
from pipeline.hashing import HashState
from pipeline.jsonio import write_json
from pipeline.recipe import Recipe
from pipeline.routing import expert_token_counts
from pipeline.streaming import StreamingLM
from pipeline.stages.base import Stage, StageContext, StageResult

COPY_FROM_MERGED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")
NORM = re.compile(r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$")
ROUTER = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$")


class UndercalibratedExpert(InputFileError):
    """Calibration text that never reaches an expert cannot calibrate it."""


class QuantizeStage(Stage):
    name = "quantize"
    depends = ("gates",)
    packages = ("gptqmodel", "torch", "transformers", "safetensors", "tokenizers", "datasets")
    publishes = {"awq": "model"}
    diagnostics = ("engine-spec.json", "engine.log")

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return recipe.quantize.model_dump()

    def fingerprint(self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult],
                    offline: bool = False) -> dict[str, Any] | None:
        return {"calibration": source_fingerprint(recipe.quantize.calibration, state)}

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult]) -> int | None:
        return quantize_disk_bytes(sum(f["size"] for f in inputs["gates"].record["files"].values()))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch
        from transformers import AutoTokenizer

        q = ctx.recipe.quantize
        merged = ctx.inputs["gates"].path / "model"
        _check_group_size(json.loads((merged / "config.json").read_text()), q.group_size)
        tokenizer = AutoTokenizer.from_pretrained(merged)
        cal = calibration_windows(q.calibration, tokenizer)
        counts = self._check_coverage(merged, cal.windows, q.min_expert_tokens, q.allow_undercalibrated_experts)
        ctx.log(f"quantize  calibration: {len(cal.windows)} x {q.calibration.seq_len} tokens; "
                f"fewest tokens to one expert: {min(min(r) for r in counts)}")

        scratch = ctx.out / "engine"
        self._quantize(merged, scratch, cal.windows, ctx)
        old_norms = _tensors_matching(sorted(merged.glob("*.safetensors")), NORM)
        new_norms = _tensors_matching(sorted(scratch.glob("*.safetensors")), NORM)
        factors = {layer: _norm_ratio(old_norms[layer], new_norms[layer]) for layer in old_norms}

        model_dir = ctx.out / "model"
        model_dir.mkdir()
        pieces = renamed_pieces(sorted(scratch.glob("*.safetensors")), published_name)

        def to_contract(name: str, t):
            if m := ROUTER.match(name):
                t = t.float() * factors[m.group(1)].unsqueeze(0)  # router input columns x old/new
            if t.is_floating_point():
                t = t.to(torch.float16)
            return t

        shards = write_sharded(pieces, model_dir, q.shard_size, desc="quantize: writing AWQ layout", transform=to_contract)
        self._write_config(scratch, model_dir, q)
        for name in COPY_FROM_MERGED:
            if (merged / name).is_file():
                shutil.copy2(merged / name, model_dir / name)
        shutil.rmtree(scratch)
        assert_no_local_paths(model_dir, [ctx.out, Path.cwd(), Path.home()])
        scaled = sum(int((f != 1).sum()) for f in factors.values())
        ctx.log(f"quantize  {sum(1 for p in pieces if p.name.endswith('.qweight'))} linears at {q.bits} bits, "
                f"router columns compensated: {scaled}")
        return {
            "calibration": cal.source,
            "expert_tokens": counts,
            "undercalibrated": _under(counts, q.min_expert_tokens),
            "router_compensation": {layer: {"max": float(f.max()), "min": float(f.min())} for layer, f in sorted(factors.items())},
            "shards": shards,
        }

    @staticmethod
    def _check_coverage(merged: Path, windows, minimum: int, allow: bool) -> list[list[int]]:
        counts = expert_token_counts(StreamingLM(merged), windows)
        under = _under(counts, minimum)
        if under and not allow:
            layer, expert, n = under[0]
            more = f" (and {len(under) - 1} more)" if len(under) > 1 else ""
            raise UndercalibratedExpert(
                f"quantize: layer {layer} expert {expert} gets {n} calibration tokens, fewer than "
                f"min_expert_tokens {minimum}{more}; add calibration text this expert handles, "
                "or set quantize.allow_undercalibrated_experts: true"
            )
        return counts

    @staticmethod
    def _quantize(merged: Path, scratch: Path, windows, ctx: StageContext) -> None:
        q = ctx.recipe.quantize
        windows_file = ctx.out / "calibration-windows.json"
        windows_file.write_text(json.dumps(windows))
        spec = {  # absolute paths: the engine runs in its own working folder
            "model": str(merged.resolve()), "out": str(scratch.resolve()), "windows": str(windows_file.resolve()),
            "bits": q.bits, "group_size": q.group_size, "zero_point": q.zero_point,
            "seed": q.calibration.seed, "trust_remote_code": ctx.recipe.trust_remote_code,
        }
        run_engine(spec, ctx.out / "engine-spec.json", ctx.out / "engine.log")

    @staticmethod
    def _write_config(scratch: Path, model_dir: Path, q) -> None:
        config = json.loads((scratch / "config.json").read_text())
        config["quantization_config"] = quantization_config(q.bits, q.group_size, q.zero_point)
        config["dtype"] = "float16"
        config.pop("torch_dtype", None)
        write_json(model_dir / "config.json", config)


def quantize_disk_bytes(merged_bytes: int) -> int:
    """Engine scratch and published copy, about 0.3x of the 16-bit model each at 4 bits."""
    return int(0.7 * merged_bytes)


def _check_group_size(config: dict, group_size: int) -> None:
    """AWQ groups run along each linear's input dimension, so they must divide it."""
    for key in ("hidden_size", "intermediate_size"):
        if config[key] % group_size:
            raise RecipeError([f"quantize.group_size: {group_size} does not divide the model's {key} ({config[key]}); use 32, 64 or 128 that does"])


def _under(counts: list[list[int]], minimum: int) -> list[tuple[int, int, int]]:
    return [(layer, e, n) for layer, row in enumerate(counts) for e, n in enumerate(row) if n < minimum]


def _tensors_matching(files: list[Path], pattern: re.Pattern) -> dict:
    from safetensors import safe_open

    out = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if m := pattern.match(name):
                    out[m.group(1)] = f.get_tensor(name).float()
    return out


def _norm_ratio(old, new):
    """old / new per channel; 1 where the norm weight is 0 (the router sees 0 there anyway)."""
    import torch

    return torch.where(new != 0, old / torch.where(new != 0, new, torch.ones_like(new)), torch.ones_like(new))


def assert_no_local_paths(folder: Path, roots: list[Path]) -> None:
    """Refuse to publish text files that mention local folders or this host."""
    needles = {str(r.resolve()) for r in roots if str(r.resolve()) not in ("/", "")} | {"/tmp/", socket.gethostname()}
    for f in sorted(folder.iterdir()):
        # tokenizer.json is the sources' own vocabulary, copied unchanged; any short
        # host name could occur in it by chance.
        if f.suffix in (".json", ".jinja", ".txt", ".md") and f.name != "tokenizer.json":
            text = f.read_text(encoding="utf-8", errors="replace")
            for needle in needles:
                if needle and needle in text:
                    raise FrankenmoeError(f"quantize: {f.name} would publish a local path or host name ({needle!r}); this is a bug")
