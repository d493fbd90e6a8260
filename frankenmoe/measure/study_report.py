"""The routing study's outputs: its table (study.md, and the model card's copy when a
recipe sets `card.study`) and its figure (study.png), from a study.json written by
frankenmoe/experiments/study.py. Reading never runs a build."""

from __future__ import annotations

import json
from pathlib import Path

from frankenmoe.errors import InputFileError


def read_study(path: Path, recipe_name: str, key: str) -> dict:
    """A study.json for the recipe named `recipe_name` (`key`: the recipe key that
    named the file, for the one-line error)."""
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(
            f"{key}: {path} not found; run `frankenmoe study` on this recipe first, or remove {key}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputFileError(
            f"{key}: {path} is not a readable study.json ({e}); run `frankenmoe study` again"
        ) from None
    if not isinstance(study, dict) or not isinstance(study.get("results"), dict) or not study["results"]:
        raise InputFileError(f"{key}: {path} is not a study.json written by `frankenmoe study`")
    if study.get("recipe") != recipe_name:
        raise InputFileError(
            f"{key}: {path} is the study of {study.get('recipe')!r}, not of {recipe_name!r}; point it at this "
            "recipe's build/<name>/study/study.json"
        )
    return study


def without_timings(study: dict) -> dict:
    """What a study measured: two studies of the same inputs give the same dict."""
    return {k: v for k, v in study.items() if k != "wall_s"}


def render_for_card(study: dict, gates_key: str) -> str:
    """The study's table for a model card, saying which row this build's routers are."""
    this = [mode for mode, row in study["results"].items() if row.get("keys", {}).get("gates") == gates_key]
    note = (
        f"This model's routers are the `{this[0]}` row."
        if this
        else "This model's routers are none of these rows (the study was made with other settings)."
    )
    return render(study).replace("## Routing study", "### Routing study", 1) + "\n" + note + "\n"


def render(study: dict) -> str:
    domains = sorted(next(iter(study["results"].values()))["per_domain"])
    lines = [
        f"## Routing study: {study['recipe']} (top-{study['top_k']} of {len(study['experts'])} experts)",
        "",
        "Perplexity per domain on the held-out text, and its distance from the best expert on that domain "
        "(+x% is worse).",
        "",
        "| mode | " + " | ".join(f"{d}: ppl (vs best expert, vs base)" for d in domains) + " | usage entropy (bits) | "
        "dead experts |" + (" 4-bit KL |" if "quantized" in next(iter(study["results"].values())) else ""),
        "|---" * (len(domains) + 3 + ("quantized" in next(iter(study["results"].values())))) + "|",
    ]
    for mode, row in study["results"].items():
        cells = [
            f"{p['perplexity']:.2f} ({p['vs_best_expert']:+.1%}, {p['vs_base']:+.1%})"
            for p in (row["per_domain"][d] for d in domains)
        ]
        entropy = sum(row["expert_usage_entropy_bits"].values()) / len(domains)
        dead = "; ".join(dead_expert(d) for d in row["dead_experts"]) or "none"
        dead = f"{row.get('dead_experts_state', 'warn' if row['dead_experts'] else 'pass')}: {dead}"
        quant = ""
        if "quantized" in row:
            q = row["quantized"]
            quant = f" {q['kl_mean']:.4f}" + (f" ({q['state'].replace('_', ' ')})" if "state" in q else "") + " |"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {entropy:.2f} | {dead} |{quant}")
    best = {d: next(iter(study["results"].values()))["per_domain"][d]["best_expert"] for d in domains}
    lines += ["", "Best expert per domain: " + ", ".join(f"{d}: {e}" for d, e in best.items()) + "."]
    return "\n".join(lines) + "\n"


def render_png(study: dict, path: Path) -> None:
    """Per-domain perplexity bars by mode (distance from the best expert), and each
    mode's mean gate weight per layer and expert, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = list(study["results"])
    domains = sorted(study["results"][modes[0]]["per_domain"])
    fig = plt.figure(figsize=(4 + 3 * len(modes) * len(domains) / 2, 6), dpi=100)
    grid = fig.add_gridspec(2, len(modes))
    bars = fig.add_subplot(grid[0, :])
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        values = [100 * study["results"][mode]["per_domain"][d]["vs_best_expert"] for d in domains]
        bars.bar(np.arange(len(domains)) + i * width, values, width, label=mode)
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set_xticks(np.arange(len(domains)) + width * (len(modes) - 1) / 2, domains)
    bars.set_ylabel("perplexity vs best expert (%)")
    bars.legend(ncols=len(modes), fontsize=8)
    bars.set_title(f"{study['recipe']}: which routers serve each domain best (lower is better)")
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(grid[1, i])
        routing = study["results"][mode]["routing"]
        matrix = np.concatenate([np.array(routing[d]["mean_gate_weight"]) for d in domains], axis=1)
        image = ax.imshow(matrix.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        experts = len(routing[domains[0]]["mean_gate_weight"][0])
        ax.set_yticks(range(len(domains) * experts), [f"{d} e{e}" for d in domains for e in range(experts)], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(f"{mode}: mean gate weight", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def dead_expert(d: dict, layers: bool = False) -> str:
    """`expert 1 at 3 layers (best on code)`, or `(best on no domain: nothing to do on this text)`;
    with `layers`, the layers themselves."""
    where = f"layers {', '.join(map(str, d['layers']))}" if layers else f"{len(d['layers'])} layers"
    if "best_on" not in d:
        return f"expert {d['expert']} at {where}"
    why = f"best on {', '.join(d['best_on'])}" if d["best_on"] else "best on no domain: nothing to do on this text"
    return f"expert {d['expert']} at {where} ({why})"
