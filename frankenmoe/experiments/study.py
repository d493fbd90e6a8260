"""`frankenmoe study RECIPE`: the recipe's MoE built once per gate mode, side by side.

Which gate initialization suits a user's own experts is a question no tool answered
("Frankly I don't know", mergekit #116). The study builds the recipe through
`evaluate` (and `verify` with `--quantize`) once per mode: mergekit's `hidden`,
`cheap_embed` and `random` routers, and `fitted` (the recipe's own gate mode with
`gates.fit: true`). The builds share the cache, so the sources are resolved once and
a mode already built is not built again. For each mode it reports, on the recipe's
held-out text, the perplexity per domain and its distance from the best expert and
from the base, the routing share and mean gate weight per layer and expert, the
expert-usage entropy and the dead experts; with `--quantize`, the 4-bit parity.

Output: build/<name>/study/study.json, study.md and study.png (per-domain bars by
mode, and the routing heatmaps side by side). Random routers are seeded by
`merge.seed`, so two studies give the same study.json (wall times excepted, under
the key `wall_s`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from frankenmoe.engine.build import build
from frankenmoe.engine.cache import Layout
from frankenmoe.errors import UsageError
from frankenmoe.experiments.executors import InProcess
from frankenmoe.experiments.variants import Variant, build_variants
from frankenmoe.measure.checks import QUANTIZATION_PARITY
from frankenmoe.measure.evaluation import dead_experts
from frankenmoe.measure.metrics import gate_weight_entropy_bits
from frankenmoe.measure.study_report import render, render_png
from frankenmoe.measure.verdict import PASS, WARN, named
from frankenmoe.recipe import Recipe
from frankenmoe.stages.evaluate import reference as evaluate_reference
from frankenmoe.stages.verify import report_dir
from frankenmoe.support.atomic import atomic_folder
from frankenmoe.support.jsonio import write_json

MODES = ("hidden", "cheap_embed", "random", "fitted")


def parse_modes(text: str) -> list[str]:
    """`--modes a,b,...`: each named mode once, in order; none at all is a usage error."""
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modes:
        raise UsageError(f"--modes: {text!r} names no mode; use some of {', '.join(MODES)}")
    for mode in modes:
        variant_check(mode)
    return modes


def variant_check(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"--modes: unknown mode {mode!r}; use some of {', '.join(MODES)}")


def variant(recipe: Recipe, mode: str) -> Recipe:
    """The recipe with one gate mode; `fitted` keeps the recipe's mode and fits."""
    variant_check(mode)
    gates = recipe.gates.model_copy(update={"fit": mode == "fitted"})
    gate_mode = recipe.gate_mode if mode == "fitted" else mode
    # GGUF files are not part of a routing comparison.
    return recipe.model_copy(
        update={"gate_mode": gate_mode, "gates": gates, "gguf": recipe.gguf.model_copy(update={"enabled": False})}
    )


def summarize(reference: dict, verify: dict | None, share: float) -> dict:
    """One mode's row: perplexities against the best expert and the base, routing,
    entropy, dead experts (and 4-bit parity when quantized)."""
    ppl = reference["perplexity"]
    experts = [k for k in ppl if k.startswith("expert ")]
    domains = sorted(ppl["moe"])
    routing = reference["routing_16bit"]
    per_domain = {}
    for d in domains:
        best = min(experts, key=lambda k: ppl[k][d])
        per_domain[d] = {
            "perplexity": ppl["moe"][d],
            "best_expert": best,
            "best_expert_perplexity": ppl[best][d],
            "vs_best_expert": ppl["moe"][d] / ppl[best][d] - 1,
            "base_perplexity": ppl["base"][d],
            "vs_base": ppl["moe"][d] / ppl["base"][d] - 1,
        }
    dead = dead_experts(routing, share)
    for d in dead:  # an expert best on no domain has nothing to do on this text: its death is no loss here
        d["best_on"] = [dom for dom in domains if per_domain[dom]["best_expert"] == f"expert {d['expert']}"]
    row = {
        "per_domain": per_domain,
        "routing": routing,
        "expert_usage_entropy_bits": {d: gate_weight_entropy_bits(routing[d]["mean_gate_weight"]) for d in domains},
        "dead_experts": dead,
        # As verify states it (without verify.fail_on_dead_experts): a dead expert is a warning.
        "dead_experts_state": WARN if dead else PASS,
    }
    if verify is not None:
        q = named(verify, QUANTIZATION_PARITY)
        row["quantized"] = {
            "state": q["state"],
            **{k: q.get(k) for k in ("kl_mean", "top1_agreement", "perplexity_ratio", "per_domain")},
        }
        row["verify"] = verify["headline"]
    return row


def run_study(
    recipe: Recipe,
    modes: Sequence[str],
    quantize: bool,
    build_root: Path,
    stages,
    log: Callable[[str], None] = print,
) -> Path:
    """Build every mode (a sweep over gate modes, through the cache) and write the
    study folder; returns it. A mode that fails stops the study with its error, as
    `frankenmoe build` gives it: its build is rerun alone, every finished stage cached."""
    until = "verify" if quantize else "evaluate"
    for mode in modes:
        variant(recipe, mode)  # every mode named is known before anything runs
    # The modes share the recipe's cache but never publish into its dist/ folder.
    variants = [
        Variant(
            mode,
            mode,
            variant(recipe, mode),
            Layout(build_root, build_root / recipe.name / "study-dist" / mode, recipe.name, variant=f"study.{mode}"),
        )
        for mode in modes
    ]
    log(f"study     {', '.join(modes)}: building through {until}")
    outcomes = build_variants(variants, stages, until, InProcess(), log)
    rows, wall = {}, {}
    for v in variants:
        done = outcomes[v.name]
        if not done.ok:
            build(v.recipe, v.layout, stages, until=until, log=log)  # raises the mode's error
        wall[v.name] = round(sum(done.seconds.values()), 1)
        reference = evaluate_reference(done.results["evaluate"])
        verify = json.loads((report_dir(done.results["verify"]) / "verify.json").read_text()) if quantize else None
        rows[v.name] = summarize(reference, verify, recipe.verify.dead_expert_share)
        rows[v.name]["keys"] = {name: res.key for name, res in sorted(done.results.items())}
        any_ref = reference
    study = {
        "recipe": recipe.name,
        "modes": list(modes),
        "experts": any_ref["expert_sources"],
        "top_k": any_ref["top_k"],
        "dead_expert_share": recipe.verify.dead_expert_share,
        "results": rows,
        "wall_s": wall,
    }
    out = build_root / recipe.name / "study"
    with atomic_folder(out, f"study: disk full while writing {out}; free space and rerun") as tmp:
        write_json(tmp / "study.json", study)
        (tmp / "study.md").write_text(render(study), encoding="utf-8")
        render_png(study, tmp / "study.png")
    return out
