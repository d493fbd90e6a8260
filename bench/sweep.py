"""The sweep part of `make bench`: a sweep file in this process and on a local Ray
cluster, each from nothing in its own build folder, the time ratio and whether they
measured the same; and, from per-stage times measured here, what a 2x7B four-mode
sweep (the study's hidden, cheap_embed, random and fitted) takes on 1, 4 and 8 workers.

The projection schedules the sweep's real task graph (frankenmoe/engine/graph.py's
dependencies of the 2x7B recipe's stages; a stage is one task per gate mode once it
reads the merge, one per variant once it reads the gates, else one for all) on G
workers as the executors run it: a task starts on a free worker as soon as the tasks it
reads are done, in the order the sweep lists them. Per-stage times are this machine's,
so a worker here is a CPU worker; on GPUs each time is smaller, the schedule the same.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path
from typing import Sequence

import yaml

from bench.measure import BIN, REPO, build_env, measure, movable_recipe, stage_record
from bench.scale import CALIBRATION
from frankenmoe.engine.graph import dependencies, enabled_stages
from frankenmoe.engine.repro import tree_hashes
from frankenmoe.experiments.sweep import without_timings
from frankenmoe.experiments.variants import sweep_stages
from frankenmoe.recipe import load_recipe
from frankenmoe.stages import STAGES

TINY_SWEEP = REPO / "recipes" / "sweeps" / "tiny-2x-modes.yaml"
PROJECTED_RECIPE = REPO / "recipes" / "confinus-2x7b.yaml"
MODES = ("hidden", "cheap_embed", "random", "fitted")  # frankenmoe study's; fitted: hidden with gates.fit
WORKERS = (1, 4, 8)
SYNTHETIC_CALIBRATION = f"{CALIBRATION['samples']} windows of {CALIBRATION['seq_len']} tokens"  # bench/scale.py's
EXIT_FAILED_VERIFY = 6  # the tiny sweep's random, unfitted variant fails verify, measured (tests/test_sweep.py)


def sweep_both_ways(sweep_file: Path, work: Path) -> dict:
    """`frankenmoe sweep` in one process, then with `--ray local`, each in a fresh build folder."""
    name = yaml.safe_load(sweep_file.read_text()).get("name", sweep_file.stem)
    runs, docs, trees = {}, {}, {}
    for label, extra in (("in_process", []), ("ray_local", ["--ray", "local"])):
        root = work / f"sweep-{label}"
        m = measure(
            [str(BIN / "frankenmoe"), "sweep", str(sweep_file), *extra], build_env(root), ok=(0, EXIT_FAILED_VERIFY)
        )
        folder = root / "build" / name
        docs[label] = json.loads((folder / "sweep.json").read_text())
        trees[label] = tree_hashes(folder / "variants")
        runs[label] = {"wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"], "exit_code": m["exit_code"]}
    rows = docs["in_process"]["variants"]
    return {
        "sweep": str(sweep_file.relative_to(REPO)),
        "variants": len(rows),
        "failed": [r["name"] for r in rows if r["state"] != "built"],
        "runs": runs,
        "ray_over_in_process": round(runs["ray_local"]["wall_s"] / runs["in_process"]["wall_s"], 2),
        "same_measurements": without_timings(docs["in_process"]) == without_timings(docs["ray_local"]),
        "same_published_bytes": trees["in_process"] == trees["ray_local"],
        "published_files": len(trees["in_process"]),
    }


def fit_time(recipe_file: Path, work: Path) -> float:
    """The gates stage's own seconds with `gates.fit: true` on the recipe (its merge built first)."""
    data = movable_recipe(recipe_file)
    data.setdefault("gates", {})["fit"] = True
    data.setdefault("name", recipe_file.stem)
    work.mkdir(parents=True, exist_ok=True)
    fitted = work / f"{recipe_file.stem}-fitted.yaml"
    fitted.write_text(yaml.safe_dump(data, sort_keys=False))
    m = measure([str(BIN / "frankenmoe"), "build", str(fitted), "--until", "gates"], build_env(work / "fit"))
    return stage_record("gates", m["out"])["wall_s"]


# Stages measured on the real example only, each scaled by the 2x7B/example ratio of a
# stage that does the same kind of work (None: not scaled, it writes a few small files).
LIKE = {
    "lock": "resolve",  # both hash the sources
    "gates": "merge",  # unfitted: the merged model passed on, copied
    "gates_fit": "evaluate",  # passes over text, forward and backward
    "gguf": "evaluate",  # llama.cpp's files and its passes over the held-out text
    "card": None,
    "manifest": None,
}


