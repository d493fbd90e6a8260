"""evals: standard benchmarks by lm-evaluation-harness, on every model of the build.

The base, each expert and the 16-bit MoE are scored by lm-eval's own `hf` model type
on their folders; the 4-bit MoE, where the build made a w4a16 folder, by lm-eval's HFLM
over the model transformers reads from it (a reader that is not ours; dequantized at
load, see frankenmoe/measure/lm_eval_run.py), else by frankenmoe's AWQ reader wrapped in
HFLM, and the record says which. lm-eval runs in a child process
(frankenmoe/measure/lm_eval_run.py).

A score is kept in the machine-wide store (frankenmoe/measure/benchmarks.py) under the
model's bytes, the task's configuration and local data, the lm-eval version, the
few-shot count and `limit`: a second build, or another recipe using the same expert,
reads it instead of running lm-eval again. Output: evals.json (per model and task, each
metric with lm-eval's stderr) and lm-eval-results.json (lm-eval's own results, per model
and task). Off unless `evals.enabled`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from frankenmoe.errors import RecipeError, ToolFailed
from frankenmoe.measure import benchmarks
from frankenmoe.measure.benchmark_report import eval_results_files
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.compressed import compressed_dir
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.gguf import gguf_dir, gguf_result
from frankenmoe.stages.quantize import quantized_model
from frankenmoe.stages.resolve import model_paths
from frankenmoe.support.child import run_relaying_stdout
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.support.jsonio import write_json
from frankenmoe.support.versions import tool_versions


class ModelScores(Facts):
    # "hf" (lm-eval's own, on the folder), "transformers-dequantized" (lm-eval's HFLM over the
    # model transformers reads from the w4a16 folder, dequantized at load), "frankenmoe-awq" (our
    # reader in lm-eval's HFLM),
    # "frankenmoe-gguf" (llama.cpp on the file, frankenmoe/measure/gguf_lm.py)
    reader: str
    tasks: dict[str, dict[str, Any]]  # task -> "metric,filter" -> value (stderr as lm-eval gives it)


class TaskInfo(Facts):
    shots: int | None  # the few-shot count asked for; None: the task's own
    dataset: str | None  # its Hub dataset id, None for local data
    higher_is_better: dict[str, bool]  # metric -> direction, as lm-eval reports it


class EvalsResult(Facts):
    lm_eval: str  # the version that scored
    limit: float | None  # documents per task (a share below 1)
    computed: int  # (model, task) runs this build made
    reused: int  # read from the score store
    models: dict[str, ModelScores]  # "base", "experts[i]", "moe", "4-bit", "gguf <TYPE>"
    tasks: dict[str, TaskInfo]


def evals_result(result: StageResult) -> EvalsResult:
    return result.read(EvalsResult)


# Each published folder carries lm-eval's results; the Hub metadata of the model measured on it.
MEASURED_ON = {
    "merged": ("moe", "hf"),
    "w4a16": ("4-bit", "transformers-dequantized"),
    "awq": ("4-bit", "frankenmoe-awq"),
}


def include_folder(recipe: Recipe) -> Path | None:
    return recipe.path(recipe.evals.include) if recipe.evals.include else None


def folder_identity(folder: Path, state: HashState) -> str:
    """A model by its bytes: the sha256 of every file in its folder (or of its one GGUF file)."""
    if folder.is_file():
        return state.sha256(folder)
    return sha256_json({f.name: state.sha256(f) for f in sorted(folder.iterdir()) if f.is_file()})


def task_identity(manager, task: str, include: Path | None, state: HashState) -> str:
    """A task by its resolved configuration and the bytes of its local data files."""
    configs = benchmarks.leaf_configs(manager, task)
    data = {
        str(f): state.sha256(f) for cfg in configs for f in benchmarks.local_data_files(cfg, include) if f.is_file()
    }
    return sha256_json({"configs": json.loads(json.dumps(configs, default=str)), "data": sorted(data.values())})


class EvalsStage(Stage):
    name = "evals"
    version = 2  # 2: the 4-bit model read dequantized; lm-eval's results in gguf/ too
    depends = ("resolve", "gates", "quantize")
    optional_depends = ("w4a16", "gguf")
    packages = ("lm_eval", "torch", "transformers", "datasets", "huggingface-hub")
    publishes = {folder: f"published/{folder}" for folder in (*MEASURED_ON, "gguf")}
    diagnostics = ("logs/",)

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.evals.enabled

    def config(self, recipe: Recipe) -> dict[str, Any]:
        e = recipe.evals
        return {"tasks": benchmarks.task_list(e.tasks), "limit": e.limit, "models": e.models}

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        folder = include_folder(recipe)
        if folder is None or not folder.is_dir():
            return {}
        return {
            "include": {str(f.relative_to(folder)): state.sha256(f) for f in sorted(folder.rglob("*")) if f.is_file()}
        }

    def preflight(self, recipe: Recipe) -> None:
        asked = "models" in recipe.evals.model_fields_set  # by default, gguf means the GGUF files there are
        if asked and "gguf" in recipe.evals.models and not recipe.gguf.enabled:
            raise RecipeError("evals.models: gguf, but gguf.enabled is false; make GGUF files or drop gguf")
        benchmarks.check_tasks(recipe.evals.tasks, include_folder(recipe))

    def models(self, ctx: StageContext) -> list[tuple[str, str, Path]]:
        """(label, reader, folder) of every model the recipe scores, in a stable order."""
        wanted, out = ctx.recipe.evals.models, []
        paths = model_paths(ctx.inputs["resolve"])
        if "base" in wanted:
            out.append(("base", "hf", paths["base"]))
        if "experts" in wanted:
            out += [(f"experts[{i}]", "hf", paths[f"experts[{i}]"]) for i in range(len(ctx.recipe.experts))]
        if "moe" in wanted:
            out.append(("moe", "hf", routed_model(ctx.inputs["gates"])))
        if "4-bit" in wanted:
            if "w4a16" in ctx.inputs:
                out.append(("4-bit", "transformers-dequantized", compressed_dir(ctx.inputs["w4a16"])))
            else:
                out.append(("4-bit", "frankenmoe-awq", quantized_model(ctx.inputs["quantize"])))
        if "gguf" in wanted and "gguf" in ctx.inputs:
            folder = gguf_dir(ctx.inputs["gguf"])
            files = gguf_result(ctx.inputs["gguf"]).files
            out += [(f"gguf {t}", "frankenmoe-gguf", folder / f) for t, f in files.items()]
        return out

    def run(self, ctx: StageContext) -> EvalsResult:
        e = ctx.recipe.evals
        version = tool_versions(["lm_eval"])["lm_eval"]
        ctx.log("evals     indexing lm-eval's tasks")
        tasks = benchmarks.task_list(e.tasks)
        manager = benchmarks.task_manager(include_folder(ctx.recipe), [t for t, _ in tasks])
        store = benchmarks.store_root().resolve()  # the child runs in the task folder
        store.mkdir(parents=True, exist_ok=True)
        task_ids = {t: task_identity(manager, t, include_folder(ctx.recipe), ctx.state) for t, _ in tasks}
        files: dict[tuple[str, str], Path] = {}
        jobs, readers = [], {}
        for label, reader, folder in self.models(ctx):
            readers[label] = reader
            model_id = folder_identity(folder, ctx.state)
            for task, shots in tasks:
                material = {"model": model_id, "reader": reader, "task": task_ids[task], "shots": shots}
                key = sha256_json({**material, "limit": e.limit, "lm_eval": version, "format": benchmarks.STORE_FORMAT})
                files[label, task] = store / f"{key}.json"
                if not files[label, task].is_file():
                    job = {
                        "label": label,
                        "reader": reader,
                        "path": str(folder.resolve()),
                        "task": task,
                        "shots": shots,
                    }
                    jobs.append({**job, "store_file": str(files[label, task])})
        reused = len(files) - len(jobs)
        ctx.log(f"evals     {len(files)} model x task scores: {reused} from the store, {len(jobs)} to run")
        if jobs:
            self.run_lm_eval(ctx, jobs)
        results = {lt: json.loads(f.read_text()) for lt, f in files.items()}
        scores = {
            label: ModelScores(reader=reader, tasks={t: table_row(results[label, t], t) for t, _ in tasks})
            for label, reader in readers.items()
        }
        own = {label: {t: results[label, t] for t, _ in tasks} for label in readers}
        info = {
            t: TaskInfo(
                shots=shots,
                dataset=hub_dataset(benchmarks.leaf_configs(manager, t)),
                # lm-eval says it per task, the same in every model's results
                higher_is_better=next((results[m, t]["higher_is_better"].get(t, {}) for m in readers), {}),
            )
            for t, shots in tasks
        }
        doc = EvalsResult(lm_eval=version, limit=e.limit, computed=len(jobs), reused=reused, models=scores, tasks=info)
        write_json(ctx.out / "lm-eval-results.json", own)
        # what was measured, not how this run got it (computed or from the store)
        write_json(ctx.out / "evals.json", doc.model_dump(mode="json", exclude={"computed", "reused"}))
        self.publish(ctx, doc, own)
        return doc

    def publish(self, ctx: StageContext, doc: EvalsResult, own: dict) -> None:
        """lm-eval's results into every published folder; the Hub's `.eval_results/`
        into the folder the scores were measured on (not gguf/: it holds several models)."""
        for folder in self.publishes:
            if folder in ("w4a16", "gguf") and folder not in ctx.inputs:
                continue
            out = ctx.out / "published" / folder
            out.mkdir(parents=True)
            write_json(out / "lm-eval-results.json", own)
            label, reader = MEASURED_ON.get(folder, ("", ""))  # gguf/: several models, no metadata
            if label not in doc.models or doc.models[label].reader != reader:
                continue
            for name, entries in eval_results_files(doc.record(), label).items():
                (out / ".eval_results").mkdir(exist_ok=True)
                (out / ".eval_results" / name).write_text(yaml.safe_dump(entries, sort_keys=False), encoding="utf-8")

    def run_lm_eval(self, ctx: StageContext, jobs: list[dict]) -> None:
        (ctx.out / "logs").mkdir()
        spec = ctx.out / "logs" / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "include": str(include.resolve()) if (include := include_folder(ctx.recipe)) else None,
                    "limit": ctx.recipe.evals.limit,
                    "tokenizer": str(routed_model(ctx.inputs["gates"]).resolve()),
                    "jobs": jobs,
                }
            )
        )
        log = ctx.out / "logs" / "lm-eval.log"
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "frankenmoe.measure.lm_eval_run", str(spec.resolve())]
        code = run_relaying_stdout(cmd, env, log, ctx.log)
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise ToolFailed(f"evals: lm-eval failed (exit {code}){': ' + tail[0] if tail else ''}; full log: {log}")


def hub_dataset(configs: list[dict]) -> str | None:
    """The one Hub dataset a task's documents come from, or None (local files, several)."""
    paths = {c.get("dataset_path") for c in configs}
    if len(paths) != 1:
        return None
    (path,) = paths
    if not path or path in benchmarks.LOCAL_BUILDERS or Path(path).exists():
        return None
    return path


def table_row(doc: dict, task: str) -> dict[str, float | str]:
    """The task's own metrics (a group's aggregate for a group), as lm-eval reports them."""
    return {k: v for k, v in doc["results"].get(task, {}).items() if "," in k}
