"""The numbers every comparison reports, each defined once: token KL, negative
log-likelihood and perplexity, top-1 agreement, and the two expert-usage entropies.

verify, the GGUF check, the bench, the study, the router fit and the examples all
call these, so "mean KL" or "perplexity" means the same computation wherever it is
printed. Log-prob tensors are [T, V]: natural-log probabilities of the next token
over the vocabulary, one row per position. Torch is imported by the caller's tensors
only; nothing here imports it at module load.
"""

from __future__ import annotations

import math


def kl_terms(ref, cand):
    """p_v * (log p_v - log q_v) for every position and token v: [T, V], with
    p = exp(ref), q = exp(cand). Summed over V it is KL(P || Q) of each position."""
    return ref.exp() * (ref - cand)


def token_kl(ref, cand):
    """Per-position KL(ref || cand) = sum_v p_v (log p_v - log q_v), in nats: [T]."""
    return kl_terms(ref, cand).sum(-1)


def total_kl(ref, cand) -> float:
    """The sum of token_kl over every position, reduced over all [T, V] terms at once."""
    return float(kl_terms(ref, cand).sum())


def top1_agreement(ref, cand):
    """Per position, whether both put their highest probability on the same token: [T] bool."""
    return ref.argmax(-1) == cand.argmax(-1)


def target_nll(logprobs, ids: list[int]) -> float:
    """Negative log-likelihood, in nats, of the window's next tokens: -sum_t log p(ids[t + 1] | ids[: t + 1]),
    from the [T, V] log-probs of a window of T + 1 token ids."""
    import torch

    t = torch.tensor(ids[1:])
    return float(-logprobs[torch.arange(len(t)), t].sum())


def perplexity(nll: float, tokens: int = 1) -> float:
    """exp(nll / tokens): perplexity from a summed negative log-likelihood over
    `tokens` tokens (or from a mean, with tokens 1)."""
    return math.exp(nll / tokens)


def assignment_entropy_bits(counts) -> float:
    """Entropy, in bits, of the share of top-k assignments each expert got at one
    layer: -sum_e p_e log2 p_e with p_e = counts_e / sum(counts) (a torch tensor,
    computed in its dtype). log2(E) when every expert is chosen equally often, 0
    when one is always chosen. The router fit's measure (gates' record)."""
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def gate_weight_entropy_bits(weights: list[list[float]]) -> float:
    """Entropy, in bits, of the routed gate weight per expert, averaged over layers:
    per layer -sum_e p_e log2 p_e with p_e = w_e / sum(w), w_e the mean top-k
    renormalized gate weight expert e gets. Unlike assignment_entropy_bits it
    counts how much weight an expert gets, not how often it is chosen. The study's
    measure."""
    out = []
    for layer in weights:
        total = sum(layer) or 1.0
        out.append(-sum((w / total) * math.log2(w / total) for w in layer if w > 0))
    return sum(out) / len(out)
