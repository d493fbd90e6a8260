"""How much a 4-bit model may differ from its 16-bit model, by the size of the model.

A 4-bit quantization costs a small model much more than a large one: published
AWQ/llama.cpp 4-bit figures for 7B-scale models are a mean KL of 0.013-0.03, the
same top token 92-95% of the time and +1.5-4% perplexity, while the 135M-parameter
SmolLM2 dense base, quantized by GPTQModel's AWQ (4-bit, g64) on the shipped
calibration text, measured mean KL 0.173, top-1 85.8% and x1.100 (docs/notes.md).
One fixed limit cannot fit both. So each limit the recipe leaves unset comes from the
tier of the model's dense size (parameters a token passes through with one expert):
the 7B tier from the published figures with margin, the small tier from the measured
135M dense base with margin (a MoE of it must not lose more than its base does), the
middle tier between the two. A recipe's own `verify.*` value always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from frankenmoe.checkpoints.shape import ModelShape


@dataclass(frozen=True)
class Tier:
    min_params: float
    label: str
    max_mean_kl: float
    min_top1_agreement: float
    max_ppl_ratio: float


TIERS = (
    Tier(
        3e9,
        "3B and more: published 4-bit 7B figures (KL 0.013-0.03, top-1 92-95%, +1.5-4%) with margin",
        0.05,
        0.90,
        1.05,
    ),
    Tier(5e8, "0.5B-3B: between the 7B figures and the measured 135M base", 0.12, 0.85, 1.10),
    Tier(
        0,
        "under 0.5B: the SmolLM2-135M dense base at 4 bits (KL 0.173, top-1 85.8%, x1.100) with margin",
        0.20,
        0.82,
        1.12,
    ),
)
LIMITS = ("max_mean_kl", "min_top1_agreement", "max_ppl_ratio")


def quality_limits(verify, config: dict) -> dict:
    """The limits in force: the recipe's where set, else its size tier's; with the basis of each."""
    params = ModelShape.of(config).params()  # the dense model one expert path is
    tier = next(t for t in TIERS if params >= t.min_params)
    return _in_force(params, tier, {name: getattr(verify, name) for name in LIMITS}, "model size")


def _in_force(params: int, tier: Tier, recipe: dict, default_from: str) -> dict:
    """Each limit from the recipe where it sets one, else from the tier; with its basis."""
    out = {"dense_params": params, "tier": tier.label}
    for name in LIMITS:
        mine = recipe.get(name)
        out[name] = mine if mine is not None else getattr(tier, name)
        out[f"{name}_from"] = "recipe" if mine is not None else default_from
    return out


# GGUF, through llama.cpp's converter and quantizer, measured by llama.cpp's own
# logits. 8-bit types are near-lossless at any size (llama.cpp's 7B figures: mean KL
# about 0.0004, top-1 98-99%; the SmolLM2-135M dense base: 0.0045, 96.7%, x1.002).
# 4- to 6-bit types by size, like the AWQ tiers: the 7B tier from the published
# 4-bit figures, the small tier from the 135M dense base at Q4_K_M (0.059, 87.8%,
# x1.072; its 576 columns make most tensors fall back from K-quants) with margin.
GGUF_8BIT = Tier(
    0, "8-bit: llama.cpp's 7B figures (KL about 0.0004) and the 135M base (KL 0.0045), with margin", 0.02, 0.94, 1.02
)
GGUF_TIERS = (
    Tier(3e9, "3B and more: published 4-bit 7B figures (KL 0.013-0.03, top-1 92-95%) with margin", 0.05, 0.90, 1.05),
    Tier(5e8, "0.5B-3B: between the 7B figures and the measured 135M base", 0.08, 0.87, 1.08),
    Tier(
        0,
        "under 0.5B: the SmolLM2-135M dense base at Q4_K_M (KL 0.059, top-1 87.8%, x1.072) with margin",
        0.10,
        0.84,
        1.10,
    ),
)


def gguf_limits(gguf, ftype: str, config: dict) -> dict:
    """The limits for one GGUF type: the recipe's (`gguf.<limit>: {TYPE: value}`)
    where set, else by the type's bits and the model's size."""
    params = ModelShape.of(config).params()  # the dense model one expert path is
    tier = GGUF_8BIT if ftype.startswith("Q8") else next(t for t in GGUF_TIERS if params >= t.min_params)
    return _in_force(params, tier, {name: getattr(gguf, name).get(ftype) for name in LIMITS}, "type and model size")
