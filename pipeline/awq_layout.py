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

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
QUANT_PARTS = ("qweight", "qzeros", "scales")
ENGINE_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(qweight|qzeros|scales)$")
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
