"""Router probe (issue 49): router variants of one recipe scored in one process.

The merge is loaded once; each variant sets every layer's router, then runs the
held-out windows (verify.files, spread over all of each domain's text, not its
first documents) and keeps each window's summed NLL. Each domain is compared with
its best expert (every token forced to the expert that models that domain best,
which reproduces that source model) and with mergekit's routers, paired over
windows with bootstrap intervals (frankenmoe/measure/paired.py); `beats` in the
JSON lists, per domain, the variants whose interval against another lies below 0.

Variants measured so far:
- `hidden`: mergekit's routers as merged (the recipe's gate_mode);
- `start`: `gates.start: best_expert` alone (router_fit, no Adam step), on the
  recipe's `gates.files`;
- `start x2`, `x4`, `x8`: the start's router weights scaled, so each router's
  softmax is sharper (top-k sets unchanged; the weights inside them move toward one expert);
- `start 128 windows`: the start with its classifiers fitted on up to 128 windows
  per fitting file instead of 32 (more text against misrouting on unseen text);
  `start 128 windows even`: as many from every file (the smallest file's count, up
  to 128), so every file weighs alike in the classifiers' loss;
- Adam from the start (`fit_routers`, every layer's router at once, against the
  start's layer-by-layer classifiers): at lr 1e-3 and 5e-3 after a 10-step
  warm-up, on the language-model loss; at 5e-3 with the Switch balance term
  (weight 0.01); and at 5e-3 distilled toward each file's forced best expert
  (KL divergence from its output instead of the next token). Each keeps the
  routers of its best held-out check, as the gates stage does.

Each routed variant's dead experts on the held-out text are recorded by verify's
rule (`dead_experts`, `verify.dead_expert_share`): the start sends each fitting
file to one expert, so an expert best on none of them may get nothing. And how
often each domain's tokens have its best expert as their heaviest one
(`top1_on_best`), next to the start's own top-1 accuracy per layer on its fitting
windows and on held-out fitting windows (`starts`): where these fall short, tokens
run in another expert than the one that models their domain best.

Usage (after `frankenmoe build RECIPE --until merge`):
    python -m bench.router_probe RECIPE [RECIPE ...] [--tokens 16384] [--variants A,B]
        [--out bench/router-probe-NAME.json, or bench/router-probe-{recipe}-SUFFIX.json for several]
which also writes the table next to the JSON (.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from frankenmoe.checkpoints.loading import load_merged
from frankenmoe.checkpoints.moe_blocks import forced_expert, moe_blocks
from frankenmoe.engine.build import finished_results
from frankenmoe.engine.cache import default_layout
from frankenmoe.errors import NotBuiltError
from frankenmoe.measure.evaluation import dead_experts, routing_stats, spread_windows
from frankenmoe.measure.paired import DRAWS, compare, per_domain_phrase, table_rows, window_nlls
from frankenmoe.recipe import load_recipe
from frankenmoe.routing.router_fit import START_WINDOWS, Schedule, fit_compute, fit_routers, split_heldout
from frankenmoe.stages import STAGES
from frankenmoe.stages.merge import merged_model
from frankenmoe.support.jsonio import write_json
from frankenmoe.support.progress import progress
from frankenmoe.text.calibration import token_windows

SCALES = (2, 4, 8)
WIDE = 128  # the start's classifiers on up to this many fitting windows per file (START_WINDOWS: 32)
BATCH = 8
ADAM = Schedule(steps=60, check_every=5, patience=3, warmup=10)
# name: (lr, balance weight, distilled toward the forced best expert)
ADAM_VARIANTS = {
    "adam 1e-3": (1e-3, 0.0, False),
    "adam 5e-3": (5e-3, 0.0, False),
    "adam 5e-3 balance": (5e-3, 0.01, False),
    "distill 5e-3": (5e-3, 0.0, True),
}
# The routed variants in the order they run: tables follow it, not the JSON's (write_json sorts keys).
WIDER = [f"start {WIDE} windows", f"start {WIDE} windows even"]
VARIANTS = ["hidden", "start", *(f"start x{s}" for s in SCALES), *WIDER, *ADAM_VARIANTS]


def window_nll(model, windows: list[tuple[str, list[int]]], desc: str) -> tuple[list[float], object]:
    """Each window's summed next-token NLL (nats) under the model as it is routed now,
    and its routers' probabilities [layers, tokens, experts] (as verify records them)."""
    import torch

    out, batches = [], []
    hooks = [
        b.gate.register_forward_hook(lambda m, i, o: batches[-1].append(torch.softmax(o[0].float(), -1)))
        for b in moe_blocks(model)
    ]
    try:
        with torch.no_grad():
            for i in progress(range(0, len(windows), BATCH), desc=desc):
                batch = windows[i : i + BATCH]
                batches.append([])
                logprobs = torch.log_softmax(model(torch.tensor([w for _, w in batch])[:, :-1]).logits.float(), -1)
                out += window_nlls(logprobs, batch)
    finally:
        for h in hooks:
            h.remove()
    return out, torch.cat([torch.stack(layers) for layers in batches], dim=1)


