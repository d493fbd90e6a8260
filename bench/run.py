"""`make bench`: what frankenmoe costs next to the tools it drives, in one run.

Absolute times are noisy on shared machines, so each figure is reported next to
a reference measured in the same run, as a ratio:

1. overhead: `frankenmoe build` on a recipe in one command, and each stage alone
   (wall time of the command, the stage's own time, peak RSS of its whole process
   tree, sampled: bench/measure.py), next to mergekit-moe's command line and GPTQModel's own
   load/quantize/save (bench/raw_gptqmodel.py) on the same models, calibration
   windows and settings;
2. cache: a no-op rebuild, and a rebuild after changing only `verify:` thresholds;
3. quantize: time and peak RSS with the calibration size stated;
4. scale (bench/scale.py): synthetic 2x7B- and 2x1B-shaped families through
   lock, resolve and merge next to a byte-copy reference, and the streamed
   verify checks, with peak RSS; with the 2x7B, baseline, evaluate and verify at
   their default 8,192 tokens on its layers, two deep;
5. quantize quality and the matmul limit: the fast CPU path against GPTQModel's
   float16 path on the same windows (paired, with bootstrap intervals), on the
   recipe and on any `--quality-also RECIPE`, and one profiled decoder layer
   against this CPU's matmul rate (bench/matmul_limit.py);
6. sweep (bench/sweep.py): the tiny sweep in one process and on a local Ray
   cluster, their ratio and whether they measured the same, and a 2x7B four-mode
   sweep projected on 1, 4 and 8 workers from the per-stage times above
   (`--only-sweep` runs this part alone).

Writes bench/results.json and bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.evals import evals_bench
from bench.evals import report as evals_report
from bench.gguf import gguf_bench
from bench.measure import BIN, REPO, build_env, measure, movable_recipe, ran_line, stage_record
from bench.sweep import TINY_SWEEP, sweep_part
from frankenmoe.engine.graph import enabled_stages
from frankenmoe.measure.checks import QUANTIZATION_PARITY
from frankenmoe.measure.verdict import named
from frankenmoe.quantization.awq_engine import ALLOCATOR
from frankenmoe.recipe import load_recipe
from frankenmoe.stages import STAGES


def _finished(root: Path, stage: str) -> Path:
    """The folder of the one finished `stage` result in the build under `root`."""
    return next((root / "build").glob(f"*/{stage}/*/record.json")).parent


def ours(recipe_file: Path, work: Path) -> dict:
    """One `frankenmoe build --until STAGE` per stage, so each is measured alone."""
    from frankenmoe.stages import STAGES

    root = work / "ours"
    rows = {}
    for stage in STAGES:
        m = measure([str(BIN / "frankenmoe"), "build", str(recipe_file), "--until", stage.name], build_env(root))
        record = stage_record(stage.name, m["out"])
        rows[stage.name] = {"command_s": m["wall_s"], "stage_s": record["wall_s"], "peak_rss_mb": m["peak_rss_mb"]}
        if stage.name == "quantize":  # the raw GPTQModel run gets exactly these windows
            rows[stage.name]["windows_file"] = str(
                Path(ran_line(stage.name, m["out"]).split()[-1]) / "calibration-windows.json"
            )
    return rows


def whole(recipe_file: Path, work: Path) -> dict:
    """The build as users run it, `frankenmoe build` in one command from nothing;
    and, in another folder, `--until quantize`: the part the raw tools also do."""
    full = measure([str(BIN / "frankenmoe"), "build", str(recipe_file)], build_env(work / "whole"))
    upto = measure(
        [str(BIN / "frankenmoe"), "build", str(recipe_file), "--until", "quantize"], build_env(work / "whole-upto")
    )
    return {
        "whole_s": full["wall_s"],
        "whole_peak_rss_mb": full["peak_rss_mb"],
        "through_quantize_s": upto["wall_s"],
        "through_quantize_peak_rss_mb": upto["peak_rss_mb"],
    }


def raw_tools(recipe_file: Path, work: Path, windows_file: str) -> dict:
    """mergekit-moe's CLI and GPTQModel's API on the same inputs."""
    data = movable_recipe(recipe_file)
    mergekit_keys = ("base_model", "gate_mode", "dtype", "experts_per_token", "experts", "architecture")
    config = work / "mergekit.yaml"
    config.write_text(yaml.safe_dump({k: data[k] for k in mergekit_keys if k in data}, sort_keys=False))
    out = work / "raw-merge"
    merge = measure(
        [
            str(BIN / "mergekit-moe"),
            str(config),
            str(out),
            "--random-seed",
            str(data.get("merge", {}).get("seed", 0)),
            "--device",
            "cpu",
            "--quiet",
            "--copy-tokenizer",
        ]
    )
    group = data.get("quantize", {}).get("group_size", 128)
    awq = [
        sys.executable,
        str(REPO / "bench" / "raw_gptqmodel.py"),
        str(out),
        str(REPO / windows_file),
        str(work / "raw-awq"),
        str(group),
    ]
    workers = {"GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2")}
    quant = measure(awq, workers, cwd=work)  # GPTQModel writes logs/ into its working folder
    # The same run with the allocator settings the pipeline gives its engine, so the
    # table shows how much of the difference is those settings.
    shutil.rmtree(work / "raw-awq")
    tuned = measure(awq, {**workers, **ALLOCATOR}, cwd=work)
    return {
        "merge": {k: merge[k] for k in ("wall_s", "peak_rss_mb")},
        "quantize": {k: quant[k] for k in ("wall_s", "peak_rss_mb")},
        "quantize_same_allocator": {k: tuned[k] for k in ("wall_s", "peak_rss_mb")},
    }


def cache(recipe_file: Path, work: Path) -> dict:
    env = build_env(work / "ours")
    noop = [measure([str(BIN / "frankenmoe"), "build", str(recipe_file)], env)["wall_s"] for _ in range(3)]
    data = movable_recipe(recipe_file)
    data.setdefault("verify", {})["max_mean_kl"] = 0.5
    data.setdefault("name", recipe_file.stem)
    edited = work / recipe_file.name
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    m = measure([str(BIN / "frankenmoe"), "build", str(edited)], env)
    ran = [l.split()[0] for l in m["out"].splitlines() if l.split()[1:2] == ["ran"]]
    return {
        "noop_s": statistics.median(noop),
        "noop_runs_s": noop,
        "thresholds_changed_s": m["wall_s"],
        "thresholds_changed_ran": ran,
    }


FIGURES = (
    ("kl_mean", "mean KL", "{:.4f}", -1),
    ("top1_agreement", "top-1", "{:.1%}", 1),
    ("perplexity_ratio", "perplexity ratio", "{:.3f}", -1),
)  # key, label, format, sign of better


def quality(recipe_file: Path, work: Path, dense: bool = True) -> dict:
    """4-bit quality and quantize time on the recipe, each next to its reference:
    the fast CPU path against GPTQModel's own float16 path (same windows, same
    build up to gates, hard-linked), and (`dense`) the MoE's mean KL against its
    dense base quantized the same way (bench/quality.py)."""
    from bench.quality import dense_reference, paired_difference

    ours_root = work / "ours"
    fp16_root = work / "fp16"
    subprocess.run(["cp", "-al", str(ours_root), str(fp16_root)], check=True)
    own = {"FRANKENMOE_AWQ_DTYPE": "float16", "FRANKENMOE_AWQ_SPEEDUPS": "none"}
    cmd = [str(BIN / "frankenmoe"), "build", str(recipe_file), "--until", "verify"]
    m = measure(cmd, {**build_env(fp16_root), **own})
    # the stage folders each path made: the fast one's are the only ones in ours, float16's ran in this build
    folders = {
        "fast": {stage: _finished(ours_root, stage) for stage in ("quantize", "verify", "evaluate")},
        "gptqmodel_fp16": {stage: Path(ran_line(stage, m["out"]).split()[-1]) for stage in ("quantize", "verify")},
    }
    paths = {}
    for label, f in folders.items():
        q = json.loads((f["quantize"] / "record.json").read_text())
        report = json.loads((f["verify"] / "report" / "verify.json").read_text())
        parity = named(report, QUANTIZATION_PARITY)
        paths[label] = {
            "quantize_s": q["wall_s"],
            "compute": q["fingerprint"]["compute"],
            **{k: parity[k] for k, *_ in FIGURES},
        }
    fast, fp16 = folders["fast"], folders["gptqmodel_fp16"]
    difference = paired_difference(
        fast["evaluate"] / "reference.safetensors", fast["quantize"] / "model", fp16["quantize"] / "model"
    )
    out = {
        "paths": paths,
        "speedup": round(paths["gptqmodel_fp16"]["quantize_s"] / paths["fast"]["quantize_s"], 2),
        "fast_minus_fp16": difference,
    }
    if dense:
        out["dense"] = dense_reference(recipe_file, work / "dense", build_root=ours_root / "build", log=lambda _: None)
    return out


# Stage folders a calibration seed changes: removed from the hard-linked copy of the recipe's build.
SEEDED = ("quantize", "verify", "gguf", "card", "manifest")


def quality_draws(recipe_file: Path, work: Path, seeds: list[int]) -> dict:
    """`quality` once more per calibration seed: other windows, so other scale and
    clip choices on both paths. Two AWQ runs that differ only in details
    (rounding, which tokens the clip search samples) land a few percent apart in
    mean KL either way, so one draw cannot tell a path that is worse from one
    that was unlucky; the draws can. Each reuses the recipe's build up to gates
    (hard-linked; a seed changes only quantize and what follows)."""
    draws = {}
    for seed in seeds:
        root = work / f"seed-{seed}"
        recipe = movable_recipe(recipe_file)
        recipe.setdefault("quantize", {}).setdefault("calibration", {})["seed"] = seed
        root.mkdir()
        subprocess.run(["cp", "-al", str(work / "ours"), str(root / "ours")], check=True)
        for folder in (root / "ours" / "build").glob("*/*"):
            if folder.name in SEEDED:
                shutil.rmtree(folder)
        seeded = root / recipe_file.name
        seeded.write_text(yaml.safe_dump(recipe, sort_keys=False))
        measure([str(BIN / "frankenmoe"), "build", str(seeded), "--until", "verify"], build_env(root / "ours"))
        draws[str(seed)] = quality(seeded, root, dense=False)
        shutil.rmtree(root, ignore_errors=True)
    return draws


def matmul_limit(work: Path) -> dict:
    """One decoder layer of the fast path's quantize, profiled, against this
    machine's matmul rate (bench/matmul_limit.py), in its own process."""
    folder = _finished(work / "ours", "quantize")
    cmd = [sys.executable, "-m", "bench.matmul_limit", str(folder), "--work", str(work / "matmul")]
    return json.loads(measure(cmd)["out"].strip().splitlines()[-1])


