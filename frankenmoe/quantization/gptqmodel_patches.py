"""Changes to GPTQModel, made in the AWQ engine's own process only (awq_engine.py):
float32 packing on a CPU, SPEEDUPS that replace slow parts by equivalent code, and
counting the tokens each expert's input got. Each checks that GPTQModel's code is
the one it was written against, and otherwise changes nothing."""

from __future__ import annotations

import inspect
import re
from typing import Callable

from frankenmoe.errors import EnvironmentProblem
from frankenmoe.support import settings

# Changes to GPTQModel's AWQ that make it faster at equal quality (SPEEDUPS, by
# name) are all applied unless this says otherwise: `none` runs GPTQModel's own
# code (to compare), or a comma list of names.
SPEEDUPS_ENV = settings.AWQ_SPEEDUPS


def allow_float32_awq_packing() -> None:
    """GPTQModel 7.7 runs AWQ's scale search, clipping and pseudo-quantization in
    float32 fine, then refuses to pack: the AWQ GEMM module it packs into on the
    CPU (AwqTorchLinear) lists only float16 and bfloat16 in SUPPORTS_DTYPES, and
    create_quant_module checks the source linear's dtype against it. Its pack()
    already stores float32 scales as float16 (what the published files hold) and
    computes the integer codes from the pseudo-quantized weight, so it packs a
    float32 linear correctly. In the engine process only, and only when the list
    is exactly the one this was checked against, add float32 to it."""
    import torch
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    supported = list(AwqTorchLinear.SUPPORTS_DTYPES)
    if torch.float32 in supported:
        return
    if supported != [torch.float16, torch.bfloat16]:
        raise EnvironmentProblem(
            f"quantize: GPTQModel's AwqTorchLinear supports {supported}, not what the float32 "
            f"patch expects; set {settings.AWQ_DTYPE}=bfloat16 (or float16)"
        )
    AwqTorchLinear.SUPPORTS_DTYPES = [*supported, torch.float32]


