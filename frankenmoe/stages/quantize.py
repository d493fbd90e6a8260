"""quantize: AWQ 4-bit with GPTQModel, published in AutoAWQ's Mixtral GEMM layout.

Steps:
1. pick calibration windows (frankenmoe/text/calibration.py); with routed calibration
   (`calibrate_all_experts: false`) count, on the 16-bit model, the tokens the
   router sends to each expert: an expert that sees too few calibration tokens gets
   badly chosen scales, so that fails here, before the expensive part, naming
   layer and expert;
2. quantize with GPTQModel (AWQ, GEMM format) into a scratch folder, counting
   inside the engine the tokens each expert's input received and its AWQ
   statistics kept (the record's `expert_tokens_seen`, `expert_tokens_in_statistics`);
3. rewrite to the published contract (frankenmoe/quantization/awq_layout.py): AutoAWQ tensor
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

from frankenmoe.checkpoints.shape import ModelShape
from frankenmoe.checkpoints.sources import locate, read_config
from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.checkpoints.writing import renamed_pieces, write_sharded
from frankenmoe.errors import UndercalibratedExpert
from frankenmoe.quantization.awq_engine import compute_path, run_engine
from frankenmoe.quantization.awq_layout import choose_group_size, published_name, quantization_config
from frankenmoe.recipe import Recipe
from frankenmoe.routing.routing import expert_token_counts
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.gates import routed_model
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json
from frankenmoe.text.calibration import (
    calibration_windows,
    check_not_evaluation_text,
    check_text_files,
    source_fingerprint,
)

COPY_FROM_MERGED = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)
NORM = re.compile(r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$")
ROUTER = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$")


class QuantizeResult(Facts):
    calibration: dict[str, Any]  # source, windows, sha256 of the token windows
    group_size: int
    calibrate_all_experts: bool
    compute_dtype: str
    expert_tokens: list[list[int]] | None  # routed to each expert, per layer (routed calibration only)
    expert_tokens_seen: list[list[int]] | None  # reached each expert's input in the engine, per layer
    expert_tokens_in_statistics: list[list[int]] | None  # of those, kept in its AWQ statistics
    shards: list[str]
    undercalibrated: list[tuple[int, int, int]]  # (layer, expert, routed tokens) under quantize.min_expert_tokens
    router_compensation: dict[str, dict[str, float]]  # layer -> max and min of the router's column factors


def quantize_result(result: StageResult) -> QuantizeResult:
    return result.read(QuantizeResult)


def quantized_model(result: StageResult) -> Path:
    """The published AWQ folder."""
    return result.path / "model"


class QuantizeStage(Stage):
    name = "quantize"
    version = 2  # expert tokens counted inside the engine; no routing pass with all-experts calibration
    depends = ("gates",)
    packages = ("gptqmodel", "torch", "transformers", "safetensors", "tokenizers", "datasets")
    publishes = {"awq": "model"}
    diagnostics = ("engine-spec.json", "engine.log")

    def config(self, recipe: Recipe) -> dict[str, Any]:
        q = recipe.quantize
        # With all-experts calibration the routed-token floor decides nothing: no byte depends on it.
        # Whether a compressed-tensors copy is published is the w4a16 stage's business.
        routed_only = {"min_expert_tokens", "allow_undercalibrated_experts"}
        return q.model_dump(exclude={"compressed_tensors"} | (routed_only if q.calibrate_all_experts else set()))

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        # Where and in which dtype AWQ computes shapes the bytes: a CPU build and a
        # GPU build never share a cache entry.
        calibration = source_fingerprint(recipe.quantize.calibration, state, recipe.root, offline=offline)
        if calibration is None:  # a dataset whose commit is not known offline
            return None
        return {"calibration": calibration, "compute": compute_path()}

    def preflight(self, recipe: Recipe) -> None:
        """Text files readable, and a group size that fits the base model's config
        (when the base is on disk already), before any stage runs."""
        check_text_files(
            recipe,
            "quantize.calibration.files",
            [] if recipe.quantize.calibration.dataset else recipe.quantize.calibration.files,
        )
        if not recipe.quantize.calibration.dataset:
            check_not_evaluation_text(
                recipe,
                "quantize.calibration.files",
                recipe.quantize.calibration.files,
                "calibrating on it would flatter verify's numbers; use other text (the shipped `calibration` split)",
            )
        base = locate("base", recipe.base_model, recipe.root, download=False)
        if base is not None and (base.path / "config.json").is_file():
            choose_group_size(read_config(base), recipe.quantize.group_size)

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult], base_config: dict | None) -> int | None:
        if "gates" in inputs:
            return quantize_disk_bytes(sum(f["size"] for f in inputs["gates"].files.values()))
        if base_config is None:
            return None
        return quantize_disk_bytes(ModelShape.of(base_config).bytes(len(recipe.experts), recipe.dtype))

    def run(self, ctx: StageContext) -> QuantizeResult:
        import torch
        from transformers import AutoTokenizer

        q = ctx.recipe.quantize
        dtype = compute_path()["dtype"]  # the fingerprint's path (in the key), asked once
        merged = routed_model(ctx.inputs["gates"])
        group_size = choose_group_size(json.loads((merged / "config.json").read_text()), q.group_size)
        tokenizer = AutoTokenizer.from_pretrained(merged)
        cal = calibration_windows(q.calibration, tokenizer, ctx.recipe.root)
        total = len(cal.windows) * q.calibration.seq_len
        # Routed calibration must know before the engine starts that every expert gets
        # enough tokens; with all-experts calibration every expert gets all of them,
        # and what the engine actually collected is counted inside it instead.
        counts = None if q.calibrate_all_experts else self._check_coverage(merged, cal.windows, q, ctx.log)
        seen = (
            f"every expert's input gets all {total} tokens"
            if counts is None
            else f"fewest routed tokens to one expert: {min(min(r) for r in counts)}"
        )
        ctx.log(
            f"quantize  calibration: {len(cal.windows)} x {q.calibration.seq_len} tokens, group size {group_size}; "
            f"{seen}"
        )

        scratch = ctx.out / "engine"
        measured = self._quantize(merged, scratch, cal.windows, group_size, dtype, ctx)
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

        shards = write_sharded(
            pieces, model_dir, q.shard_size, desc="quantize: writing AWQ layout", transform=to_contract
        )
        self._write_config(scratch, model_dir, q, group_size)
        for name in COPY_FROM_MERGED:
            if (merged / name).is_file():
                shutil.copy2(merged / name, model_dir / name)
        shutil.rmtree(scratch)
        assert_no_local_paths(model_dir, [ctx.out, Path.cwd(), Path.home()])
        scaled = sum(int((f != 1).sum()) for f in factors.values())
        ctx.log(
            f"quantize  {sum(1 for p in pieces if p.name.endswith('.qweight'))} linears at {q.bits} bits, "
            f"router columns compensated: {scaled}"
        )
        return QuantizeResult(
            calibration=cal.source,
            group_size=group_size,
            calibrate_all_experts=q.calibrate_all_experts,
            compute_dtype=dtype,
            # Per layer and expert: the tokens the 16-bit router sends there (routed
            # calibration only), and, counted inside the engine, the tokens that reached
            # the expert's input and those its AWQ statistics kept.
            expert_tokens=counts,
            expert_tokens_seen=measured["seen"],
            expert_tokens_in_statistics=measured["retained"],
            undercalibrated=[] if counts is None else _under(counts, q.min_expert_tokens),
            router_compensation={
                layer: {"max": float(f.max()), "min": float(f.min())} for layer, f in sorted(factors.items())
            },
            shards=shards,
        )

    @staticmethod
    def _check_coverage(merged: Path, windows, q, log) -> list[list[int]]:
        """Routed tokens per layer and expert. Without all-experts calibration an
        expert's AWQ statistics come only from the tokens routed to it."""
        log(f"quantize  counting routed calibration tokens per expert on the 16-bit model ({len(windows)} windows)")
        counts = expert_token_counts(StreamingLM(merged), windows)
        under = _under(counts, q.min_expert_tokens)
        if under and not q.calibrate_all_experts and not q.allow_undercalibrated_experts:
            layer, expert, n = under[0]
            more = f" (and {len(under) - 1} more)" if len(under) > 1 else ""
            raise UndercalibratedExpert(
                f"quantize: layer {layer} expert {expert} gets {n} routed calibration tokens, fewer than "
                f"min_expert_tokens {q.min_expert_tokens}{more}; set quantize.calibrate_all_experts: true, "
                "fit the routers (gates.fit: true; a dead expert gets no tokens), add calibration text this expert "
                "handles, or accept it with quantize.allow_undercalibrated_experts: true"
            )
        return counts

    @staticmethod
    def _quantize(
        merged: Path, scratch: Path, windows, group_size: int, dtype: str, ctx: StageContext
    ) -> dict[str, list[list[int]] | None]:
        """Run the engine; returns the tokens it counted per layer and expert:
        {"seen": at the expert's input, "retained": in its AWQ statistics} (None
        where the engine could not be read)."""
        q = ctx.recipe.quantize
        windows_file = ctx.out / "calibration-windows.json"
        windows_file.write_text(json.dumps(windows))
        counts_file = ctx.out / "engine-expert-tokens.json"
        spec = {  # absolute paths: the engine runs in its own working folder
            "model": str(merged.resolve()),
            "out": str(scratch.resolve()),
            "windows": str(windows_file.resolve()),
            "bits": q.bits,
            "group_size": group_size,
            "zero_point": q.zero_point,
            "calibrate_all_experts": q.calibrate_all_experts,
            "compute_dtype": dtype,
            "seed": q.calibration.seed,
            "trust_remote_code": ctx.recipe.trust_remote_code,
            "expert_tokens_out": str(counts_file.resolve()),
        }
        run_engine(spec, ctx.out / "engine-spec.json", ctx.out / "engine.log")
        config = json.loads((merged / "config.json").read_text())
        shape = (config["num_hidden_layers"], config["num_local_experts"])
        counted = json.loads(counts_file.read_text())
        counts_file.unlink()
        return {part: _per_layer(counted, shape, i) for i, part in enumerate(("seen", "retained"))}

    @staticmethod
    def _write_config(scratch: Path, model_dir: Path, q, group_size: int) -> None:
        config = json.loads((scratch / "config.json").read_text())
        config["quantization_config"] = quantization_config(q.bits, group_size, q.zero_point)
        config["dtype"] = "float16"
        config.pop("torch_dtype", None)
        write_json(model_dir / "config.json", config)


def quantize_disk_bytes(merged_bytes: int) -> int:
    """Engine scratch and published copy, about 0.3x of the 16-bit model each at 4 bits."""
    return int(0.7 * merged_bytes)


def _per_layer(counted: dict, shape: tuple[int, int], part: int) -> list[list[int]] | None:
    """[layer][expert] of one part of what the engine counted; None when it could not
    count every expert of every layer (its code changed): not measured, never guessed."""
    layers, experts = shape
    rows = counted["layers"] if counted.get("counted") else {}
    try:
        return [[int(rows[str(layer)][str(e)][part]) for e in range(experts)] for layer in range(layers)]
    except KeyError:
        return None


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
                    raise RuntimeError(
                        f"quantize: {f.name} would publish a local path or host name ({needle!r}); this is a bug"
                    )
