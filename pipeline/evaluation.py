"""The measurements behind `verify`, each a plain function with its own numbers.

16-bit side (the `evaluate` stage, computed once per merge): merge structure,
forced-routing parity, reference log-probs and router weights on held-out text,
per-domain perplexities of the MoE, its sources and the base. 4-bit side (the
`verify` stage): the same pass over the candidate, compared token by token.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from pipeline.corpus import read_documents
from pipeline.progress import progress
from pipeline.routing import forced_expert, moe_blocks

EXPERT_W = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
W_TO_SOURCE = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def eval_windows(files: list[str], tokenizer, seq_len: int, max_tokens: int) -> list[tuple[str, list[int]]]:
    """(domain, seq_len + 1 token ids) windows, the first ones of each domain, an
    equal share of `max_tokens` per domain. The domain is the documents' `domain`
    field, else the file's folder name."""
    by_domain: dict[str, list[int]] = defaultdict(list)
    for f in files:
        for doc in read_documents([Path(f)]):
            domain = doc.get("domain") or Path(f).parent.name
            by_domain[domain].extend(tokenizer(doc["text"], add_special_tokens=False)["input_ids"])
    per_domain = max(1, max_tokens // max(1, len(by_domain)) // seq_len)
    windows = []
    for domain in sorted(by_domain):
        ids = by_domain[domain]
        for i in range(min(per_domain, (len(ids) - 1) // seq_len)):
            windows.append((domain, ids[i * seq_len : (i + 1) * seq_len + 1]))
    return windows


def load_tensors(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


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


def merge_structure(merged: Path, base: Path, experts: list[Path]) -> dict:
    """Bit-for-bit: expert MLPs equal their sources', everything else the base's
    (routers excepted). Also how far each expert's non-MLP weights are from the
    base's: that part of a fully fine-tuned expert is lost in a FrankenMoE."""
    import torch

    moe, base_t = load_tensors(merged), load_tensors(base)
    expert_t = [load_tensors(e) for e in experts]
    mismatches = []
    checked = 0
    for name, t in moe.items():
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
    for e, src in enumerate(expert_t):
        for layer in range(len(moe_layers(moe))):
            for w, proj in W_TO_SOURCE.items():
                if f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight" not in moe:
                    mismatches.append(f"expert {e} layer {layer} {w} missing from the merge")
    deviation = []
    for e, src in enumerate(expert_t):
        groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for name, t in src.items():
            if ".mlp." in name or name not in base_t:
                continue
            g = groups[tensor_group(name)]
            g[0] += float((t.float() - base_t[name].float()).pow(2).sum())
            g[1] += float(base_t[name].float().pow(2).sum())
        deviation.append({k: math.sqrt(d / n) if n else 0.0 for k, (d, n) in sorted(groups.items())})
    return {"tensors_checked": checked, "mismatches": mismatches, "expert_non_mlp_relative_diff": deviation}


def moe_layers(tensors: dict) -> set[int]:
    return {int(n.split(".")[2]) for n in tensors if n.startswith("model.layers.")}


def forced_routing_parity(moe, sources: list, windows) -> list[dict]:
    """Per expert k: max and mean |logit difference| of the MoE routed fully to k vs source k."""
    import torch

    out = []
    for k, src in enumerate(sources):
        worst, total, count = 0.0, 0.0, 0
        with torch.no_grad():
            for _, ids in progress(windows, desc=f"verify: forced routing, expert {k}"):
                x = torch.tensor([ids[:-1]])
                with forced_expert(moe, k):
                    a = moe(x).logits.float()
                d = (a - src(x).logits.float()).abs()
                worst = max(worst, float(d.max()))
                total += float(d.sum())
                count += d.numel()
        out.append({"expert": k, "max_abs": worst, "mean_abs": total / count})
    return out


def forward_with_routing(model, ids):
    """(log-probs [T, V], router weights [L, T, E]) for one window."""
    import torch

    captured = []
    hooks = [b.gate.register_forward_hook(lambda m, i, o: captured.append(torch.softmax(o[0].float(), -1))) for b in moe_blocks(model)]
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids[:-1]])).logits[0].float()
    finally:
        for h in hooks:
            h.remove()
    return torch.log_softmax(logits, -1), torch.stack(captured)


def perplexity(model, windows) -> dict[str, float]:
    """Per-domain perplexity of a causal LM on the windows."""
    import torch

    nll: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    with torch.no_grad():
        for domain, ids in windows:
            lp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].float(), -1)
            t = torch.tensor(ids[1:])
            nll[domain][0] += float(-lp[torch.arange(len(t)), t].sum())
            nll[domain][1] += len(t)
    return {d: math.exp(s / n) for d, (s, n) in sorted(nll.items())}


