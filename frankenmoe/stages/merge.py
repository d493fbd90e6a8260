"""merge: mergekit-moe through its Python API, writing the classic Mixtral layout.

mergekit builds the MoE from the resolved local folders (attention, embeddings
and norms from the base, each expert's MLP from its source, router rows from the
prompts' hidden states). mergekit 0.1.5 fuses the experts into transformers 5's
`mlp.experts.gate_up_proj [E, 2I, H]`; published Mixtral repos, vLLM and
llama.cpp's converter expect the per-expert names
(`block_sparse_moe.experts.E.{w1,w2,w3}.weight`), which transformers 5 still
loads. So mergekit is made to save each expert tensor under its classic name as
it goes: one write of the weights, not a write and a rewrite (a 2x7B is 26 GB).
Output: `model/`, a complete Hugging Face model folder, published as
dist/<name>/merged/.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from frankenmoe.checkpoints.shape import ModelShape
from frankenmoe.errors import EnvironmentProblem, IncompatibleModelsError, ToolFailed
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.resolve import resolved_models
from frankenmoe.support.determinism import seed_everything
from frankenmoe.support.device import device_class, require_gpu_if_asked, resolve_device
from frankenmoe.support.hashing import HashState

# Side files worth carrying from the base model into the merged folder.
COPY_FROM_BASE = ("generation_config.json",)


class MergeResult(Facts):
    tensors: int
    shards: list[str]
    device: str  # where mergekit computed


def merged_model(result: StageResult) -> Path:
    """The merged model folder (mergekit's routers)."""
    return result.path / "model"


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

    def preflight(self, recipe: Recipe) -> None:
        require_gpu_if_asked(recipe.merge.device, "merge.device")

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        # mergekit computes `hidden` router rows with the models (and draws random ones) on
        # this device: a CPU merge and a GPU merge give other bytes and never share an entry.
        return {"compute": device_class(recipe.merge.device)}

    def estimate_bytes(self, recipe: Recipe, inputs: dict[str, StageResult], base_config: dict | None) -> int | None:
        if "resolve" in inputs:
            base_config = resolved_models(inputs["resolve"])[0].config
        return None if base_config is None else ModelShape.of(base_config).bytes(len(recipe.experts), recipe.dtype)

    def run(self, ctx: StageContext) -> MergeResult:
        from mergekit.merge import MergeOptions
        from mergekit.moe.config import MoEMergeConfig
        from mergekit.scripts.moe import build as mergekit_moe_build

        recipe = ctx.recipe
        models = resolved_models(ctx.inputs["resolve"])
        paths = {m.role: m.path for m in models}
        config = MoEMergeConfig.model_validate(
            {
                "base_model": paths["base"],
                "gate_mode": recipe.gate_mode,
                "dtype": recipe.dtype,
                "experts_per_token": recipe.experts_per_token,
                "architecture": recipe.architecture,
                "experts": [
                    {**e.model_dump(exclude={"source_model"}), "source_model": paths[f"experts[{i}]"]}
                    for i, e in enumerate(recipe.experts)
                ],
            }
        )
        device = resolve_device(recipe.merge.device)
        options = MergeOptions(
            out_shard_size=recipe.merge.shard_size,
            copy_tokenizer=True,
            trust_remote_code=recipe.trust_remote_code,
            random_seed=recipe.merge.seed,
            device=device,
            quiet=True,
        )
        model_dir = ctx.out / "model"
        seed_everything(recipe.merge.seed)  # random gate modes and noise_scale draw from torch
        logging.getLogger("mergekit").setLevel(logging.WARNING)
        try:
            with classic_mixtral_names():
                mergekit_moe_build(config, out_path=str(model_dir), merge_options=options, device=device)
        except SystemExit:  # mergekit reports some config problems by exiting
            raise ToolFailed("merge: mergekit-moe rejected the configuration (see its message above)") from None
        except KeyError as e:
            missing = _missing_tensor(e, {role: Path(p) for role, p in paths.items()})
            if missing is None:
                raise  # not a tensor a source lacks: a bug, reported as one
            raise IncompatibleModelsError(
                f"merge: {missing}; is it a Llama/Mistral checkpoint with every decoder layer's weights?"
            ) from None

        shards = sorted(f.name for f in model_dir.glob("*.safetensors"))
        for f in shards:
            os.chmod(model_dir / f, 0o644)  # safetensors writes 0600; published files are world-readable
        base_path = Path(paths["base"])
        for name in COPY_FROM_BASE:
            if (base_path / name).is_file() and not (model_dir / name).exists():
                shutil.copy2(base_path / name, model_dir / name)
        tensors = len(_weight_map(model_dir))
        ctx.log(f"merge     {len(recipe.experts)} experts, {tensors} tensors in {len(shards)} shard(s)")
        return MergeResult(tensors=tensors, shards=shards, device=device)


@contextmanager
def classic_mixtral_names() -> Iterator[None]:
    """While mergekit-moe writes a Mixtral: each expert tensor is saved under its
    classic name (`model.layers.N.block_sparse_moe.experts.E.wK.weight`) instead
    of being fused, and the router as `block_sparse_moe.gate.weight`."""
    import mergekit.moe.mixtral as mixtral

    if not (
        hasattr(mixtral, "convert_and_save_checkpoint_tensors") and hasattr(mixtral.MixtralMoE, "_router_weight_name")
    ):
        raise EnvironmentProblem(
            "merge: this mergekit does not write Mixtral the way frankenmoe expects; "
            "install the pinned version (make setup)"
        )
    fuse, router = mixtral.convert_and_save_checkpoint_tensors, mixtral.MixtralMoE._router_weight_name

    def save_per_expert(model_type, source_tensors, target_name, writer, out_dtype=None, clone=False):
        for name, tensor in source_tensors.items():  # model.layers.N.mlp.experts.E.wK.weight
            writer.save_tensor(
                name.replace(".mlp.", ".block_sparse_moe."), tensor.to(dtype=out_dtype).contiguous(), clone=clone
            )

    mixtral.convert_and_save_checkpoint_tensors = save_per_expert
    mixtral.MixtralMoE._router_weight_name = lambda self, i: f"model.layers.{i}.block_sparse_moe.gate.weight"
    try:
        yield
    finally:
        mixtral.convert_and_save_checkpoint_tensors, mixtral.MixtralMoE._router_weight_name = fuse, router


def _missing_tensor(error: KeyError, sources: dict[str, Path]) -> str | None:
    """Which source lacks the tensor mergekit looked up, or None when the KeyError is
    about something else (then it is a bug, not the user's models)."""
    name = error.args[0] if error.args else None
    if not isinstance(name, str) or not name.endswith((".weight", ".bias")):
        return None
    lacking = [role for role, folder in sources.items() if name not in _weight_map(folder)]
    return f"{', '.join(lacking)} lack(s) tensor {name!r}" if lacking else None


def _weight_map(folder: Path) -> dict:
    from safetensors import safe_open

    names = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            names.update({k: f.name for k in st.keys()})
    return names