def stage_inputs(results: dict, fit_s: float) -> dict[str, dict]:
    """Each stage's seconds at 2x7B shapes on this machine, with where the figure comes from.

    Measured at 2x7B shapes: resolve and merge (the whole 2x7B), baseline, evaluate,
    verify and quantize (two layers deep, times the family's 32 layers over 2: each pass streams one
    layer). The others were measured on the real example only and are scaled as LIKE says."""
    seven = next(r for r in results["scale"] if r["shape"] == "7b")
    vm = results["verify_memory"]
    depth = seven["num_hidden_layers"] / vm["layers"]  # the 2x7B family's depth over the measured one
    out = {
        stage: {"s": seven["build_until_merge"]["stages_s"][stage], "from": f"the 2x7B family's own, {seven['date']}"}
        for stage in ("resolve", "merge")
    }
    for stage in ("baseline", "evaluate", "verify"):
        out[stage] = {
            "s": vm["stages_s"][stage] * depth,
            "from": f"2x7B shapes {vm['layers']} layers deep x{depth:g}, {vm['date']}",
        }
    out["quantize"] = {
        "s": vm["quantize"]["stage_s"] * depth,
        "from": f"2x7B shapes {vm['layers']} layers deep x{depth:g}, {SYNTHETIC_CALIBRATION}, {vm['date']}",
    }
    example = {**{k: v["stage_s"] for k, v in results["ours"].items()}, "gates_fit": fit_s}
    for stage, like in LIKE.items():
        if like is None:
            out[stage] = {"s": example[stage], "from": f"real example {example[stage]:.1f} s, not scaled"}
            continue
        ratio = out[like]["s"] / example[like]
        out[stage] = {
            "s": example[stage] * ratio,
            "from": f"real example {example[stage]:.1f} s x{ratio:.0f} (the {like} stage's 2x7B/example ratio)",
        }
    return {k: {**v, "s": round(v["s"], 1)} for k, v in out.items()}


def sweep_tasks(stage_s: dict[str, dict], modes: Sequence[str] = MODES) -> dict[str, tuple[float, tuple[str, ...]]]:
    """The four-mode sweep of the 2x7B recipe as tasks: name -> (seconds, names it waits for)."""
    recipe = load_recipe(PROJECTED_RECIPE)
    stages = sweep_stages(enabled_stages(STAGES, recipe), recipe, None)
    closure: dict[str, set[str]] = {}
    for s in stages:
        deps = dependencies(s, stages)
        closure[s.name] = set(deps).union(*(closure[d] for d in deps))

    def task(stage: str, mode: str) -> str:
        if stage == "gates" or "gates" in closure[stage]:
            return f"{stage}[{mode}]"
        if stage == "merge" or "merge" in closure[stage]:
            return f"{stage}[{'hidden' if mode == 'fitted' else mode}]"
        return stage

    tasks: dict[str, tuple[float, tuple[str, ...]]] = {}
    for mode in modes:
        for s in stages:
            name = task(s.name, mode)
            if name in tasks:
                continue
            key = "gates_fit" if s.name == "gates" and mode == "fitted" else s.name
            seconds = stage_s[key]["s"]
            tasks[name] = (seconds, tuple(task(d, mode) for d in dependencies(s, stages)))
    return tasks


def schedule(tasks: dict[str, tuple[float, tuple[str, ...]]], workers: int) -> float:
    """Seconds until the last task ends: each task starts, in listed order, on a free
    worker as soon as the tasks it waits for are done."""
    pending, running, finished, free, now = list(tasks), [], set(), workers, 0.0
    while pending or running:
        for name in [n for n in pending if all(d in finished for d in tasks[n][1])]:
            if not free:
                break
            pending.remove(name)
            free -= 1
            heapq.heappush(running, (now + tasks[name][0], name))
        now, name = heapq.heappop(running)
        finished.add(name)
        free += 1
    return now


def longest_chain(tasks: dict[str, tuple[float, tuple[str, ...]]]) -> list[str]:
    """The chain of tasks, each waiting for the one before, with the most seconds in all."""
    best: dict[str, tuple[float, list[str]]] = {}
    for name, (seconds, after) in tasks.items():  # listed after what they wait for
        before = max((best[d] for d in after), default=(0.0, []), key=lambda b: b[0])
        best[name] = (before[0] + seconds, [*before[1], name])
    return max(best.values(), key=lambda b: b[0])[1]


