"""evals: the stage's time next to the `lm_eval` CLI alone on the same models and tasks.

The stage's time is `frankenmoe build` with every other stage served from the cache and
an empty score store, so it carries all the stage adds to lm-eval: the child process,
lm-eval's task index, hashing each model for the store's keys, the published files.
The CLI alone is what a user types: one `lm_eval` command per model with every task at
once, the same limit, batch size, dtype and device; a GGUF file through the lm-eval
model the stage uses (`frankenmoe-gguf`, registered by importing
frankenmoe.measure.gguf_lm; lm-eval has no model of its own that reads a local GGUF file
without a server). The jobs are read from the stage's own spec, so both sides score the
same (model, task) pairs; each pair's scores are compared too.

Usage (after a build of the recipe): python -m bench.evals RECIPE [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from itertools import groupby
from pathlib import Path

from bench.measure import BIN, REPO, build_env, measure, ran_line
from frankenmoe.engine.build import default_layout
from frankenmoe.measure.lm_eval_run import BATCH_SIZE
from frankenmoe.recipe import load_recipe

# lm-eval's own command line with frankenmoe's GGUF model registered (then lm-eval's own
# models are not: this is for GGUF files only).
CLI = "import sys, frankenmoe.measure.gguf_lm; from lm_eval.__main__ import cli_evaluate; sys.argv[0] = 'lm_eval'; "
CLI += "cli_evaluate()"


def cli_command(job: dict, tasks: list[str], spec: dict, out: Path) -> list[str]:
    """The `lm_eval` command a user types for one model and its tasks."""
    if job["reader"] in ("hf", "transformers-dequantized"):  # the w4a16 folder as a user would score it
        cmd = [str(BIN / "python"), "-m", "lm_eval", "--model", "hf"]
        cmd += ["--model_args", f"pretrained={job['path']},dtype=float32"]
    else:  # frankenmoe-gguf
        cmd = [str(BIN / "python"), "-c", CLI, "--model", "frankenmoe-gguf"]
        cmd += ["--model_args", f"gguf={job['path']},tokenizer={spec['tokenizer']}"]
    cmd += ["--device", "cpu", "--batch_size", str(BATCH_SIZE)]
    cmd += ["--tasks", ",".join(tasks), "--output_path", str(out)]
    if spec["include"]:
        cmd += ["--include_path", spec["include"]]
    if spec["limit"] is not None:
        cmd += ["--limit", str(spec["limit"])]
    if job["shots"] is not None:
        cmd += ["--num_fewshot", str(job["shots"])]
    return cmd


def job_seconds(out: str, label: str, task: str) -> float:
    """One (model, task) run's time from the stage's progress line."""
    head = f"evals     {label} · {task}: "
    line = next(x for x in out.splitlines() if x.startswith(head))
    return float(line[len(head) :].split()[0])


def evals_bench(recipe_file: Path, work: Path, build_root: Path | None = None, log=print) -> dict:
    recipe = load_recipe(recipe_file)
    source = (build_root or default_layout(recipe).build_root) / recipe.name
    shutil.rmtree(work, ignore_errors=True)
    (work / "build").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(source), str(work / "build" / recipe.name)], check=True)
    shutil.rmtree(work / "build" / recipe.name / "evals", ignore_errors=True)
    env = build_env(work)  # an empty score store of its own
    log(f"bench evals: the stage on {recipe_file.name}, every other stage from the cache")
    stage = measure([str(BIN / "frankenmoe"), "build", str(recipe_file)], env)
    line = ran_line("evals", stage["out"])  # "evals ran <seconds>s <folder>"
    folder = Path(line.split()[-1])
    spec = json.loads((folder / "logs" / "spec.json").read_text())
    ours = json.loads((folder / "lm-eval-results.json").read_text())
    runs, same = [], True
    for (label, reader, path, shots), jobs in groupby(
        spec["jobs"], key=lambda j: (j["label"], j["reader"], j["path"], j["shots"])
    ):
        jobs = list(jobs)
        if reader not in ("hf", "transformers-dequantized", "frankenmoe-gguf"):
            log(f"bench evals: {label} ({reader}) has no lm_eval command to compare with; no ratio is given")
            continue
        tasks = [j["task"] for j in jobs]
        out = work / "cli" / label.replace(" ", "_").replace("[", "").replace("]", "")
        log(f"bench evals: lm_eval on {label}: {', '.join(tasks)}")
        cwd = Path(spec["include"]) if spec["include"] else REPO  # data files named relative to the task folder
        run = measure(cli_command(jobs[0], tasks, spec, out), cwd=cwd)
        (results,) = list(out.rglob("results_*.json"))
        theirs = json.loads(results.read_text())["results"]
        diffs = {
            task: max(
                (
                    abs(v - theirs[task][k]) / max(1.0, abs(v))
                    for k, v in ours[label][task]["results"][task].items()
                    if isinstance(v, (int, float)) and k in theirs.get(task, {})
                ),
                default=float("nan"),
            )
            for task in tasks
        }
        # the 4-bit model: dequantized at load in the stage, at the first forward by `hf` on the folder
        same &= all(d <= (1e-4 if reader == "transformers-dequantized" else 1e-6) for d in diffs.values())
        runs.append(
            {
                "model": label,
                "reader": reader,
                "tasks": tasks,
                "wall_s": run["wall_s"],
                "stage_jobs_s": round(sum(job_seconds(stage["out"], label, t) for t in tasks), 1),
                "max_diff": diffs,
            }
        )
    skipped = {j["label"] for j in spec["jobs"]} - {r["model"] for r in runs}
    cli_s = sum(r["wall_s"] for r in runs)
    return {
        "recipe": recipe_file.name,
        "limit": spec["limit"],
        "jobs": len(spec["jobs"]),
        "build_wall_s": stage["wall_s"],
        "stage_s": float(line.split()[2].rstrip("s")),
        "cli_wall_s": round(cli_s, 1),
        "ratio": round(stage["wall_s"] / cli_s, 3) if cli_s and not skipped else None,
        "same_scores": same,
        "left_out": sorted(skipped),
        "cli": runs,
    }


def report(e: dict) -> list[str]:
    """bench/results.md's evals section."""
    lines = [
        "",
        f"evals (lm-eval {', '.join(sorted({t for r in e['cli'] for t in r['tasks']}))}, limit {e['limit']}, "
        f"{e['jobs']} model x task runs):",
        "",
        "- the stage in `frankenmoe build` (every other stage cached, an empty score store): "
        f"{e['build_wall_s']:.1f} s "
        f"(the stage's own {e['stage_s']:.1f} s); the `lm_eval` command alone, once per model: "
        f"{e['cli_wall_s']:.1f} s; "
        + (f"**{e['ratio']}x**" if e["ratio"] else f"no ratio (no `lm_eval` command for {', '.join(e['left_out'])})")
        + ("; the same scores on both sides" if e["same_scores"] else "; **the scores differ**: see results.json"),
        "",
        "| model | stage's reader | the stage's runs (s) | `lm_eval` alone, load included (s) | "
        "largest relative difference in scores |",
        "|---|---|---|---|---|",
    ]
    for r in e["cli"]:
        lines.append(
            f"| {r['model']} | {r['reader']} | {r['stage_jobs_s']:.1f} | {r['wall_s']:.1f} | "
            f"{max(r['max_diff'].values()):.1e} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("--work", type=Path, default=REPO / "build" / ".bench" / "evals")
    args = p.parse_args()
    json.dump(evals_bench(args.recipe, args.work), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
