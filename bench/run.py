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
from bench.gguf import gguf_bench
from bench.measure import BIN, REPO, build_env, measure, movable_recipe, ran_line, stage_record
from bench.report import FIGURES, report
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
