"""Paired comparisons on held-out windows, with their uncertainty.

Two routers of one MoE differ by 1-2% on a domain; a figure from one pass over a
few windows cannot tell that from noise. Here every model is scored on the same
windows (each window's summed next-token NLL), and a comparison is paired: the
distance of A from B on a domain is exp(mean NLL difference per token) - 1 (A's
perplexity relative to B's, minus one), and its 95% interval comes from a
bootstrap over that domain's windows, resampled alike for A and B. A beats B only
where the interval of A against B lies wholly below 0. The seed is fixed, so the
same NLLs give the same intervals.
"""

from __future__ import annotations

import math
import random

from frankenmoe.measure.metrics import target_nll

DRAWS, SEED = 2000, 0


def distance(nll: list[float], ref: list[float], tokens: list[int], idx) -> float:
    """exp(mean NLL difference per token) - 1 over the windows `idx`."""
    return math.exp((sum(nll[i] for i in idx) - sum(ref[i] for i in idx)) / sum(tokens[i] for i in idx)) - 1


def interval(values: list[float]) -> list[float]:
    """The central 95% of bootstrap values."""
    s = sorted(values)
    return [s[int(0.025 * len(s))], s[int(0.975 * len(s)) - 1]]


def compare(
    domains: list[str],
    tokens: list[int],
    nll: dict[str, list[float]],
    experts: list[str],
    against: tuple[str, ...] = (),
) -> dict:
    """Per domain: the best of `experts` (lowest perplexity there), and for every
    model its perplexity, its distance from the best expert (`vs_best`) and from each
    model named in `against` (`vs_<name>`), each with its interval; `beats`: the
    pairs [A, B] of models outside `experts` where A beats B."""
    rng = random.Random(SEED)
    out = {}
    for d in sorted(set(domains)):
        idx = [i for i, x in enumerate(domains) if x == d]
        draws = [[rng.choice(idx) for _ in idx] for _ in range(DRAWS)]

        def paired(a: str, b: str) -> dict:
            return {
                "value": distance(nll[a], nll[b], tokens, idx),
                "ci95": interval([distance(nll[a], nll[b], tokens, s) for s in draws]),
            }

        ppl = {m: math.exp(sum(nll[m][i] for i in idx) / sum(tokens[i] for i in idx)) for m in nll}
        best = min(experts, key=lambda e: ppl[e])
        rows = {
            m: {"perplexity": ppl[m], "vs_best": paired(m, best), **{f"vs_{b}": paired(m, b) for b in against}}
            for m in nll
        }
        others = [m for m in nll if m not in experts]
        beats = [[a, b] for a in others for b in others if a != b and paired(a, b)["ci95"][1] < 0]
        out[d] = {
            "windows": len(idx),
            "tokens": sum(tokens[i] for i in idx),
            "best_expert": best,
            "models": rows,
            "beats": beats,
        }
    return out


def window_nlls(logprobs, windows: list[tuple[str, list[int]]]) -> list[float]:
    """Each window's summed next-token NLL (nats) from its log-probs [T, V]."""
    return [target_nll(lp, ids) for lp, (_, ids) in zip(logprobs, windows)]


def per_domain_phrase(domains: dict) -> str:
    """`code: 64 windows, 16384 tokens, best experts[0]; prose: ...` for a table's caption."""
    return "; ".join(
        f"{d}: {r['windows']} windows, {r['tokens']} tokens, best {r['best_expert']}" for d, r in domains.items()
    )


def interval_cell(f: dict) -> str:
    """A distance with its 95% interval, as every paired table prints it: `+1.5% [+0.9%, +2.2%]`."""
    return f"{f['value']:+.1%} [{f['ci95'][0]:+.1%}, {f['ci95'][1]:+.1%}]"


def table_rows(domains: dict, rows: list[str]) -> list[str]:
    """A Markdown table of `rows` (models of `compare`'s answer) by domain: each cell the
    distance from the best expert with its interval."""
    head = ["| routers | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    return head + [
        f"| {m} | " + " | ".join(interval_cell(domains[d]["models"][m]["vs_best"]) for d in domains) + " |"
        for m in rows
    ]
