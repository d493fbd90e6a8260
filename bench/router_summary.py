"""The router probe's results across recipes (issue 49's decision table).

One row per recipe and domain, from every committed bench/router-probe-*.json: the
distance from the domain's best expert, with its 95% paired interval, of mergekit's
routers, of the best_expert start alone, and of the fit `gates.fit: true` runs by
default (the probe's `adam 5e-3`: the start, then Adam at 5e-3 after a 10-step
warm-up, 60 steps at most); whether that fit meets issue 49's target there (the
upper end within 2% of the best expert, and below mergekit's routers where those are
worse than 2%); and the probe variant with the lowest upper end on that domain.
Probes of one recipe share their windows, so a variant's row is the same in each.

    python -m bench.router_summary   # writes bench/router-summary.md
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.router_probe import VARIANTS
from frankenmoe.measure.paired import interval_cell

BENCH = Path(__file__).resolve().parent
TARGET = 0.02  # issue 49: the interval's upper end within 2% of the best expert
FITTED = "adam 5e-3"  # the probe's variant that gates.fit's defaults run
COLUMNS = ("hidden", "start", FITTED)


def merged(docs: list[dict]) -> dict[str, dict[str, dict]]:
    """Per recipe and domain, every variant any probe of that recipe measured."""
    out: dict[str, dict[str, dict]] = {}
    for doc in docs:
        for domain, r in doc["domains"].items():
            out.setdefault(doc["recipe"], {}).setdefault(domain, {}).update(r["models"])
    return out


def met(models: dict) -> bool:
    """Issue 49's target for the default fit on one domain."""
    fit, hidden = models[FITTED], models["hidden"]["vs_best"]["value"]
    below_hidden = hidden <= TARGET or fit["vs_hidden"]["ci95"][1] < 0
    return fit["vs_best"]["ci95"][1] <= TARGET and below_hidden


def summary(docs: list[dict]) -> str:
    lines = [
        "Distance from each domain's best expert (perplexity ratio minus one, 95% paired bootstrap interval over "
        f"windows), per recipe and domain; target: the upper end at most {TARGET:+.0%}, and below mergekit's routers "
        "where those are worse.",
        "",
        "| recipe | domain | mergekit's routers | best_expert start | start + Adam 5e-3 (default fit) | target met | "
        "lowest upper end (variant) |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, domains in sorted(merged(docs).items()):
        for domain, models in sorted(domains.items()):
            if FITTED not in models:
                continue
            fitted = [v for v in VARIANTS if v in models and v != "hidden"]
            best = min(fitted, key=lambda v: models[v]["vs_best"]["ci95"][1])
            upper = models[best]["vs_best"]["ci95"][1]
            lines.append(
                f"| {recipe} | {domain} | "
                + " | ".join(interval_cell(models[c]["vs_best"]) for c in COLUMNS)
                + f" | {'yes' if met(models) else 'no'} | {upper:+.1%} ({best}) |"
            )
    return "\n".join(lines) + "\n"


def committed() -> list[dict]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in sorted(BENCH.glob("router-probe-*.json"))]


def main() -> None:
    text = summary(committed())
    print(text, end="")
    (BENCH / "router-summary.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