def quality_lines(qr: dict) -> list[str]:
    """The fast path next to GPTQModel's float16 path (bench.run.quality's result)."""
    fast, own = qr["paths"]["fast"], qr["paths"]["gptqmodel_fp16"]
    d, pd = qr["dense"], qr.get("fast_minus_fp16")
    return [
        "",
        "| quantize path | compute | quantize stage (s) | mean KL | top-1 | perplexity ratio |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {p['compute']['device']} {p['compute']['dtype']} | {p['quantize_s']:.1f} | "
            f"{p['kl_mean']:.4f} | {p['top1_agreement']:.1%} | {p['perplexity_ratio']:.3f} |"
            for label, p in (("frankenmoe (fast CPU path)", fast), ("GPTQModel's own float16", own))
        ),
        "",
        f"- quantize: the fast path is **{qr['speedup']}x** faster than GPTQModel's float16 path on the same windows",
        *(
            [
                f"- fast minus float16, paired over the {pd['windows']} held-out windows: mean KL "
                f"{pd['kl_mean']['difference']:+.4f} (95% bootstrap interval {pd['kl_mean']['ci95'][0]:+.4f} "
                f"to {pd['kl_mean']['ci95'][1]:+.4f}), top-1 {pd['top1_agreement']['difference']:+.2%} "
                f"({pd['top1_agreement']['ci95'][0]:+.2%} to {pd['top1_agreement']['ci95'][1]:+.2%})"
            ]
            if pd
            else []
        ),
        f"- dense base quantized the same way: mean KL {d['dense_base']['kl_mean']:.4f}, top-1 "
        f"{d['dense_base']['top1_agreement']:.1%}, perplexity x{d['dense_base']['perplexity_ratio']:.3f}; "
        f"MoE / dense mean KL: **{d['kl_ratio_moe_over_dense']:.2f}** (target at most 1.0)",
    ]