def checkpoint_routers(merged: Path) -> list:
    """The merge's router tensors as stored (their dtype is what a fitted router is written in)."""
    from safetensors import safe_open

    found = {}
    for f in sorted(merged.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            found.update({k: st.get_tensor(k) for k in st.keys() if k.endswith("block_sparse_moe.gate.weight")})
    return [found[f"model.layers.{i}.block_sparse_moe.gate.weight"] for i in range(len(found))]


def set_routers(model, weights: list) -> None:
    import torch

    with torch.no_grad():
        for b, w in zip(moe_blocks(model), weights):
            b.gate.weight.copy_(w)


def probe(recipe_file: Path, tokens_per_domain: int, log=print, only: set[str] | None = None) -> dict:
    """Every variant, or those in `only` (the experts, mergekit's routers and the start always run)."""
    from transformers import AutoTokenizer

    recipe = load_recipe(recipe_file)
    done = finished_results(recipe, default_layout(recipe), STAGES, ["merge"])
    merged = merged_model(done["merge"])
    g, v = recipe.gates, recipe.verify
    compute = fit_compute(g.device, g.dtype)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    files = [recipe.path(f) for f in v.files]
    windows = spread_windows(files, tokenizer, v.seq_len, tokens_per_domain)
    domains = [d for d, _ in windows]
    tokens = [len(w) - 1 for _, w in windows]
    t0 = time.monotonic()
    model = load_merged(merged)  # float32, as verify computes; the fit below runs on its own copy
    seconds: dict[str, float] = {}
    nll: dict[str, list[float]] = {}
    dead: dict[str, list[dict]] = {}
    top1: dict[str, dict] = {}  # variant -> domain -> [layer][expert]: share of tokens whose heaviest expert it is

    def score(name: str, routed: bool = True) -> None:
        t = time.monotonic()
        nll[name], router = window_nll(model, windows, f"probe: {name}")
        if routed:  # a forced expert's routers are not what runs
            routing = routing_stats(router, domains, v.seq_len, recipe.experts_per_token)
            dead[name] = [{**d, "layers": len(d["layers"])} for d in dead_experts(routing, v.dead_expert_share)]
            top1[name] = {d: r["top1_share"] for d, r in routing.items()}
        seconds[name] = round(time.monotonic() - t, 1)
        log(f"probe: {name}: {seconds[name]} s")

    n_experts = len(recipe.experts)
    experts = [f"experts[{e}]" for e in range(n_experts)]
    for e, name in enumerate(experts):
        with forced_expert(model, e):
            score(name, routed=False)
    score("hidden")

    groups = [token_windows([recipe.path(f)], tokenizer, g.seq_len, f"gates.files: {f}") for f in g.files]
    train, held = split_heldout(groups, g.holdout)
    t = time.monotonic()
    fitting = load_merged(merged, dtype=compute["dtype"])  # as the gates stage fits

    def fit_start(most: int):
        """The best_expert start alone, its classifiers on up to `most` windows a file."""
        return fit_routers(
            fitting,
            train,
            held,
            Schedule(0, 1, 1),
            g.lr,
            g.batch_size,
            g.seed,
            0.0,
            compute,
            "best_expert",
            start_windows=most,
        )

    fit = fit_start(START_WINDOWS)
    seconds["start fit"] = round(time.monotonic() - t, 1)
    stored = checkpoint_routers(merged)
    # As the gates stage writes them: in the checkpoint's dtype (scaling by 2^k is exact there).
    start = [fit.routers[i].to(w.dtype) for i, w in enumerate(stored)]
    set_routers(model, start)
    score("start")
    for s in SCALES:
        if only is None or f"start x{s}" in only:
            set_routers(model, [(w.float() * s).to(w.dtype) for w in start])
            score(f"start x{s}")
    starts = {"start": fit.start}
    # Up to WIDE windows a file; "even": as many from every file (the smallest file's
    # count, up to WIDE), so each file weighs alike in the classifiers' loss, as at 32.
    for name, most in zip(WIDER, (WIDE, min(WIDE, *map(len, train)))):
        if only is None or name in only:
            set_routers(fitting, stored)  # where the start's L-BFGS begins, as above
            t = time.monotonic()
            widened = fit_start(most)
            seconds[f"{name} fit"] = round(time.monotonic() - t, 1)
            starts[name] = widened.start
            set_routers(model, [widened.routers[i].to(w.dtype) for i, w in enumerate(stored)])
            score(name)
    fits = {}
    for name, (lr, balance, distill) in ADAM_VARIANTS.items():
        if only is not None and name not in only:
            continue
        set_routers(fitting, [fit.routers[i] for i in range(len(stored))])  # the start, in float32
        teacher = fit.start.experts if distill else None
        adam = fit_routers(fitting, train, held, ADAM, lr, g.batch_size, g.seed, balance, compute, distill_from=teacher)
        seconds[f"{name} fit"] = round(adam.seconds, 1)
        fits[name] = {"best_step": adam.best_step, "stopped": adam.stopped, "heldout": adam.heldout}
        log(f"probe: {name}: kept step {adam.best_step} ({adam.stopped})")
        set_routers(model, [adam.routers[i].to(w.dtype) for i, w in enumerate(stored)])
        score(name)
    compared = compare(domains, tokens, nll, experts, against=("hidden",))
    return {
        "recipe": recipe.name,
        "experts_per_token": recipe.experts_per_token,
        "experts": n_experts,
        "layers": len(stored),
        "held_out": {"files": list(v.files), "seq_len": v.seq_len, "tokens_per_domain_asked": tokens_per_domain},
        "fitting_files": list(g.files),
        "start_experts": fit.start.experts if fit.start else None,
        "starts": {
            name: {k: getattr(r, k) for k in ("expert_loss", "accuracy", "heldout_accuracy", "windows")}
            for name, r in starts.items()
        },
        "adam": {"schedule": asdict(ADAM), "batch_size": g.batch_size, "seq_len": g.seq_len, "fits": fits},
        "compute": compute,
        "draws": DRAWS,
        "seconds": {**seconds, "total": round(time.monotonic() - t0, 1)},
        "domains": compared,
        "dead_expert_share": v.dead_expert_share,
        "dead_experts": dead,
        "top1_on_best": {name: on_best(shares, compared, experts) for name, shares in top1.items()},
    }


def on_best(shares: dict[str, list[list[float]]], compared: dict, experts: list[str]) -> dict[str, dict[str, float]]:
    """Per domain: the share of its held-out tokens whose heaviest expert is the domain's
    best expert, mean over layers and at the lowest layer. Below 1, tokens run
    (mostly) elsewhere than in the expert whose output the target is."""
    out = {}
    for d, layers in shares.items():
        e = experts.index(compared[d]["best_expert"])
        on = [layer[e] for layer in layers]
        out[d] = {"mean": round(sum(on) / len(on), 5), "lowest": round(min(on), 5)}
    return out


def table(doc: dict) -> str:
    domains = doc["domains"]
    variants = [v for v in VARIANTS if v in next(iter(domains.values()))["models"]]
    caption = (
        f"`{doc['recipe']}` ({doc['experts']} experts, top-{doc['experts_per_token']}): perplexity relative to each "
        f"domain's best expert, minus one, 95% paired bootstrap interval over windows ({doc['draws']} draws); "
        f"{per_domain_phrase(domains)}."
    )
    return "\n".join([caption, "", *table_rows(domains, variants), *dead_lines(doc), *top1_lines(doc)]) + "\n"


def dead_lines(doc: dict) -> list[str]:
    """Which variants leave an expert dead on the held-out text, by verify's rule."""
    if "dead_experts" not in doc:  # probes run before dead experts were recorded
        return []
    found = [
        f"{name}: experts[{d['expert']}] at {d['layers']} of {doc['layers']} layers (at most {d['largest']:.1%})"
        for name in VARIANTS
        for d in doc["dead_experts"].get(name, [])
    ]
    rule = f"less than {doc['dead_expert_share']:.0%} of the routed weight at a layer on every domain"
    return ["", f"Dead experts ({rule}): " + ("; ".join(found) if found else "none") + "."]


def top1_lines(doc: dict) -> list[str]:
    """The routed variants' top1_on_best as a table (absent for probes run before it was recorded)."""
    if "top1_on_best" not in doc:
        return []
    names = [v for v in VARIANTS if v in doc["top1_on_best"]]
    domains = sorted(doc["domains"])
    cell = "{mean:.1%} ({lowest:.1%})"
    return [
        "",
        "Share of each domain's held-out tokens whose heaviest expert is that domain's best expert, mean over "
        "layers (lowest layer):",
        "",
        "| routers | " + " | ".join(domains) + " |",
        "|---|" + "---|" * len(domains),
        *(f"| {n} | " + " | ".join(cell.format(**doc["top1_on_best"][n][d]) for d in domains) + " |" for n in names),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", type=Path, nargs="+", metavar="recipe", help="one or more; probed one after another")
    p.add_argument("--tokens", type=int, default=16384, help="held-out tokens per domain (fewer where the text ends)")
    p.add_argument("--variants", help=f"comma-separated, of: {', '.join(VARIANTS[2:])} (default: all)")
    p.add_argument("--out", help="the JSON to write (its table next to it, .md); with several recipes, {recipe} in it")
    args = p.parse_args()
    only = None if args.variants is None else set(args.variants.split(","))
    if only is not None and (unknown := only - set(VARIANTS)):
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS[2:])}")
    if args.out and len(args.recipes) > 1 and "{recipe}" not in args.out:
        p.error("--out: with several recipes, put {recipe} in it (their names), e.g. bench/router-probe-{recipe}.json")
    for recipe_file in args.recipes:  # every merge built, before hours go into the first recipes
        recipe = load_recipe(recipe_file)
        try:
            finished_results(recipe, default_layout(recipe), STAGES, ["merge"])
        except NotBuiltError as e:
            p.error(f"{recipe_file}: {e}")
    t0 = time.monotonic()
    for recipe in args.recipes:
        doc = probe(recipe, args.tokens, only=only)
        print(table(doc), end="")
        if args.out:
            out = Path(args.out.replace("{recipe}", doc["recipe"]))
            write_json(out, doc)
            out.with_suffix(".md").write_text(table(doc), encoding="utf-8")
    print(f"probe: {len(args.recipes)} recipes in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
