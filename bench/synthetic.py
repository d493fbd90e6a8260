"""Random-weight model families with real models' shapes, made on disk, no download.

`make bench` measures the pipeline at the scale users run it (a 2x7B MoE is
12.9 B parameters, 26 GB in FP16) on a machine that cannot fetch a 7B. Weights
are FP16 draws from a generator seeded by the tensor's name, so a family is the
same bytes every time. Like real FrankenMoE sources (fine-tunes of one base), the
experts share the base's non-MLP weights: those shards are written once and
hard-linked into every folder, and the base's MLP is expert 0's (the base is
also the first expert, a common recipe). A 2x7B family so costs 3.5 + 2 x 11.3
GB of disk instead of 3 x 14.5.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

SHAPES = {
    # Mistral-7B-v0.1
    "7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    },
    # TinyLlama-1.1B's shapes in a Mistral: about 1.1 B parameters per expert
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
}
# A 2x7B's layers, two deep: evaluate and verify stream one layer at a time, so
# their memory does not grow with depth, and two layers measure it in a tenth of the time.
SHAPES["7b-2l"] = {**SHAPES["7b"], "num_hidden_layers": 2}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tensor_shapes(shape: dict) -> tuple[dict, dict]:
    """(shared non-MLP tensors, one model's MLP tensors): name -> shape."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    shared = {
        "model.embed_tokens.weight": (shape["vocab_size"], h),
        "lm_head.weight": (shape["vocab_size"], h),
        "model.norm.weight": (h,),
    }
    mlp = {}
    for layer in range(n):
        p = f"model.layers.{layer}"
        shared.update(
            {
                f"{p}.self_attn.q_proj.weight": (h, h),
                f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h),
                f"{p}.self_attn.o_proj.weight": (h, h),
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
            }
        )
        mlp.update(
            {
                f"{p}.mlp.gate_proj.weight": (i, h),
                f"{p}.mlp.up_proj.weight": (i, h),
                f"{p}.mlp.down_proj.weight": (h, i),
            }
        )
    return shared, mlp


def family_bytes(shape_name: str, experts: int = 2) -> dict:
    """Disk bytes of a family and of the MoE merged from it (FP16)."""
    shared, mlp = tensor_shapes(SHAPES[shape_name])
    size = lambda d: 2 * sum(_numel(s) for s in d.values())  # noqa: E731
    moe = (
        size(shared)
        + experts * size(mlp)
        + 2 * experts * SHAPES[shape_name]["hidden_size"] * SHAPES[shape_name]["num_hidden_layers"]
    )
    return {
        "inputs": size(shared) + experts * size(mlp),
        "moe": moe,
        "params_per_expert": (size(shared) + size(mlp)) // 2,
    }


def make_family(out: Path, shape_name: str, tokenizer_from: Path, experts: int = 2, log=print) -> dict[str, Path]:
    """`out/{base,expert-0,...}`: Hugging Face Mistral folders. Returns name -> folder."""
    from safetensors.torch import save_file

    shape = SHAPES[shape_name]
    shared, mlp = tensor_shapes(shape)
    blobs = out / ".blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def write(fname: str, names: dict, tag: str) -> None:
        if (blobs / fname).exists():
            return
        tensors = {k: _draw(k, s, tag) for k, s in names.items()}
        save_file(tensors, blobs / f"{fname}.tmp", metadata={"format": "pt"})
        os.replace(blobs / f"{fname}.tmp", blobs / fname)

    layers = shape["num_hidden_layers"]
    shared_files = {"shared.safetensors": {k: v for k, v in shared.items() if not k.startswith("model.layers.")}}
    for layer in range(layers):
        shared_files[f"attn-{layer:03d}.safetensors"] = {
            k: v for k, v in shared.items() if k.startswith(f"model.layers.{layer}.")
        }
    for fname, names in shared_files.items():
        write(fname, names, "shared")
    contents = dict(shared_files)
    for e in range(experts):
        for layer in range(layers):
            contents[f"mlp-e{e}-{layer:03d}.safetensors"] = {
                k: v for k, v in mlp.items() if k.startswith(f"model.layers.{layer}.")
            }
            write(f"mlp-e{e}-{layer:03d}.safetensors", contents[f"mlp-e{e}-{layer:03d}.safetensors"], f"expert-{e}")
        log(f"bench: synthetic {shape_name}: expert {e} written")

    config = json.loads((tokenizer_from / "config.json").read_text())
    config.update(shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"], max_position_embeddings=4096)
    folders = {}
    for label, e in [("base", 0)] + [(f"expert-{i}", i) for i in range(experts)]:
        folder = out / label
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        files = list(shared_files) + [f"mlp-e{e}-{layer:03d}.safetensors" for layer in range(layers)]
        weight_map = {}
        for fname in files:
            os.link(blobs / fname, folder / fname)
            weight_map.update({k: fname for k in contents[fname]})
        total = sum((blobs / f).stat().st_size for f in files)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        )
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for f in TOKENIZER_FILES:
            shutil.copy2(tokenizer_from / f, folder / f)
        folders[label] = folder
    return folders


def _draw(name: str, shape: tuple, tag: str):
    """FP16 weights for `name`, the same bytes on every run; norms are ones."""
    import torch

    if len(shape) == 1:
        return torch.ones(shape, dtype=torch.float16)
    seed = int.from_bytes(hashlib.sha256(f"{tag}/{name}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.02).half()


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
