"""How a Mixtral-style MoE routes: tokens per expert (the quantize stage's check that
every expert saw enough calibration tokens)."""

from __future__ import annotations


def expert_token_counts(lm, windows: list[list[int]], desc: str = "routing calibration tokens") -> list[list[int]]:
    """Per layer and expert, how many tokens the router sends there (top-k), with
    the merged model streamed layer by layer (a frankenmoe.checkpoints.streaming.StreamingLM)."""
    import torch

    top_k = lm.config.num_experts_per_tok
    counts = None
    for _, router in lm.run(windows, desc=desc, head=False):  # router: [L, T, E]
        chosen = torch.topk(router, top_k, dim=-1).indices
        c = torch.stack([torch.bincount(layer.reshape(-1), minlength=router.shape[-1]) for layer in chosen])
        counts = c if counts is None else counts + c
    return counts.tolist()
