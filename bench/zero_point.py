"""The 4-bit settings of a sweep compared with intervals (issue 46: zero point and group size).

For every built variant of the sweep, the 4-bit AWQ folder is run on verify's held-out
windows (the reference the evaluate stage stored) and, per window, the mean KL(16 || 4),
the top-1 agreement and the 4-bit and 16-bit NLL are kept. Each variant's figures get a
95% bootstrap interval over windows; each variant against the first gets a paired one
(the same windows resampled together), so "better" is said only where the interval of
the difference excludes 0. Sizes are the AWQ folder's safetensors bytes.

Usage (after `frankenmoe sweep SWEEP.yaml`): python -m bench.zero_point SWEEP.yaml [--out FILE.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.checkpoints.tensor_file import Rows
from frankenmoe.engine.build import finished_results
from frankenmoe.experiments.sweep import load_sweep, plan_variants
from frankenmoe.measure.metrics import target_nll, token_kl, top1_agreement
from frankenmoe.stages import STAGES
from frankenmoe.stages.evaluate import reference, reference_dir
from frankenmoe.stages.quantize import quantized_model
from frankenmoe.support import settings
from frankenmoe.support.jsonio import write_json

DRAWS, SEED = 2000, 0


def per_window(quantized: Path, evaluate) -> dict[str, list[float]]:
    """Per window: mean KL, top-1 agreement, summed 4-bit and 16-bit NLL, token count."""
    from safetensors import safe_open

    ref = reference(evaluate)
    out: dict[str, list[float]] = {"kl": [], "top1": [], "nll4": [], "nll16": [], "tokens": []}
    with safe_open(reference_dir(evaluate) / "reference.safetensors", framework="pt") as st:
        windows = st.get_tensor("tokens").tolist()
        ref_lp = Rows(st, "logprobs")
        lm = StreamingLM(quantized)
        for w, (lp4, _) in enumerate(lm.run([ids[:-1] for ids in windows], desc="4-bit windows")):
            lp16 = ref_lp[w].float()
            ids = windows[w]
            out["kl"].append(float(token_kl(lp16, lp4).mean()))
            out["top1"].append(float(top1_agreement(lp16, lp4).float().mean()))
            out["nll4"].append(target_nll(lp4, ids))
            out["nll16"].append(target_nll(lp16, ids))
            out["tokens"].append(len(ids) - 1)
    out["domains"] = ref.domains
    return out


def figures(w: dict, idx) -> tuple[float, float, float]:
    """(mean KL, top-1, perplexity ratio) over the windows `idx` (a resample)."""
    import math

    n = sum(w["tokens"][i] for i in idx)
    kl = sum(w["kl"][i] * w["tokens"][i] for i in idx) / n
    top1 = sum(w["top1"][i] * w["tokens"][i] for i in idx) / n
    ratio = math.exp((sum(w["nll4"][i] for i in idx) - sum(w["nll16"][i] for i in idx)) / n)
    return kl, top1, ratio


def intervals(rows: dict[str, dict], first: str) -> dict:
    """Bootstrap 95% intervals of each variant's figures and of its difference from `first`."""
    import random

    rng = random.Random(SEED)
    n = len(next(iter(rows.values()))["kl"])
    draws = [[rng.randrange(n) for _ in range(n)] for _ in range(DRAWS)]
    every = list(range(n))
    out = {}
    for name, w in rows.items():
        own = [figures(w, d) for d in draws]
        diff = [tuple(a - b for a, b in zip(figures(w, d), figures(rows[first], d))) for d in draws]
        ci = lambda xs: [sorted(xs)[int(0.025 * DRAWS)], sorted(xs)[int(0.975 * DRAWS) - 1]]
        point = figures(w, every)
        base = figures(rows[first], every)
        out[name] = {
            "windows": n,
            **{k: {"value": point[i], "ci95": ci([o[i] for o in own])} for i, k in enumerate(("kl", "top1", "ratio"))},
            "vs_first": {
                k: {"value": point[i] - base[i], "ci95": ci([d[i] for d in diff])}
                for i, k in enumerate(("kl", "top1", "ratio"))
            },
        }
    return out


def table(doc: dict) -> str:
    fmt = lambda f, p: f"{f['value']:.{p}f} [{f['ci95'][0]:.{p}f}, {f['ci95'][1]:.{p}f}]"
    lines = [
        f"Against `{doc['first']}`; 95% bootstrap intervals over {doc['windows']} windows of verify's held-out text "
        f"({DRAWS} draws, seed {SEED}); the difference is paired (the same windows resampled together).",
        "",
        "| variant | AWQ MB | mean KL | top-1 | perplexity ratio | KL - first | top-1 - first | ratio - first |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["variants"].items():
        v = r["vs_first"]
        lines.append(
            f"| {name} | {r['awq_mb']:.1f} | {fmt(r['kl'], 4)} | {fmt(r['top1'], 3)} | {fmt(r['ratio'], 3)} | "
            f"{fmt(v['kl'], 4)} | {fmt(v['top1'], 3)} | {fmt(v['ratio'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    sweep = load_sweep(args.sweep, [s.name for s in STAGES])
    rows, sizes = {}, {}
    for planned in plan_variants(sweep, settings.build_root()):
        if planned.variant is None:
            continue
        v = planned.variant
        done = finished_results(v.recipe, v.layout, STAGES, ["quantize", "evaluate"])
        model = quantized_model(done["quantize"])
        sizes[planned.name] = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 1e6
        rows[planned.name] = per_window(model, done["evaluate"])
    first = next(iter(rows))
    doc = {"sweep": sweep.name, "first": first, "windows": len(rows[first]["kl"]), "variants": intervals(rows, first)}
    for name in doc["variants"]:
        doc["variants"][name]["awq_mb"] = sizes[name]
    print(table(doc), end="")
    if args.out:
        write_json(args.out, doc)


if __name__ == "__main__":
    main()
