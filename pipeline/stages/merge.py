"""merge: mergekit-moe through its Python API, then the classic Mixtral layout.

mergekit builds the MoE from the resolved local folders (attention, embeddings
and norms from the base, each expert's MLP from its source, router rows from the
prompts' hidden states). Its fused transformers-5 tensors are then rewritten to
the per-expert Mixtral names and re-sharded to `merge.shard_size` (see
pipeline/checkpoint.py). Output: `model/`, a complete Hugging Face model folder,
published as dist/<name>/merged/.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline.checkpoint import mixtral_pieces, write_sharded
from pipeline.determinism import seed_everything
from pipeline.errors import FrankenmoeError, IncompatibleModelsError
from pipeline.recipe import Recipe
from pipeline.stages.base import Stage, StageContext, StageResult

# Side files worth carrying from the base model into the merged folder.
COPY_FROM_BASE = ("generation_config.json",)


class MergeStage(Stage):
    name = "merge"
    depends = ("resolve",)
    packages = ("mergekit", "torch", "transformers", "safetensors", "tokenizers")

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "gate_mode": recipe.gate_mode,
            "dtype": recipe.dtype,
            "experts_per_token": recipe.experts_per_token,
            "architecture": recipe.architecture,
            "experts": [e.model_dump(exclude={"source_model"}) for e in recipe.experts],
            "trust_remote_code": recipe.trust_remote_code,
            "seed": recipe.merge.seed,
            "shard_size": recipe.merge.shard_size,
        }

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult]) -> int | None:
        return merge_disk_bytes(inputs["resolve"].record["result"]["models"][0]["config"], recipe)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch
        from mergekit.merge import MergeOptions
        from mergekit.moe.config import MoEMergeConfig
        from mergekit.scripts.moe import build as mergekit_moe_build

        recipe = ctx.recipe
        models = ctx.inputs["resolve"].record["result"]["models"]
        paths = {m["role"]: m["path"] for m in models}
        config = MoEMergeConfig.model_validate({
            "base_model": paths["base"],
            "gate_mode": recipe.gate_mode,
            "dtype": recipe.dtype,
            "experts_per_token": recipe.experts_per_token,
            "architecture": recipe.architecture,
            "experts": [
                {**e.model_dump(exclude={"source_model"}), "source_model": paths[f"experts[{i}]"]}
                for i, e in enumerate(recipe.experts)
            ],
        })
        device = recipe.merge.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        options = MergeOptions(
            out_shard_size=recipe.merge.shard_size,
            copy_tokenizer=True,
            trust_remote_code=recipe.trust_remote_code,
            random_seed=recipe.merge.seed,
            device=device,
            quiet=True,
        )
        scratch = ctx.out / "mergekit"
        seed_everything(recipe.merge.seed)  # random gate modes and noise_scale draw from torch
        logging.getLogger("mergekit").setLevel(logging.WARNING)
        try:
            mergekit_moe_build(config, out_path=str(scratch), merge_options=options, device=device)
        except SystemExit:  # mergekit reports some config problems by exiting
            raise FrankenmoeError("merge: mergekit-moe rejected the configuration (see its message above)") from None
        except KeyError as e:
            raise IncompatibleModelsError(f"merge: a source model lacks tensor {e}; is it a Llama/Mistral checkpoint?") from None

        model_dir = ctx.out / "model"
        model_dir.mkdir()
        pieces = mixtral_pieces(sorted(scratch.glob("*.safetensors")))
        shards = write_sharded(pieces, model_dir, recipe.merge.shard_size, desc="merge: writing Mixtral layout")
        for f in sorted(scratch.iterdir()):
            if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json" and f.is_file():
                shutil.copy2(f, model_dir / f.name)
        base_path = Path(paths["base"])
        for name in COPY_FROM_BASE:
            if (base_path / name).is_file() and not (model_dir / name).exists():
                shutil.copy2(base_path / name, model_dir / name)
        shutil.rmtree(scratch)
        ctx.log(f"merge     {len(recipe.experts)} experts, {len(pieces)} tensors in {len(shards)} shard(s)")
        return {"tensors": len(pieces), "shards": shards, "device": device}


def merge_disk_bytes(base_config: dict, recipe: Recipe) -> int:
    """mergekit's output and the rewritten one exist together until the end."""
    return 2 * moe_bytes(base_config, len(recipe.experts), recipe.dtype)


def moe_bytes(cfg: dict, n_experts: int, dtype: str | None) -> int:
    """Size of the merged MoE's weights, from the base config alone."""
    h, i, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"] or cfg["num_attention_heads"]
    head_dim = h // heads
    attn = 2 * h * h + 2 * h * kv * head_dim
    per_layer = attn + n_experts * 3 * h * i + n_experts * h + 2 * h
    params = 2 * vocab * h + layers * per_layer + h
    return params * (4 if dtype == "float32" else 2)
