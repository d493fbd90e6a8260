"""The measurements behind `verify`, each a plain function with its own numbers.

16-bit side (the `evaluate` stage, computed once per merge): merge structure,
forced-routing parity, reference log-probs and router weights on held-out text,
per-domain perplexities of the MoE, its sources and the base. 4-bit side (the
`verify` stage): the same pass over the candidate, compared token by token.
Every model pass streams layers from disk (frankenmoe/checkpoints/streaming.py) and every
tensor comparison reads one tensor at a time, so memory stays bounded by one
layer whatever the model's size.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from frankenmoe.checkpoints.streaming import CheckpointReader
from frankenmoe.measure.documents import ForcedRouting, MergeStructure, RoutingStats
from frankenmoe.measure.metrics import perplexity, target_nll, token_kl, top1_agreement, total_kl
from frankenmoe.support.progress import progress
from frankenmoe.text.corpus import read_documents

EXPERT_W = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
W_TO_SOURCE = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def eval_windows(
    files: list[Path], tokenizer, seq_len: int, max_tokens: int, by_file_name: bool = False
) -> list[tuple[str, list[int]]]:
    """(domain, seq_len + 1 token ids) windows, an equal share of `max_tokens` per
    domain, the first ones of each (verify's published numbers rest on them). The
    domain is the documents' `domain` field, else the file's folder name (its name
    without suffix with `by_file_name`)."""
    by_domain = _tokens_by_domain(files, tokenizer, by_file_name)
    return _windows(by_domain, seq_len, max(1, max_tokens // max(1, len(by_domain)) // seq_len), spread=False)


def spread_windows(files: list[Path], tokenizer, seq_len: int, tokens_per_domain: int) -> list[tuple[str, list[int]]]:
    """`tokens_per_domain` tokens of every domain (fewer where its text ends), in
    windows evenly spaced over all of its text, so they come from many documents, not
    the first few: the held-out text of the study and the router probe, whose figures
    are per domain however many domains the files hold."""
    by_domain = _tokens_by_domain(files, tokenizer, False)
    return _windows(by_domain, seq_len, max(1, tokens_per_domain // seq_len), spread=True)


def _tokens_by_domain(files: list[Path], tokenizer, by_file_name: bool) -> dict[str, list[int]]:
    by_domain: dict[str, list[int]] = defaultdict(list)
    for f in files:
        for doc in read_documents([f]):
            domain = doc.get("domain") or (f.stem if by_file_name else f.parent.name)
            by_domain[domain].extend(tokenizer(doc["text"], add_special_tokens=False)["input_ids"])
    return by_domain


def _windows(
    by_domain: dict[str, list[int]], seq_len: int, per_domain: int, spread: bool
) -> list[tuple[str, list[int]]]:
    windows = []
    for domain in sorted(by_domain):
        ids = by_domain[domain]
        available = (len(ids) - 1) // seq_len
        taken = min(per_domain, available)
        starts = [i * available // taken for i in range(taken)] if spread else range(taken)
        for i in starts:
            windows.append((domain, ids[i * seq_len : (i + 1) * seq_len + 1]))
    return windows


def tensor_group(name: str) -> str:
    if "embed_tokens" in name:
        return "embeddings"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".self_attn." in name:
        return "attention"
    if "norm" in name:
        return "norms"
    return "other"


def merge_structure(merged: Path, base: Path, experts: list[Path]) -> MergeStructure:
    """Bit-for-bit: expert MLPs equal their sources', everything else the base's
    (routers excepted). Also how far each expert's non-MLP weights are from the
    base's: that part of a fully fine-tuned expert is lost in a FrankenMoE."""
    import torch

    moe, base_t = CheckpointReader(merged), CheckpointReader(base)
    expert_t = [CheckpointReader(e) for e in experts]
    mismatches = []
    checked = 0
    for name in progress(sorted(moe.files), desc="verify: merge structure"):
        t = moe.get(name)
        if m := EXPERT_W.match(name):
            layer, e, w = m.groups()
            src_name = f"model.layers.{layer}.mlp.{W_TO_SOURCE[w]}.weight"
            src = expert_t[int(e)].get(src_name)
            where = f"expert {e} ({src_name} of {experts[int(e)].name})"
        elif ".block_sparse_moe.gate." in name:
            continue
        else:
            src, where = base_t.get(name), "base"
        checked += 1
        if src is None or src.shape != t.shape or not torch.equal(src.to(t.dtype), t):
            mismatches.append(f"{name} differs from {where}")
    layers = len(moe_layers(moe.files))
    for e in range(len(expert_t)):
        for layer in range(layers):
            for w in W_TO_SOURCE:
                if f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight" not in moe.files:
                    mismatches.append(f"expert {e} layer {layer} {w} missing from the merge")
    deviation = []
    for e, src in enumerate(expert_t):
        groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for name in sorted(src.files):
            if ".mlp." in name or name not in base_t.files:
                continue
            t, b = src.get(name).float(), base_t.get(name).float()
            g = groups[tensor_group(name)]
            g[0] += float((t - b).pow(2).sum())
            g[1] += float(b.pow(2).sum())
        deviation.append({k: math.sqrt(d / n) if n else 0.0 for k, (d, n) in sorted(groups.items())})
    return MergeStructure(tensors_checked=checked, mismatches=mismatches, expert_non_mlp_relative_diff=deviation)


def moe_layers(names) -> set[int]:
    return {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}


def forced_routing_parity(moe, sources: list, windows) -> list[ForcedRouting]:
    """Per expert k, the MoE routed fully to k against source k (both StreamingLM, so
    neither is ever held whole): max and mean |log-prob difference| (0 when the
    source shares the base's non-MLP weights), and how much of the expert survives
    the merge: mean KL(source || forced MoE) and both perplexities."""
    inputs = [ids[:-1] for _, ids in windows]
    out = []
    for k, src in enumerate(sources):
        worst, total, count, kl, nll_moe, nll_src = 0.0, 0.0, 0, 0.0, 0.0, 0.0
        pairs = zip(
            moe.run(inputs, expert=k, desc=f"verify: forced routing, expert {k}"),
            src.run(inputs, desc=f"verify: source of expert {k}"),
            windows,
        )
        for (a, _), (b, _), (_, ids) in pairs:
            d = (a - b).abs()
            worst = max(worst, float(d.max()))
            total += float(d.sum())
            count += d.numel()
            kl += total_kl(b, a)
            nll_moe += target_nll(a, ids)
            nll_src += target_nll(b, ids)
        tokens = count // max(1, d.shape[-1])
        out.append(
            ForcedRouting(
                expert=k,
                max_abs=worst,
                mean_abs=total / count,
                kl_mean=kl / tokens,
                perplexity_forced_moe=perplexity(nll_moe, tokens),
                perplexity_source=perplexity(nll_src, tokens),
            )
        )
    return out


def perplexity_of(logprobs, windows) -> dict[str, float]:
    """Per-domain perplexity from per-window log-probs [T, V] of the next token."""
    nll: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for lp, (domain, ids) in zip(logprobs, windows):
        nll[domain][0] += target_nll(lp, ids)
        nll[domain][1] += len(ids) - 1
    return {d: perplexity(s, n) for d, (s, n) in sorted(nll.items())}


def lm_perplexity(lm, windows, desc: str = "verify: perplexity") -> dict[str, float]:
    """Per-domain perplexity of a StreamingLM on the windows."""
    return perplexity_of((lp for lp, _ in lm.run([ids[:-1] for _, ids in windows], desc=desc)), windows)


def chosen_experts(router, top_k: int):
    """Each token's top-k experts at each layer, heaviest first, and their gate weights
    renormalized over the k (as Mixtral weighs their outputs): ([L, T, k], [L, T, k]).
    One definition for verify's numbers and the routing page's colours."""
    top = router.topk(top_k, dim=-1)
    return top.indices, top.values / top.values.sum(-1, keepdim=True)


def gate_weights(router, top_k: int):
    """Each token's renormalized top-k gate weights spread over all experts, 0 where
    not chosen: [L, T, E], what each expert's output is weighed by."""
    import torch

    indices, weights = chosen_experts(router, top_k)
    return torch.zeros_like(router).scatter(-1, indices, weights)


def routing_stats(router, domains: list[str], seq: int, top_k: int) -> RoutingStats:
    """Per domain, layer and expert: share of tokens routed there (top-k), share whose
    heaviest expert it is (top-1), and the mean gate weight it gets (top-k
    renormalized, 0 where not chosen)."""
    import torch

    indices, _ = chosen_experts(router, top_k)
    chosen = torch.zeros_like(router).scatter(-1, indices, 1.0)
    first = torch.zeros_like(router).scatter(-1, indices[..., :1], 1.0)
    gate = gate_weights(router, top_k)
    out: RoutingStats = {}
    token_domain = [d for d in domains for _ in range(seq)]
    for d in sorted(set(domains)):
        mask = torch.tensor([td == d for td in token_domain])
        out[d] = {
            "share": chosen[:, mask].mean(1).tolist(),  # [L][E]
            "top1_share": first[:, mask].mean(1).tolist(),
            "mean_gate_weight": gate[:, mask].mean(1).tolist(),
        }
    return out


def routing_changes(r16, r4, top_k: int) -> dict:
    """Per layer, how many tokens the candidate sends elsewhere: to another top-k set
    (which experts run) or to another heaviest expert (the routing page marks these
    tokens), and the mean share of each token's output weight that stays on the same
    experts (the sum over experts of the lesser of the two gate weights): a swapped
    second expert that carries 5% of the weight costs 5%, not the whole token."""
    import torch

    i16, _ = chosen_experts(r16, top_k)
    i4, _ = chosen_experts(r4, top_k)
    same_set = (i16.sort(-1).values == i4.sort(-1).values).all(-1)
    kept = torch.minimum(gate_weights(r16, top_k), gate_weights(r4, top_k)).sum(-1).mean(1)
    return {
        "router_topk_agreement": [float(x) for x in same_set.float().mean(1)],
        "tokens_topk_changed": [int(x) for x in (~same_set).sum(1)],
        "tokens_top1_changed": [int(x) for x in (i16[..., 0] != i4[..., 0]).sum(1)],
        "routed_weight_kept": [float(x) for x in kept],
    }


def dead_experts(routing: RoutingStats, share: float) -> list[dict]:
    """Experts that get less than `share` of the routed weight at a layer on every
    domain, their own included: [{expert, layers, largest}] (largest: the most
    weight any domain gives it at those layers)."""
    domains = sorted(routing)
    weights = {d: routing[d]["mean_gate_weight"] for d in domains}
    layers, experts = len(weights[domains[0]]), len(weights[domains[0]][0])
    out = []
    for e in range(experts):
        dead = [layer for layer in range(layers) if all(weights[d][layer][e] < share for d in domains)]
        if dead:
            out.append(
                {"expert": e, "layers": dead, "largest": max(weights[d][layer][e] for d in domains for layer in dead)}
            )
    return out


def logprob_parity(candidate_logprobs, windows, ref_logprobs) -> dict:
    """A candidate's log-probs (one tensor per window) against the stored 16-bit
    reference: per-token KL(16 || candidate), top-1 agreement and perplexities,
    overall and per domain."""
    import torch

    kls, agree, doms = [], [], []
    nll16: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    nllc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for w, (lpc, (domain, ids)) in enumerate(zip(candidate_logprobs, windows)):
        lp16 = ref_logprobs[w].float()
        kls.append(token_kl(lp16, lpc))
        agree.append(top1_agreement(lp16, lpc))
        doms += [domain] * len(ids[1:])
        nll16[domain][0] += target_nll(lp16, ids)
        nllc[domain][0] += target_nll(lpc, ids)
        nll16[domain][1] += len(ids) - 1
        nllc[domain][1] += len(ids) - 1
    kl, top = torch.cat(kls), torch.cat(agree).float()

    def ppl(acc):
        s, n = map(sum, zip(*acc.values()))
        return {"all": perplexity(s, n), **{d: perplexity(a, b) for d, (a, b) in sorted(acc.items())}}

    p16, pc = ppl(nll16), ppl(nllc)
    per_domain = {}
    for d in sorted(set(doms)):
        mask = torch.tensor([x == d for x in doms])
        per_domain[d] = {
            "kl_mean": float(kl[mask].mean()),
            "kl_p99": float(torch.quantile(kl[mask], 0.99)),
            "top1_agreement": float(top[mask].mean()),
            "perplexity_ratio": pc[d] / p16[d],
        }
    return {
        "tokens": int(kl.numel()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(torch.quantile(kl, 0.99)),
        "top1_agreement": float(top.mean()),
        "perplexity_16bit": p16,
        "perplexity_candidate": pc,
        "perplexity_ratio": pc["all"] / p16["all"],
        "per_domain": per_domain,
    }


def compare_candidate(lm, windows, ref_logprobs, ref_router, top_k: int) -> dict:
    """One layer-streaming pass of the candidate (a StreamingLM) over the windows, against the stored
    16-bit reference: per-token KL(16 || 4), top-1 agreement, perplexities (overall and
    per domain), and per layer the router weights' mean |difference| and top-k set agreement."""
    import torch

    router4 = []

    def logprobs():
        for lp4, r4 in lm.run([ids[:-1] for _, ids in windows], desc="verify: 4-bit vs 16-bit"):
            router4.append(r4)
            yield lp4

    cmp = logprob_parity(logprobs(), windows, ref_logprobs)
    r4 = torch.cat(router4, dim=1)
    r16 = ref_router.float()
    return {
        **{k: cmp[k] for k in ("tokens", "kl_mean", "kl_p99", "top1_agreement", "perplexity_16bit")},
        "perplexity_4bit": cmp["perplexity_candidate"],
        "perplexity_ratio": cmp["perplexity_ratio"],
        "per_domain": cmp["per_domain"],
        "router_weight_mae": [float(x) for x in (r4 - r16).abs().mean(dim=(1, 2))],
        **routing_changes(r16, r4, top_k),
        "router_4bit": r4,
    }