def draws_lines(first: dict, draws: dict) -> list[str]:
    """Every calibration draw of the fast-vs-float16 comparison (seed 0 is the recipe's own), and their means."""
    rows = {"0": first, **draws}
    out = [
        "",
        f"The same comparison over {len(rows)} calibration draws (`--quality-seeds`: the recipe with other "
        "`quantize.calibration.seed`s, so other windows and other AWQ choices on both paths):",
        "",
        "| seed | speed-up | mean KL fast / float16 | top-1 fast / float16 | perplexity ratio fast / float16 |",
        "|---|---|---|---|---|",
    ]
    for seed, qr in rows.items():
        fast, own = qr["paths"]["fast"], qr["paths"]["gptqmodel_fp16"]
        cells = [f"{fmt.format(fast[k])} / {fmt.format(own[k])}" for k, _, fmt, _ in FIGURES]
        out.append(f"| {seed} | {qr['speedup']}x | " + " | ".join(cells) + " |")
    out.append("")
    for k, label, fmt, better in FIGURES:
        fast = [qr["paths"]["fast"][k] for qr in rows.values()]
        own = [qr["paths"]["gptqmodel_fp16"][k] for qr in rows.values()]
        wins = sum((f - o) * better >= 0 for f, o in zip(fast, own))
        out.append(
            f"- {label}, mean over the draws: fast {fmt.format(statistics.mean(fast))}, float16 "
            f"{fmt.format(statistics.mean(own))}; the fast path is as good or better in {wins} of {len(rows)}"
        )
    return out