def routing_stats(router, domains: list[str], seq: int, top_k: int) -> dict:
    """Per domain, layer and expert: share of tokens routed there (top-k) and the
    mean gate weight it gets (top-k renormalized, 0 where not chosen)."""
    import torch

    L, T, E = router.shape
    top = torch.topk(router, top_k, dim=-1)
    chosen = torch.zeros_like(router).scatter(-1, top.indices, 1.0)
    gate = torch.zeros_like(router).scatter(-1, top.indices, top.values / top.values.sum(-1, keepdim=True))
    out = {}
    token_domain = [d for d in domains for _ in range(seq)]
    for d in sorted(set(domains)):
        mask = torch.tensor([td == d for td in token_domain])
        out[d] = {
            "share": chosen[:, mask].mean(1).tolist(),  # [L][E]
            "mean_gate_weight": gate[:, mask].mean(1).tolist(),
        }
    return out


def compare_candidate(model, windows, ref_logprobs, ref_router, top_k: int) -> dict:
    """One streaming pass of the candidate over the windows, against the stored
    16-bit reference: per-token KL(16 || 4), top-1 agreement, perplexities, and
    per layer the router weights' mean |difference| and top-k set agreement."""
    import torch

    kls, agree = [], []
    nll16: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    nll4: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    router4 = []
    for w, (domain, ids) in enumerate(progress(windows, desc="verify: 4-bit vs 16-bit")):
        lp4, r4 = forward_with_routing(model, ids)
        lp16 = ref_logprobs[w].float()
        kls.append((lp16.exp() * (lp16 - lp4)).sum(-1))
        agree.append(lp16.argmax(-1) == lp4.argmax(-1))
        t = torch.tensor(ids[1:])
        idx = torch.arange(len(t))
        nll16[domain][0] += float(-lp16[idx, t].sum())
        nll4[domain][0] += float(-lp4[idx, t].sum())
        nll16[domain][1] += len(t)
        nll4[domain][1] += len(t)
        router4.append(r4)
    kl = torch.cat(kls)
    r4 = torch.cat(router4, dim=1)
    r16 = ref_router.float()
    top16 = torch.topk(r16, top_k, -1).indices.sort(-1).values
    top4 = torch.topk(r4, top_k, -1).indices.sort(-1).values

    def ppl(acc):
        s, n = map(sum, zip(*acc.values()))
        return {"all": math.exp(s / n), **{d: math.exp(a / b) for d, (a, b) in sorted(acc.items())}}

    p16, p4 = ppl(nll16), ppl(nll4)
    return {
        "tokens": int(kl.numel()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(torch.quantile(kl, 0.99)),
        "top1_agreement": float(torch.cat(agree).float().mean()),
        "perplexity_16bit": p16,
        "perplexity_4bit": p4,
        "perplexity_ratio": p4["all"] / p16["all"],
        "router_weight_mae": [float(x) for x in (r4 - r16).abs().mean(dim=(1, 2))],
        "router_topk_agreement": [float(x) for x in (top16 == top4).all(-1).float().mean(1)],
        "router_4bit": r4,
    }
