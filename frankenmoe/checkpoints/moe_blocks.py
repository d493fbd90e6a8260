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

    The other top-k slots get weight exactly 0, so the block's output is exactly
    that expert's MLP output: the MoE should then reproduce the source model
    whose MLPs that expert came from."""
    import torch

    originals = []
    for block in moe_blocks(model):
        router = block.gate

        def forced(hidden_states, _router=router):
            flat = hidden_states.reshape(-1, _router.hidden_dim)
            n, k = flat.shape[0], _router.top_k
            logits = torch.zeros(n, _router.num_experts, dtype=flat.dtype, device=flat.device)
            others = [e for e in range(_router.num_experts) if e != expert][: k - 1]
            indices = torch.tensor([expert, *others], device=flat.device).expand(n, k)
            weights = torch.zeros(n, k, dtype=torch.float32, device=flat.device)
            weights[:, 0] = 1.0
            return logits, weights, indices

        originals.append((router, router.forward))
        router.forward = forced
    try:
        yield
    finally:
        for router, fwd in originals:
            router.forward = fwd