def report(results: dict) -> str:
    o, r, w = results["ours"], results["raw"], results["whole"]
    raw_build = r["merge"]["wall_s"] + r["quantize"]["wall_s"]
    raw_tuned = r["merge"]["wall_s"] + r["quantize_same_allocator"]["wall_s"]
    results["ratios"] = {
        "merge_vs_mergekit": round(o["merge"]["command_s"] / r["merge"]["wall_s"], 2),
        "quantize_vs_gptqmodel": round(o["quantize"]["command_s"] / r["quantize"]["wall_s"], 2),
        "whole_build_vs_raw_tools": round(w["whole_s"] / raw_build, 2),
        "build_through_quantize_vs_raw_tools": round(w["through_quantize_s"] / raw_build, 2),
        "whole_build_vs_raw_tools_same_allocator": round(w["whole_s"] / raw_tuned, 2),
    }
    lines = [
        f"Measured {results['date']} on {results['machine']} (`make bench`, recipe `{results['recipe']}`).",
        "",
        "| stage | command wall (s) | stage's own time (s) | peak RSS, process tree (MB) | raw tool (s) | "
        "raw peak RSS (MB) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, row in o.items():
        raw = r.get(stage)
        ratio = f"{row['command_s'] / raw['wall_s']:.2f}x" if raw else ""
        lines.append(
            f"| {stage} | {row['command_s']:.1f} | {row['stage_s']:.1f} | {row['peak_rss_mb']} | "
            f"{raw['wall_s'] if raw else ''} | {raw['peak_rss_mb'] if raw else ''} | {ratio} |"
        )
    c = results["cache"]
    ratios = results["ratios"]
    lines += [
        "",
        f"- whole build, `frankenmoe build` in one command ({', '.join(s.name for s in STAGES if s.name in o)}): "
        f"{w['whole_s']:.1f} s, peak RSS {w['whole_peak_rss_mb']} MB, vs mergekit-moe + GPTQModel alone "
        f"{raw_build:.1f} s: **{ratios['whole_build_vs_raw_tools']}x**; "
        f"through quantize only: {w['through_quantize_s']:.1f} s, {ratios['build_through_quantize_vs_raw_tools']}x",
        "- the quantize stage runs GPTQModel with glibc malloc keeping freed memory "
        "(frankenmoe/quantization/awq_engine.py); GPTQModel "
        f"alone with the same settings: {r['quantize_same_allocator']['wall_s']:.1f} s (vs "
        f"{r['quantize']['wall_s']:.1f} s "
        f"without), and against that the whole build is {ratios['whole_build_vs_raw_tools_same_allocator']}x",
        "- per-stage rows are one `frankenmoe build --until STAGE` each: every row pays a process start-up and the "
        "no-op "
        "checks of the stages before it",
        f"- no-op rebuild: {c['noop_s']:.2f} s (median of {len(c['noop_runs_s'])}); "
        f"after changing only a verify threshold: {c['thresholds_changed_s']:.1f} s, reran "
        f"{', '.join(c['thresholds_changed_ran'])}",
        f"- quantize: {o['quantize']['stage_s']:.1f} s and {o['quantize']['peak_rss_mb']} MB peak for "
        f"{results['calibration']}",
    ]
    if results.get("quality"):
        lines += quality_lines(results["quality"])
    if results.get("matmul_limit"):
        mm = results["matmul_limit"]
        lines += [
            f"- how far from the matmul limit (bench/matmul_limit.py, layer {mm['layer']} profiled): a layer does "
            f"{mm['matmul_gflop']} GFLOP of matrix products, {mm['limit_s']['float32']} s at this CPU's float32 "
            f"rate ({mm['rate_gflops']['float32']} GFLOP/s) and {mm['limit_s']['bfloat16']} s at its bfloat16 rate "
            f"({mm['rate_gflops']['bfloat16']} GFLOP/s); the fast path takes {mm['layer_unprofiled_s']} s a layer: "
            f"**{mm['times_the_limit']['float32']}x** the float32 limit, {mm['times_the_limit']['bfloat16']}x the "
            "bfloat16 one (the rest is GPTQModel's work outside matrix products)"
            + (f"; {mm['note']}" if mm.get("note") else ""),
        ]
    if results.get("quality_draws"):
        lines += draws_lines(results["quality"], results["quality_draws"])
    for name, qr in results.get("quality_more", {}).items():
        lines += ["", f"The same comparison on `{name}`" + (f" ({qr['note']})" if qr.get("note") else "") + ":"]
        lines += quality_lines(qr)
    if results.get("gguf"):
        g = results["gguf"]
        lines += [
            "",
            "GGUF (llama.cpp's own converter and quantizer, checked by llama.cpp's logits on the held-out text):",
            "",
            f"- the stage: {g['stage_s']:.1f} s, of which making the files {g['stage_parts_s']['convert']:.1f} s "
            f"(convert) + {g['stage_parts_s']['quantize']:.1f} s (quantize) and llama.cpp's checks "
            f"{g['stage_parts_s']['check']:.1f} s; the same tools by hand: {g['by_hand']['total_s']:.1f} s; "
            f"files vs by hand **{g['files_vs_by_hand']}x**, whole stage {g['stage_vs_by_hand']}x",
            "",
            "| type | MoE mean KL | top-1 | ppl ratio | dense base mean KL | top-1 | ppl ratio | MoE / dense KL |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {t} | {m['kl_mean']:.4f} | {m['top1_agreement']:.1%} | x{m['perplexity_ratio']:.3f} | "
                f"{g['dense_base'][t]['kl_mean']:.4f} | {g['dense_base'][t]['top1_agreement']:.1%} | "
                f"x{g['dense_base'][t]['perplexity_ratio']:.3f} | {g['moe_vs_dense_kl'][t]} |"
                for t, m in g["moe"].items()
            ),
        ]
    if results.get("evals"):
        lines += evals_report(results["evals"])
    if results.get("scale"):
        from bench.scale import report as scale_report

        lines += scale_report(results["scale"])
    if results.get("verify_memory"):
        from bench.scale import verify_memory_report

        lines += verify_memory_report(results["verify_memory"])
    if results.get("sweep"):
        from bench.sweep import report as sweep_report

        lines += sweep_report(results["sweep"])
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "smollm2-2x.yaml")
    p.add_argument("--work", type=Path, default=REPO / "build" / ".bench")
    p.add_argument("--out", type=Path, default=REPO / "bench")
    p.add_argument(
        "--scale",
        nargs="*",
        default=["1b", "7b", "verify7b"],
        choices=["1b", "7b", "verify7b"],
        help="synthetic families to run, and verify7b: evaluate and verify at 2x7B shapes (none: skip the scale "
        "part; rows not run are kept from the last results.json, dated)",
    )
    p.add_argument(
        "--quantize-synthetic", action="store_true", help="also quantize the 2x1B family (about an hour on 2 CPU cores)"
    )
    p.add_argument(
        "--quality-also",
        type=Path,
        action="append",
        default=[],
        metavar="RECIPE",
        help="also compare the fast quantize path with GPTQModel's float16 path on this recipe (repeatable)",
    )
    p.add_argument(
        "--quality-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        metavar="SEED",
        help="repeat the fast-vs-float16 comparison with these calibration seeds (other windows; about 11 minutes "
        "each on 2 CPU cores; none: skip)",
    )
    p.add_argument(
        "--sweep",
        type=Path,
        default=TINY_SWEEP,
        metavar="SWEEP",
        help="the sweep run in one process and with --ray local (default: the tiny example's four gate modes)",
    )
    p.add_argument(
        "--only-sweep",
        action="store_true",
        help="run only the sweep part and the projection; the other sections stay as the last results.json has them",
    )
    p.add_argument(
        "--only-evals",
        action="store_true",
        help="run only the evals part, on the recipe's finished build under build/; the other sections stay as the "
        "last results.json has them",
    )
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    if args.only_evals:
        results = json.loads((args.out / "results.json").read_text())
        results["evals"] = evals_bench(args.recipe, args.work / "evals", log=print)
        write_results(results, args.out)
        return
    if args.only_sweep:
        results = json.loads((args.out / "results.json").read_text())
        results["sweep"] = sweep_part(results, args.recipe, args.sweep, args.work)
        write_results(results, args.out)
        return
    recipe = yaml.safe_load(args.recipe.read_text())
    cal = recipe.get("quantize", {}).get("calibration", {})
    print(f"bench: {args.recipe} in {args.work}", flush=True)
    memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {memory} GiB, {'a GPU' if _gpu() else 'no GPU'}",
        "recipe": args.recipe.name,
        "calibration": f"{cal.get('samples', 128)} windows of {cal.get('seq_len', 512)} tokens",
    }
    results["ours"] = ours(args.recipe, args.work)
    windows = results["ours"]["quantize"].pop("windows_file")
    results["raw"] = raw_tools(args.recipe, args.work, windows)
    results["whole"] = whole(args.recipe, args.work)
    results["cache"] = cache(args.recipe, args.work)
    results["quality"] = quality(args.recipe, args.work)
    results["matmul_limit"] = matmul_limit(args.work)
    if args.quality_seeds:
        results["quality_draws"] = quality_draws(args.recipe, args.work, args.quality_seeds)
    for other in args.quality_also:  # the same fast-vs-float16 comparison on another real recipe
        more = args.work / f"more-{other.stem}"
        measure([str(BIN / "frankenmoe"), "build", str(other), "--until", "verify"], build_env(more / "ours"))
        results.setdefault("quality_more", {})[other.name] = quality(other, more)
        shutil.rmtree(more, ignore_errors=True)
    if "gguf" in {s.name for s in enabled_stages(STAGES, load_recipe(args.recipe))}:
        results["gguf"] = gguf_bench(
            args.recipe, args.work / "gguf", build_root=args.work / "ours" / "build", log=print
        )
    if "evals" in {s.name for s in enabled_stages(STAGES, load_recipe(args.recipe))}:
        results["evals"] = evals_bench(
            args.recipe, args.work / "evals", build_root=args.work / "ours" / "build", log=print
        )
    for part in ("ours", "fp16", "dense", "whole", "whole-upto", "raw-merge", "raw-awq", "matmul"):  # room for scale
        shutil.rmtree(args.work / part, ignore_errors=True)

    from bench.scale import run_family, run_verify_memory

    families = [s for s in args.scale if s != "verify7b"]
    results["scale"] = [run_family(shape, args.work, quantize=args.quantize_synthetic) for shape in families]
    if "verify7b" in args.scale:
        results["verify_memory"] = run_verify_memory(args.work)
    earlier = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").is_file() else {}
    for row in earlier.get("scale", []):  # a family not run this time keeps its earlier, dated row
        if row["shape"] not in families:
            results["scale"].append({"date": earlier["date"], **row})  # a row's own date, where it has one, wins
    if "verify_memory" not in results and "verify_memory" in earlier:
        results["verify_memory"] = {"date": earlier["date"], **earlier["verify_memory"]}
    results["sweep"] = sweep_part(results, args.recipe, args.sweep, args.work)
    write_results(results, args.out)


def write_results(results: dict, out: Path) -> None:
    table = report(results)
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "results.md").write_text(table)
    print(table)


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