def best_clip_by_matmul(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
    """AWQProcessor._compute_best_clip of GPTQModel 7.7, the same search, scored
    with matrix products.

    For each block of output channels the search tries 10 clip bounds; per bound
    it quantizes the block and compares its outputs on up to 512 calibration
    tokens with the unquantized ones, group by group. GPTQModel forms those
    outputs as `(input_feat * w).sum(-1)`: a broadcast product of
    [channels, tokens, groups, group_size] elements, materialized and summed in
    the compute dtype, 11 times per block: on a CPU that was most of AWQ's time
    (and in float16 emulated, element by element). Per group it is the matrix
    product X_g @ W_g^T, which this computes with one batched matmul in float32,
    and the squared error in float32 too (GPTQModel keeps it in the compute
    dtype, so in bfloat16 near-equal candidates tie or swap). Same tokens, same
    candidate bounds, same pseudo-quantizer, same first-minimum choice."""
    import torch

    assert w.dim() == 2
    channels, in_features = w.shape
    group_size = self.qcfg.group_size if self.qcfg.group_size > 0 else in_features
    groups = in_features // group_size
    x = input_feat.reshape(-1, input_feat.shape[-1])
    x = x[:: max(1, x.shape[0] // n_sample_token)]  # GPTQModel's token sample
    x = x.reshape(x.shape[0], groups, group_size).transpose(0, 1).to(device=w.device, dtype=torch.float32)  # [G, T, g]

    def outputs(weights):  # [c, 1, G, g] -> [G, T, c]
        return torch.bmm(x, weights[:, 0].permute(1, 2, 0).to(torch.float32))

    w = w.reshape(channels, 1, groups, group_size)
    batch = 256 if channels % 256 == 0 else 64  # GPTQModel's output-channel blocks
    assert channels % batch == 0
    clamped = torch.empty_like(w[:batch])
    quantized = torch.empty_like(clamped)
    best = []
    for start in range(0, channels, batch):
        block = w[start : start + batch]
        org_max_val = block.abs().amax(dim=-1, keepdim=True)  # [c, 1, G, 1]
        reference = outputs(block)
        errs = [torch.full(org_max_val.shape, float("inf"), dtype=torch.float32, device=w.device)]
        max_vals = [org_max_val]
        for step in range(int(max_shrink * n_grid)):
            max_val = org_max_val * (1 - step / n_grid)
            torch.clamp(block, -max_val, max_val, out=clamped)
            self._pseudo_quantize_tensor_into(clamped, quantized, abs_max=max_val)
            err = outputs(quantized).sub_(reference).pow_(2).mean(dim=1)  # [G, c]
            errs.append(err.t().reshape(org_max_val.shape))
            max_vals.append(max_val)
        index = torch.stack(errs).nan_to_num(nan=torch.inf).argmin(dim=0)
        best.append(torch.gather(torch.stack(max_vals), 0, index.unsqueeze(0)).squeeze(0))
    return torch.cat(best, dim=0).squeeze(1)


def patch_clip_search() -> bool:
    from gptqmodel.looper.awq_processor import AWQProcessor

    stock = AWQProcessor._compute_best_clip
    if stock is best_clip_by_matmul:
        return True
    params = list(inspect.signature(stock).parameters)
    if params != ["self", "w", "input_feat", "n_grid", "max_shrink", "n_sample_token"] or not hasattr(
        AWQProcessor, "_pseudo_quantize_tensor_into"
    ):
        return False
    AWQProcessor._compute_best_clip = best_clip_by_matmul
    return True


# The first linear of each expert, as GPTQModel names it within a decoder layer.
EXPERT_INPUT = re.compile(r"^(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(?:gate_proj|w1)$")


def count_expert_tokens(counts: dict[int, dict[int, list[int]]]) -> bool:
    """Record, per layer and expert, the tokens GPTQModel's AWQ captured at the
    expert's input (`raw`) and kept for its scale statistics (`retained`: GPTQModel
    packs a MoE module's inputs into a bounded number of token rows), from the
    engine's own feature statistics, as it collapses them for each layer. False
    (nothing counted) where GPTQModel's code is not what this reads."""
    from gptqmodel.looper.awq_processor import AWQProcessor

    stock = AWQProcessor._layer_input_features
    if list(inspect.signature(stock).parameters) != ["self", "state"]:
        return False

    def counting(self, state):
        features = stock(self, state)
        layers = {m.layer_index for m in list(state.modules.values()) if hasattr(m, "layer_index")}
        for name, stat in (getattr(self, "_feature_stats", None) or {}).items():
            if (m := EXPERT_INPUT.match(name)) and len(layers) == 1:
                counts.setdefault(next(iter(layers)), {})[int(m.group(1))] = [
                    int(stat["raw_tokens"]),
                    int(stat["retained_tokens"]),
                ]
        return features

    AWQProcessor._layer_input_features = counting
    return True


# name -> patch; a patch returns False (and changes nothing) where GPTQModel's code
# is not what it was written against.
SPEEDUPS: dict[str, Callable[[], bool]] = {"clip-matmul": patch_clip_search}


def apply_speedups(environ: dict[str, str], write: Callable[[str], None]) -> list[str]:
    """Apply the SPEEDUPS named by FRANKENMOE_AWQ_SPEEDUPS (all by default);
    returns those applied. One GPTQModel no longer fits is skipped, saying so."""
    wanted = speedups_wanted(environ)
    applied = []
    for name in wanted:
        if SPEEDUPS[name]():
            applied.append(name)
        else:
            write(f"quantize  speed-up {name} skipped: GPTQModel's code is not what it was written for")
    return applied


def speedups_wanted(environ: dict[str, str]) -> list[str]:
    value = settings.awq_speedups(environ)
    if value is None or value.strip() in ("", "all"):
        return list(SPEEDUPS)
    if value.strip() == "none":
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPEEDUPS]
    if unknown:
        raise EnvironmentProblem(
            f"{SPEEDUPS_ENV}: unknown {', '.join(unknown)}; use none, all or some of {', '.join(SPEEDUPS)}"
        )
    return [n for n in SPEEDUPS if n in names]
