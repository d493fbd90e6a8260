"""The sparse-MoE blocks of a loaded Mixtral-style model, and routing every token to
one expert: what lets one reader check a merge against each source model."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def moe_blocks(model) -> list:
    """The sparse-MoE block of every decoder layer."""
    return [layer.mlp for layer in model.model.layers]


@contextmanager
def forced_expert(model, expert: int) -> Iterator[None]:
    """Route every token of every layer to `expert` alone (weight 1.0).

    Only that expert runs (top-1, whatever the recipe's top-k), so the block's
    output is exactly that expert's MLP output: the MoE should then reproduce the
    source model whose MLPs that expert came from, at a dense model's MLP cost."""
    import torch

    originals = []
    for block in moe_blocks(model):
        router = block.gate

        def forced(hidden_states, _router=router):
            flat = hidden_states.reshape(-1, _router.hidden_dim)
            n = flat.shape[0]
            logits = torch.zeros(n, _router.num_experts, dtype=flat.dtype, device=flat.device)
            indices = torch.full((n, 1), expert, device=flat.device)
            weights = torch.ones(n, 1, dtype=torch.float32, device=flat.device)
            return logits, weights, indices

        originals.append((router, router.forward))
        router.forward = forced
    try:
        yield
    finally:
        for router, fwd in originals:
            router.forward = fwd
