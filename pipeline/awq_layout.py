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

import re

from pipeline.errors import RecipeError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
QUANT_PARTS = ("qweight", "qzeros", "scales")
ENGINE_EXPERT = re.compile(
    r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(qweight|qzeros|scales)$"
)
ENGINE_ROUTER = re.compile(r"^model\.layers\.(\d+)\.mlp\.gate\.weight$")
PROJ_TO_W = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
W_TO_PROJ = {v: k for k, v in PROJ_TO_W.items()}


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


def router_name(layer: int) -> str:
    return f"model.layers.{layer}.block_sparse_moe.gate.weight"


def unpack_int4(packed, bits: int = 4):
    """int32 [..., n/8] -> int [..., n] of 4-bit values in natural column order."""
    import torch

    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    vals = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [..., n/8, 8] in nibble order
    order = torch.tensor(AWQ_ORDER)
    natural = torch.empty_like(vals)
    natural[..., order] = vals  # nibble i holds column AWQ_ORDER[i]
    return natural.reshape(*packed.shape[:-1], packed.shape[-1] * 8)


def dequantize(qweight, qzeros, scales, group_size: int):
    """The float weight of one AWQ GEMM linear, as nn.Linear stores it: [out, in]."""
    q = unpack_int4(qweight).float()  # [in, out]
    z = unpack_int4(qzeros).float().repeat_interleave(group_size, dim=0)  # [in, out]
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - z) * s).t().contiguous()


GROUP_SIZES = (128, 64, 32)


def quantized_input_dims(config: dict) -> dict[str, int]:
    """The input dimension of every linear AWQ quantizes, by what sets it: q/k/v,
    gate/up (hidden_size), o_proj (heads x head_dim), down_proj (intermediate_size)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_attention_heads x head_dim": heads * head_dim,
    }


def choose_group_size(config: dict, wanted: int | None) -> int:
    """AWQ groups run along each linear's input dimension, so they must divide it.
    None picks the largest of 128, 64, 32 that divides every such dimension. Works
    on a source's config as well as the merged one, so preflight runs it before merge."""
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
    for g in GROUP_SIZES:
        if all(d % g == 0 for d in dims.values()):
            return g
    raise RecipeError(
        [
            f"quantize.group_size: none of {', '.join(map(str, GROUP_SIZES))} divides the model's "
            + ", ".join(f"{k} ({v})" for k, v in dims.items())
            + "; AWQ cannot quantize this model"
        ]
    )
