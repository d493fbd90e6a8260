"""The published 4-bit layout: AutoAWQ's "GEMM" checkpoint for Mixtral.

This is the contract vLLM, TGI and existing AWQ Mixtral repos read:
- per quantized linear `qweight` int32 [in, out/8], `qzeros` int32 [in/G, out/8],
  `scales` fp16 [in/G, out]; eight 4-bit values per int32, nibble i holding
  column AWQ_ORDER[i] of each group of eight; W[k, n] = (q - z) * s;
- expert names `model.layers.N.block_sparse_moe.experts.E.{w1,w2,w3}` (w1 =
  gate_proj, w3 = up_proj, w2 = down_proj), router
  `model.layers.N.block_sparse_moe.gate.weight` (fp16, never quantized);
- `config.json` carries exactly `quantization_config` below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from frankenmoe.checkpoints.awq_format import PROJ_TO_W
from frankenmoe.checkpoints.shape import ModelShape
from frankenmoe.errors import RecipeError

ENGINE_EXPERT = re.compile(
    r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(qweight|qzeros|scales)$"
)
ENGINE_ROUTER = re.compile(r"^model\.layers\.(\d+)\.mlp\.gate\.weight$")


def quantization_config(bits: int, group_size: int, zero_point: bool) -> dict:
    return {
        "quant_method": "awq",
        "bits": bits,
        "group_size": group_size,
        "zero_point": zero_point,
        "version": "gemm",
        "modules_to_not_convert": ["gate"],
    }


def published_name(engine_name: str) -> str:
    """GPTQModel's tensor name -> the AutoAWQ Mixtral name."""
    if m := ENGINE_EXPERT.match(engine_name):
        layer, expert, proj, part = m.groups()
        return f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{PROJ_TO_W[proj]}.{part}"
    if m := ENGINE_ROUTER.match(engine_name):
        return f"model.layers.{m.group(1)}.block_sparse_moe.gate.weight"
    return engine_name


GROUP_SIZES = (128, 64, 32)
# Under this many dense parameters an unset group size is SMALL_MODEL_GROUP: on the
# SmolLM2-135M examples (2 and 3 experts) symmetric 4-bit, the setting transformers reads,
# passed the size-tier limits only at group size 16 (g32: perplexity x1.129 and x1.144,
# g64: x1.226 on 3 experts; docs/verification.md). Larger models keep the largest group
# that divides (128 on a 7B: llm-compressor's W4A16 scheme, symmetric g128).
SMALL_MODEL_PARAMS = 5e8
SMALL_MODEL_GROUP = 16


def quantized_input_dims(config: dict) -> dict[str, int]:
    """The input dimension of every linear AWQ quantizes, by what sets it: q/k/v,
    gate/up (hidden_size), o_proj (heads x head_dim), down_proj (intermediate_size)."""
    shape = ModelShape.of(config)
    return {
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_attention_heads x head_dim": shape.attention_width,
    }


def choose_group_size(config: dict, wanted: int | None) -> int:
    """AWQ groups run along each linear's input dimension, so they must divide it.
    None picks SMALL_MODEL_GROUP for a model under SMALL_MODEL_PARAMS, else the largest
    of 128, 64, 32 that divides every such dimension. Works on a source's config as well
    as the merged one, so preflight runs it before merge."""
    dims = quantized_input_dims(config)
    if wanted is not None:
        for key, dim in dims.items():
            if dim % wanted:
                fits = [g for g in GROUP_SIZES if all(d % g == 0 for d in dims.values())]
                hint = (
                    f"use {fits[0]}, or leave quantize.group_size unset to choose it"
                    if fits
                    else "no AWQ group size fits this model"
                )
                raise RecipeError([f"quantize.group_size: {wanted} does not divide the model's {key} ({dim}); {hint}"])
        return wanted
    small = ModelShape.of(config).params() < SMALL_MODEL_PARAMS
    for g in ((SMALL_MODEL_GROUP,) if small else ()) + GROUP_SIZES:
        if all(d % g == 0 for d in dims.values()):
            return g
    raise RecipeError(
        [
            f"quantize.group_size: none of {', '.join(map(str, GROUP_SIZES))} divides the model's "
            + ", ".join(f"{k} ({v})" for k, v in dims.items())
            + "; AWQ cannot quantize this model"
        ]
    )


