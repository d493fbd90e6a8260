"""`frankenmoe study RECIPE`: the recipe's MoE built once per gate mode, side by side.

Which gate initialization suits a user's own experts is a question no tool answered
("Frankly I don't know", mergekit #116). The study is a sweep with a preset: one
variant per mode, built by the sweep's machinery through `evaluate` (and `verify`
with `--quantize`): mergekit's `hidden`, `cheap_embed` and `random` routers, and
`fitted` (the recipe's own gate mode with `gates.fit: true`). The variants share the
cache, so the sources are resolved once and a mode already built is not built again;
a mode that fails ends the study with the error its run reported, as a sweep's row
gives it. For each mode it reports, on the recipe's held-out text, the perplexity
per domain and its distance from the best expert and from the base, the routing
share and mean gate weight per layer and expert, the expert-usage entropy and the
dead experts; with `--quantize`, the 4-bit parity. The distances are measured again
on more text, paired, with 95% intervals (`held_out`, frankenmoe/experiments/held_out.py):
the study's verdict on which routers serve a domain best.

Output, by the sweep's report writer: build/<name>/study/study.json, study.md and
study.png (per-domain bars by mode, and the routing heatmaps side by side), and each
mode's routing page, study/routing/<mode>.html. Random routers are seeded by
`merge.seed`, so two studies give the same study.json (wall times excepted, under
the key `wall_s`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from frankenmoe.errors import UsageError
from frankenmoe.experiments.executors import InProcess
from frankenmoe.experiments.held_out import TOKENS_PER_DOMAIN, held_out_comparison
from frankenmoe.experiments.routing_pages import write_routing_pages
from frankenmoe.experiments.sweep import Point, measure_variants, plan_points, traces
from frankenmoe.experiments.variants import Outcome
from frankenmoe.measure.sweep_report import render_study, render_study_png, write_report
from frankenmoe.recipe import Recipe
from frankenmoe.stages.evaluate import reference

MODES = ("hidden", "cheap_embed", "random", "fitted")


def parse_modes(text: str) -> list[str]:
    """`--modes a,b,...`: each named mode once, in order; none at all is a usage error."""
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modes:
        raise UsageError(f"--modes: {text!r} names no mode; use some of {', '.join(MODES)}")
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"--modes: unknown mode {mode!r}; use some of {', '.join(MODES)}")
    return modes


def mode_point(mode: str, gate_mode: str) -> Point:
    """The preset's variant for one mode: `fitted` keeps the recipe's gate mode and fits.
    GGUF files are not part of a routing comparison."""
    fitted = mode == "fitted"
    return Point(mode, mode, {"gate_mode": gate_mode if fitted else mode, "gates.fit": fitted, "gguf.enabled": False})


def study_doc(
    recipe: Recipe, rows: list[dict], outcomes: dict[str, Outcome], pages: dict[str, str], held_out: dict
) -> dict:
    """study.json: each mode's measured row and stage keys, the experts it compared,
    the paired held-out comparison, and each mode's routing page (relative to the
    study folder)."""
    any_ref = reference(outcomes[rows[0]["name"]].results["evaluate"])
    return {
        "recipe": recipe.name,
        "modes": [r["name"] for r in rows],
        "experts": any_ref.expert_sources,
        "top_k": any_ref.top_k,
        "dead_expert_share": recipe.verify.dead_expert_share,
        "results": {r["name"]: {**r["measured"], "keys": r["keys"]} for r in rows},
        "held_out": held_out,
        "routing_pages": pages,
        "wall_s": {r["name"]: round(sum(outcomes[r["name"]].seconds.values()), 1) for r in rows},
    }


def run_study(
    recipe_file: Path,
    recipe: Recipe,
    modes: Sequence[str],
    quantize: bool,
    build_root: Path,
    stages,
    log: Callable[[str], None] = print,
    tokens: int = TOKENS_PER_DOMAIN,
) -> tuple[Path, dict | None]:
    """Build every mode (the preset sweep, through the cache) and write the study
    folder; returns it, and the first mode that failed (its row: `error` and
    `exit_code`), in which case no study.json is written."""
    until = "verify" if quantize else "evaluate"
    points = [mode_point(mode, recipe.gate_mode) for mode in modes]
    # The modes share the recipe's cache but never publish into its dist/ folder.
    planned = plan_points(recipe_file, points, build_root, build_root / recipe.name / "study-dist", "study")
    log(f"study     {', '.join(modes)}: building through {until}")
    rows, outcomes = measure_variants(planned, stages, until, InProcess(), log)
    out = build_root / recipe.name / "study"
    bugs = traces(rows, outcomes, out / "study.log")
    failed = next((r for r in rows if r["state"] != "built"), None)
    doc = None
    if failed is None:
        pages = write_routing_pages([p.variant for p in planned if p.variant], outcomes, out)
        held_out = held_out_comparison(recipe, list(modes), outcomes, tokens, out, log)
        doc = study_doc(recipe, rows, outcomes, pages, held_out)
    write_report(out, "study", doc, render_study, render_study_png, bugs)
    return out, failed