def projection(stage_s: dict[str, dict]) -> dict:
    tasks = sweep_tasks(stage_s)
    ends = {g: schedule(tasks, g) for g in WORKERS}
    chain = longest_chain(tasks)
    cal = load_recipe(PROJECTED_RECIPE).quantize.calibration
    return {
        "recipe_calibration": f"{cal.samples} windows of {cal.seq_len} tokens",
        "longest_chain": chain,
        "longest_chain_s": round(sum(tasks[n][0] for n in chain)),
        "recipe": PROJECTED_RECIPE.name,
        "modes": list(MODES),
        "stages": stage_s,
        "tasks": {k: {"s": v[0], "after": list(v[1])} for k, v in tasks.items()},
        "workers": {str(g): {"s": round(t), "speedup": round(ends[1] / t, 2)} for g, t in ends.items()},
    }


def report(part: dict) -> list[str]:
    b, p = part["both_ways"], part["projection"]
    ip, ray = b["runs"]["in_process"], b["runs"]["ray_local"]
    lines = [
        "",
        f"Sweep (`frankenmoe sweep {b['sweep']}`, {b['variants']} variants, each from nothing in its own build "
        f"folder), measured {part['date']}:",
        "",
        f"- in one process {ip['wall_s']:.1f} s, peak RSS {ip['peak_rss_mb']} MB; `--ray local` {ray['wall_s']:.1f} s, "
        f"peak RSS {ray['peak_rss_mb']} MB: Ray / one process **{b['ray_over_in_process']}x** on "
        f"{part['cpus']} CPUs (torch in one process already computes on every core; Ray's workers add "
        f"{ray['peak_rss_mb'] - ip['peak_rss_mb']} MB of peak RSS)",
        f"- same sweep.json measurements (timings and nodes aside): {'yes' if b['same_measurements'] else 'NO'}; "
        f"the {b['published_files']} published files byte-identical: {'yes' if b['same_published_bytes'] else 'NO'}"
        + (f"; failed variants, reported in both: {', '.join(b['failed'])}" if b["failed"] else ""),
        "",
        f"Projected: a four-mode sweep ({', '.join(p['modes'])}) of `{p['recipe']}` on 1, 4 and 8 workers. "
        "T(G) is the end of a list schedule of the sweep's tasks on G workers: each task starts on a free worker "
        f"once the tasks it reads are done. Tasks ({len(p['tasks'])}): {counts(p['tasks'])}. With one worker T(1) "
        "is the sum of every task; with a worker for every task that can run at once it is the longest chain. "
        "Each task's time is its stage's time on this machine at 2x7B shapes:",
        "",
        "| stage | seconds | from |",
        "|---|---|---|",
        *(f"| {k} | {v['s']:.0f} | {v['from']} |" for k, v in p["stages"].items()),
        "",
        "| workers | T(G) | hours | speed-up T(1)/T(G) |",
        "|---|---|---|---|",
        *(f"| {g} | {w['s']} s | {w['s'] / 3600:.1f} | {w['speedup']}x |" for g, w in p["workers"].items()),
        "",
        f"- the longest chain, {p['longest_chain_s']} s: {' -> '.join(p['longest_chain'])}",
        f"- the quantize row calibrates on {SYNTHETIC_CALIBRATION}; `{p['recipe']}` asks for "
        f"{p['recipe_calibration']}, which takes longer (not measured)",
        "- per-stage times are this CPU's; on GPUs each stage is faster and the same schedule applies (GPU times "
        "not measured: no GPU here)",
    ]
    w = p["workers"]
    if w["8"]["s"] == w["4"]["s"]:
        lines.append(
            "- 8 workers end when 4 do: a variant's stages run one after another and there are 4 variants, so "
            "past 4 the extra workers wait"
        )
    return lines


def counts(tasks: dict) -> str:
    """'resolve x1, merge x3, ...' in the tasks' order."""
    per: dict[str, int] = {}
    for name in tasks:
        per[name.split("[")[0]] = per.get(name.split("[")[0], 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in per.items())


def sweep_part(results: dict, recipe_file: Path, sweep_file: Path, work: Path) -> dict:
    """The sweep's ratio and equality, the recipe's router fit time, and the projection
    from those and the 2x7B rows of `results`."""
    import os
    import time

    fit_s = fit_time(recipe_file, work / "sweep-fit")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "both_ways": sweep_both_ways(sweep_file, work),
        "fit_s": fit_s,
        "projection": projection(stage_inputs(results, fit_s)),
    }
