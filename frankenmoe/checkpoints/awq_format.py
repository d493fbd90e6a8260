"""Reading AutoAWQ's "GEMM" tensors: eight 4-bit values per int32, nibble i holding
column AWQ_ORDER[i] of each group of eight; W[k, n] = (q - z) * s. The layout as a
whole (names, config, what must be quantized) is frankenmoe/quantization/awq_layout.py."""

from __future__ import annotations

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
QUANT_PARTS = ("qweight", "qzeros", "scales")
PROJ_TO_W = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


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
