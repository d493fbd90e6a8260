"""Human-readable verify output: a Markdown summary and the routing heatmap.

Both are rendered from the same `verify.json` numbers, so the card, the PNG and
the JSON always agree.
"""

from __future__ import annotations

from pathlib import Path

from frankenmoe.measure.verdict import markdown_table

HIDDEN = "moe (hidden-state routers)"  # with fitted routers: mergekit's own, for comparison


def render_markdown(report: dict, page_bytes: int | None = None) -> str:
    """verify.md; `page_bytes`: the size of the routing page beside it, linked where one was written."""
    lines = markdown_table(report, "Verification", "verify.fail_on_mismatch")
    for w in report["warnings"]:
        lines.append(f"\n> warning: {w}")
    rr = report["routing_report"]
    fitted = HIDDEN in rr["perplexity"]
    names = ([HIDDEN] if fitted else []) + ["moe", "base"] + [f"experts[{i}]" for i in range(len(rr["experts"]))]
    lines += [
        "",
        "### Perplexity on held-out text, per domain",
        "",
        "| model | " + " | ".join(rr["domains"]) + " |",
        "|---|" + "---|" * len(rr["domains"]),
    ]
    for n in names:
        label = {"moe": "moe (fitted routers)" if fitted else "moe"}.get(n, n)
        if n.startswith("experts["):
            i = int(n[len("experts[") : -1])
            label = f"expert {i} ({rr['experts'][i]})"
        lines.append(f"| {label} | " + " | ".join(f"{rr['perplexity'][n][d]:.2f}" for d in rr["domains"]) + " |")
    if fitted and rr.get("routing_16bit_hidden"):
        lines += [
            "",
            "### Routers: mean gate weight per domain and expert, averaged over layers",
            "",
            "| routers | "
            + " | ".join(f"{d}: expert {e}" for d in rr["domains"] for e in range(len(rr["experts"])))
            + " |",
            "|---|" + "---|" * (len(rr["domains"]) * len(rr["experts"])),
        ]
        for label, key in (("hidden-state", "routing_16bit_hidden"), ("fitted", "routing_16bit")):
            cells = [
                sum(layer[e] for layer in rr[key][d]["mean_gate_weight"]) / len(rr[key][d]["mean_gate_weight"])
                for d in rr["domains"]
                for e in range(len(rr["experts"]))
            ]
            lines.append(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    lines += [
        "",
        "### Routing (16-bit): mean gate weight per layer and expert",
        "",
        "![routing heatmap](routing.png)",
        "",
    ]
    if page_bytes is not None:
        lines += [
            f"Token by token: [routing.html](routing.html) ({page_bytes / 1e6:.2f} MB, one file that works offline) "
            "colours every held-out token by the expert its router chose, at any layer, with the tokens the 4-bit "
            "model routes elsewhere marked.",
            "",
        ]
    return "\n".join(lines) + "\n"


def routing_matrix(routing_report: dict, which: str = "routing_16bit") -> tuple[list[list[float]], list[str]]:
    """Rows: layers; columns: (domain, expert): the mean gate weight."""
    data = routing_report[which]
    cols = [f"{d}\n{e}: {name}" for d in routing_report["domains"] for e, name in enumerate(routing_report["experts"])]
    layers = len(next(iter(data.values()))["mean_gate_weight"])
    rows = [
        [
            data[d]["mean_gate_weight"][layer][e]
            for d in routing_report["domains"]
            for e in range(len(routing_report["experts"]))
        ]
        for layer in range(layers)
    ]
    return rows, cols


def render_routing_png(routing_report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = routing_matrix(routing_report)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 1.0 + 0.45 * len(rows)), dpi=100)
    im = ax.imshow(rows, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), [f"layer {i}" for i in range(len(rows))], fontsize=8)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_title("mean gate weight per domain and expert (16-bit)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version or date: same bytes every build
    plt.close(fig)
