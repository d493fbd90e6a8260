"""The sweep's table (sweep.md) and figure (sweep.png), from the sweep.json that
frankenmoe/experiments/sweep.py writes: per-domain quality by variant, and 4-bit loss against
4-bit size with the Pareto front marked. Every figure here is read from sweep.json."""

from __future__ import annotations

from pathlib import Path

from frankenmoe.measure.study_report import dead_expert


def _domains(doc: dict) -> list[str]:
    for r in doc["variants"]:
        if "measured" in r:
            return sorted(r["measured"]["per_domain"])
    return []


def _cell(row: dict, domain: str) -> str:
    d = row["measured"]["per_domain"][domain]
    return f"{d['perplexity']:.3f} ({100 * d['vs_best_expert']:+.1f}%)"


def _dead(dead: list[dict]) -> str:
    """`expert 1 at layers 0, 2 (best on code)` for each expert that gets almost no weight."""
    return "; ".join(dead_expert(d, layers=True) for d in dead)


def render(doc: dict) -> str:
    domains = _domains(doc)
    front = set(doc["pareto"])
    lines = [
        f"## Sweep {doc['sweep']}: {len(doc['variants'])} variants of {doc['recipe']}",
        "",
        "Perplexity per domain on the recipe's held-out text (vs the best expert on that domain; +x% is worse), "
        "dead experts in the 16-bit routing, and the 4-bit model's size and loss (mean KL to the 16-bit model). "
        "Pareto: no other variant is both smaller and closer to its 16-bit model.",
        "",
        "| variant | values | "
        + "".join(f"{d}: ppl (vs best expert) | " for d in domains)
        + "dead experts | 4-bit MB | 4-bit mean KL | Pareto | state |",
        "|---|---|" + "---|" * len(domains) + "---|---|---|---|---|",
    ]
    for r in doc["variants"]:
        m = r.get("measured")
        cells = [_cell(r, d) if m else "-" for d in domains]
        dead = "-" if not m else (_dead(m["dead_experts"]) or "none")
        q = (m or {}).get("quantized")
        size = f"{r['awq_bytes'] / 1e6:.1f}" if "awq_bytes" in r else "-"
        kl = f"{q['kl_mean']:.4f}" if q else "-"
        state = r["state"] if not r.get("error") else f"{r['state']}: " + "; ".join(r["error"])
        pareto = "yes" if r["name"] in front else ""
        lines.append(
            f"| {r['name']} | {r['label']} | " + "".join(c + " | " for c in cells) + f"{dead} | {size} | "
            f"{kl} | {pareto} | {state} |"
        )
    return "\n".join(lines) + "\n"


def render_png(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    domains = _domains(doc)
    rows = [r for r in doc["variants"] if "measured" in r]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        values = [100 * r["measured"]["per_domain"][d]["vs_best_expert"] for d in domains]
        bars.bar(np.arange(len(domains)) + i * width, values, width, label=r["name"])
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set_xticks(np.arange(len(domains)) + width * (len(rows) - 1) / 2, domains)
    bars.set_ylabel("perplexity vs best expert (%)")
    bars.set_title(f"{doc['sweep']}: quality per domain (lower is better)")
    if rows:  # none when no variant measured anything
        bars.legend(fontsize=7)
    points = [
        (r["name"], r["awq_bytes"] / 1e6, r["measured"]["quantized"]["kl_mean"])
        for r in rows
        if "awq_bytes" in r and "quantized" in r["measured"]
    ]
    front = set(doc["pareto"])
    for name, size, kl in points:
        on = name in front
        scatter.scatter([size], [kl], marker="*" if on else "o", s=120 if on else 40, color="C3" if on else "C0")
        scatter.annotate(name, (size, kl), fontsize=7, xytext=(4, 4), textcoords="offset points")
    line = sorted((s, k) for n, s, k in points if n in front)
    if line:
        scatter.plot([s for s, _ in line], [k for _, k in line], color="C3", linewidth=1, label="Pareto front")
        scatter.legend(fontsize=7)
    scatter.set_xlabel("4-bit model size (MB)")
    scatter.set_ylabel("4-bit loss: mean KL to the 16-bit model")
    scatter.set_title("4-bit loss vs size" if points else "4-bit loss vs size: no variant quantized")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
