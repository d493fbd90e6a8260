"""The reports of a sweep and of its preset, the routing study: one writer
(`write_report`: the JSON, its table, its figure and the log of any bug's traceback,
each file whole) and the tables and figures it writes. A sweep's table and figure
(sweep.md, sweep.png) show every variant's quality per domain and its 4-bit loss
against 4-bit size with the Pareto front; the study's (study.md, and the model
card's copy when a recipe sets `card.study`; study.png) show each gate mode against
the best expert and the base, with its routing. Every figure is read from the JSON
(sweep.json, study.json), and reading never runs a build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from frankenmoe.errors import InputFileError
from frankenmoe.measure.paired import per_domain_phrase, table_rows
from frankenmoe.support.atomic import atomic_files
from frankenmoe.support.jsonio import write_json


def write_report(
    out: Path,
    stem: str,
    doc: dict | None,
    table: Callable[[dict], str],
    figure: Callable[[dict, Path], None],
    traces: list[str],
) -> None:
    """`out/<stem>.json`, `.md` and `.png` from `doc` (none when `doc` is None: a study
    whose mode failed), and `<stem>.log` with the tracebacks of bugs, or no log at all
    (an earlier run's would name bugs this one did not meet)."""
    with atomic_files(out, f"{stem}: disk full while writing {out}; free space and rerun") as tmp:
        if doc is not None:
            write_json(tmp / f"{stem}.json", doc)
            (tmp / f"{stem}.md").write_text(table(doc), encoding="utf-8")
            figure(doc, tmp / f"{stem}.png")
        if traces:
            (tmp / f"{stem}.log").write_text("\n".join(traces), encoding="utf-8")
    if not traces:
        (out / f"{stem}.log").unlink(missing_ok=True)


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
    return render_study(study).replace("## Routing study", "### Routing study", 1) + "\n" + note + "\n"


def render_study(study: dict) -> str:
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
    for mode in study["modes"]:  # the order the study ran them (study.json's keys are sorted)
        row = study["results"][mode]
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
    lines += held_out_lines(study["held_out"], study["modes"]) if "held_out" in study else []
    pages = study.get("routing_pages", {})
    return "\n".join(lines + page_links({m: pages[m] for m in study["modes"] if m in pages}, "mode")) + "\n"


def held_out_lines(held: dict, modes: list[str]) -> list[str]:
    """The paired comparison on more text: each mode's and the base's distance from each
    domain's best expert with its 95% interval, and which mode beats which."""
    domains = held["domains"]
    caption = (
        "Paired, on more text: perplexity relative to each domain's best expert, minus one, with its 95% "
        f"interval (a bootstrap over windows, {held['draws']} draws, the same windows for every row); "
        f"{per_domain_phrase(domains)}."
    )
    verdicts = [f"{d}: " + ", ".join(f"{a} beats {b}" for a, b in r["beats"]) for d, r in domains.items() if r["beats"]]
    return [
        "",
        caption,
        "",
        *table_rows(domains, [*modes, "base"]),
        "",
        "Beats (its interval against the other wholly below 0): " + ("; ".join(verdicts) or "none") + ".",
    ]


def page_links(pages: dict[str, str], what: str) -> list[str]:
    """A line linking each routing page: the same held-out tokens, coloured by each {what}'s routers."""
    if not pages:
        return []
    links = ", ".join(f"[{name}]({rel})" for name, rel in pages.items())
    return ["", f"How each {what} routes the held-out text, token by token (routing pages): {links}."]


def render_study_png(study: dict, path: Path) -> None:
    """Per-domain perplexity bars by mode (distance from the best expert), and each
    mode's mean gate weight per layer and expert, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = study["modes"]
    domains = sorted(study["results"][modes[0]]["per_domain"])
    fig = plt.figure(figsize=(4 + 3 * len(modes) * len(domains) / 2, 6), dpi=100)
    grid = fig.add_gridspec(2, len(modes))
    bars = fig.add_subplot(grid[0, :])
    width = 0.8 / len(modes)
    held = study.get("held_out", {}).get("domains")
    for i, mode in enumerate(modes):
        if held:  # the paired figures, with their intervals
            f = [held[d]["models"][mode]["vs_best"] for d in domains]
            values = [100 * x["value"] for x in f]
            errors = [[100 * (x["value"] - x["ci95"][0]) for x in f], [100 * (x["ci95"][1] - x["value"]) for x in f]]
        else:
            values = [100 * study["results"][mode]["per_domain"][d]["vs_best_expert"] for d in domains]
            errors = None
        bars.bar(np.arange(len(domains)) + i * width, values, width, label=mode, yerr=errors, capsize=2)
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


def render_sweep(doc: dict) -> str:
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
    return "\n".join(lines + page_links(doc.get("routing_pages", {}), "variant")) + "\n"


def render_sweep_png(doc: dict, path: Path) -> None:
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
