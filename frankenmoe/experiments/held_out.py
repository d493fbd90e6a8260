"""The study's held-out comparison: every mode, expert and the base on the same
windows, paired, with intervals (frankenmoe/measure/paired.py).

Verify's figures rest on verify.max_tokens from the start of each domain's first
documents: on a 3-expert recipe about 1,300 tokens a domain, where 1-2% is noise.
Here each domain gets up to `tokens` tokens (16,384 by default) in windows spread
over all of its text. The best expert is the MoE with every token forced to it
(which reproduces that source model); each mode's routers are its gates stage's
model. Streamed one layer at a time, as evaluate runs, so no model is held whole.

The per-window NLLs are kept in the study folder under a name made of what they
depend on (each mode's gates key, the base's resolve key, the windows), so a
second study over the same builds reads them instead of measuring again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.experiments.variants import Outcome
from frankenmoe.measure.evaluation import spread_windows
from frankenmoe.measure.paired import DRAWS, compare, window_nlls
from frankenmoe.recipe import Recipe
from frankenmoe.stages.baseline import windows_sha256
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.resolve import model_paths
from frankenmoe.support.hashing import sha256_json
from frankenmoe.support.jsonio import write_json

TOKENS_PER_DOMAIN = 16384


def held_out_comparison(
    recipe: Recipe,
    modes: Sequence[str],
    outcomes: dict[str, Outcome],
    tokens: int,
    out: Path,
    log: Callable[[str], None] = print,
) -> dict:
    """study.json's `held_out`: the windows it measured and, per domain, each model's
    distance from the best expert, from the base and from `hidden` (where studied),
    with intervals, and who beats whom."""
    from transformers import AutoTokenizer

    v = recipe.verify
    first = outcomes[modes[0]].results
    models = {m: routed_model(outcomes[m].results["gates"]) for m in modes}
    tokenizer = AutoTokenizer.from_pretrained(models[modes[0]])
    files = [recipe.path(f) for f in v.files]
    windows = spread_windows(files, tokenizer, v.seq_len, tokens)
    depends = {
        "modes": {m: outcomes[m].results["gates"].key for m in modes},
        "resolve": first["resolve"].key,
        "windows": windows_sha256(windows),
    }
    kept = out / f"held-out-{sha256_json(depends)[:16]}.json"
    if kept.is_file():
        nll = json.loads(kept.read_text(encoding="utf-8"))["nll"]
        log(f"study     held-out NLLs of {len(nll)} models read from {kept.name}")
    else:
        nll = _measure(models, model_paths(first["resolve"])["base"], len(recipe.experts), windows, log)
        out.mkdir(parents=True, exist_ok=True)
        write_json(kept, {"depends": depends, "nll": nll})
    experts = [f"experts[{k}]" for k in range(len(recipe.experts))]
    nll = {m: nll[m] for m in [*experts, "base", *modes]}  # the kept file's keys are sorted: one order for both
    against = ("base", "hidden") if "hidden" in modes else ("base",)
    return {
        "files": list(v.files),
        "seq_len": v.seq_len,
        "tokens_per_domain_asked": tokens,
        "windows": "spread over each domain's text",
        "draws": DRAWS,
        "domains": compare([d for d, _ in windows], [len(w) - 1 for _, w in windows], nll, experts, against),
    }


def _measure(models: dict[str, Path], base: Path, n_experts: int, windows, log) -> dict[str, list[float]]:
    """Each window's summed NLL: the forced experts, the base, then each mode."""
    inputs = [ids[:-1] for _, ids in windows]
    moe = StreamingLM(next(iter(models.values())))
    nll = {}
    for k in range(n_experts):
        nll[f"experts[{k}]"] = window_nlls(
            (lp for lp, _ in moe.run(inputs, expert=k, desc=f"study: expert {k}")), windows
        )
    nll["base"] = window_nlls((lp for lp, _ in StreamingLM(base).run(inputs, desc="study: base")), windows)
    for mode, path in models.items():
        nll[mode] = window_nlls((lp for lp, _ in StreamingLM(path).run(inputs, desc=f"study: {mode}")), windows)
    log(f"study     held-out: {len(nll)} models on {len(windows)} windows")
    return nll