# What a candidate must share with the merged model for its outputs to be comparable.
SAME_AS_MERGED = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "num_local_experts",
    "num_experts_per_tok",
)


def quantized_linears(config: dict) -> dict[str, tuple[int, int]]:
    """{module name: (in, out)} of every linear the published layout holds in 4 bits."""
    shape = ModelShape.of(config)
    hidden, inter = shape.hidden, shape.intermediate
    out = {}
    for layer in range(shape.layers):
        attn = f"model.layers.{layer}.self_attn"
        out[f"{attn}.q_proj"] = (hidden, shape.attention_width)
        out[f"{attn}.k_proj"] = (hidden, shape.kv_width)
        out[f"{attn}.v_proj"] = (hidden, shape.kv_width)
        out[f"{attn}.o_proj"] = (shape.attention_width, hidden)
        for e in range(config["num_local_experts"]):
            expert = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
            out[f"{expert}.w1"] = out[f"{expert}.w3"] = (hidden, inter)
            out[f"{expert}.w2"] = (inter, hidden)
    return out


def awq_form_problems(folder, merged_config: dict, limit: int = 4) -> list[str]:
    """Why `folder` is not this merge in the published AWQ GEMM form, one line per
    problem (at most `limit` per kind, then a count); empty when it is. Reads only
    config.json and the safetensors headers, so a wrong candidate never crashes a
    comparison with a traceback."""
    from safetensors import safe_open

    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        return [f"{folder}: no config.json; give a folder in the published AWQ layout (like dist/<name>/awq)"]
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        return [f"{cfg_file}: not valid JSON ({e})"]
    problems = [
        f"config.json: {key} is {cfg.get(key)!r}, the merged model's is {merged_config.get(key)!r}"
        for key in SAME_AS_MERGED
        if cfg.get(key) != merged_config.get(key)
    ]
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        problems.append("config.json: no quantization_config; this is not an AWQ checkpoint")
    else:
        for key, want in (("quant_method", "awq"), ("bits", 4), ("version", "gemm")):
            if str(q.get(key)).lower() != str(want):
                problems.append(
                    f"config.json: quantization_config.{key} is {q.get(key)!r}, the AWQ GEMM layout has {want!r}"
                )
        if not isinstance(q.get("group_size"), int) or q["group_size"] <= 0:
            problems.append(f"config.json: quantization_config.group_size is {q.get('group_size')!r}, not a group size")
    if problems:
        return problems
    group = q["group_size"]
    shapes: dict[str, list[int]] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return [f"{folder}: no .safetensors files"]
    for f in files:
        try:
            with safe_open(f, framework="pt") as st:
                for name in st.keys():
                    shapes[name] = list(st.get_slice(name).get_shape())
        except Exception as e:  # a truncated or foreign file: say which
            return [f"{f.name}: not a readable safetensors file ({type(e).__name__})"]
    kinds: dict[str, list[str]] = {"16-bit": [], "missing": [], "shape": []}
    for module, (n_in, n_out) in quantized_linears(merged_config).items():
        if f"{module}.weight" in shapes:
            kinds["16-bit"].append(module)
            continue
        want = {"qweight": [n_in, n_out // 8], "qzeros": [n_in // group, n_out // 8], "scales": [n_in // group, n_out]}
        for part, shape in want.items():
            got = shapes.get(f"{module}.{part}")
            if got is None:
                kinds["missing"].append(f"{module}.{part}")
            elif got != shape:
                kinds["shape"].append(f"{module}.{part} is {got}, expected {shape}")
    what = {
        "16-bit": "linears left in 16-bit (a `.weight` where qweight/qzeros/scales belong)",
        "missing": "quantized tensors missing",
        "shape": "quantized tensors with the wrong shape",
    }
    out = []
    for kind, items in kinds.items():
        if items:
            shown = ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
            out.append(f"{len(items)} {what[kind]}: {shown}")
    return out
