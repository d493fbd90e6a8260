"""Which lm-eval tasks a recipe names, whether their data can be reached, and where
scores are kept.

lm-evaluation-harness (lm-eval) does the scoring itself (frankenmoe/measure/lm_eval_run.py
runs it in a child process); this module is what the evals stage asks before any model
is loaded: the task list (with the `leaderboard` preset expanded), one line per task
whose data `datasets` cannot reach, and the machine-wide score store, so that a model's
scores on a task are computed once and shared by every recipe that uses that model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from frankenmoe.errors import InputFileError, RecipeError
from frankenmoe.support import settings

# The Open LLM Leaderboard (v1) tasks FrankenMoE cards report, with its few-shot counts.
LEADERBOARD = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "mmlu": 5,
    "truthfulqa_mc2": 0,
    "winogrande": 5,
    "gsm8k": 5,
}
PRESETS = {"leaderboard": LEADERBOARD}
LOCAL_BUILDERS = ("json", "csv", "text", "parquet", "arrow")


def task_list(tasks: Iterable[str]) -> list[tuple[str, int | None]]:
    """(task, few-shot count or None for the task's own) in recipe order, presets expanded, each once."""
    out: dict[str, int | None] = {}
    for name in tasks:
        for task, shots in PRESETS.get(name, {name: None}).items():
            out.setdefault(task, shots)
    return list(out.items())


def task_manager(include: Path | None, names: Iterable[str] = ()):
    """lm-eval's task index. When the include folder holds every task named, only it
    is indexed (lm-eval's own hundreds of tasks take about 10 s to index)."""
    from lm_eval.tasks import TaskManager

    if include is not None:
        own = TaskManager(include_path=str(include), include_defaults=False)
        if all(leaf_configs(own, n) for n in names) and list(names):
            return own
    return TaskManager(include_path=str(include) if include else None)


def leaf_configs(manager, name: str) -> list[dict[str, Any]]:
    """The configs of the tasks a task, group or tag name stands for."""
    entry = manager.task_index.get(name)
    if entry is None:  # a tag: every task carrying it
        return [c for n, e in manager.task_index.items() if name in (e.tags or ()) for c in leaf_configs(manager, n)]
    cfg = entry.cfg or {}
    if "group" in cfg and isinstance(cfg.get("task"), list):
        out = []
        for sub in cfg["task"]:
            out += leaf_configs(manager, sub) if isinstance(sub, str) else [sub]
        return out
    return [cfg]


def local_data_files(cfg: dict[str, Any], include: Path | None) -> list[Path]:
    """The local files a task's `dataset_kwargs.data_files` names; a relative name is
    in the include folder (lm-eval runs there: frankenmoe/measure/lm_eval_run.py)."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    names = [files] if isinstance(files, str) else list(files.values() if isinstance(files, dict) else files or [])
    flat = [f for n in names for f in ([n] if isinstance(n, str) else n) if "://" not in f]
    return [Path(f) if Path(f).is_absolute() or include is None else include / f for f in flat]


def unreachable(cfg: dict[str, Any], include: Path | None) -> str | None:
    """Why `datasets` cannot reach the task's data, or None when it can (from its
    cache, a local file or the Hub at HF_ENDPOINT): the builder is resolved, no rows read."""
    import datasets

    path = cfg.get("dataset_path")
    if not path:
        return None  # a task that brings its own documents
    if path in LOCAL_BUILDERS:
        missing = [f for f in local_data_files(cfg, include) if not f.is_file()]
        return f"no file {missing[0]}" if missing else None
    try:
        datasets.load_dataset_builder(path, cfg.get("dataset_name"), **(cfg.get("dataset_kwargs") or {}))
    except Exception as e:  # datasets says offline, not found or refused in its own classes
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"{type(e).__name__}: {first[:200]}"
    return None


def check_tasks(tasks: Iterable[str], include: Path | None) -> None:
    """Every task name is lm-eval's (or the include folder's) and its data can be reached;
    otherwise one line per task naming it and what to do. No model is loaded."""
    if include is not None and not include.is_dir():
        raise InputFileError(f"evals.include: {include} is not a folder; give the folder of your task YAMLs")
    names = [name for name, _ in task_list(tasks)]
    manager = task_manager(include, names)
    problems = []
    for name in names:
        configs = leaf_configs(manager, name)
        if not configs:
            problems.append(
                f"evals.tasks: no lm-eval task, group or tag named {name!r}; check the spelling "
                "(`lm_eval ls tasks`), or put its YAML in the evals.include folder"
            )
            continue
        for cfg in configs:
            why = unreachable(cfg, include)
            if why:
                problems.append(
                    f"evals.tasks: {name}: the data of {cfg.get('task', name)} ({cfg.get('dataset_path')}) cannot be "
                    f"reached ({why}); run once where the Hub (or HF_ENDPOINT) answers so datasets caches it, "
                    "give a local copy through evals.include, or drop the task"
                )
                break
    if problems:
        raise (RecipeError if any("no lm-eval task" in p for p in problems) else InputFileError)(problems)


# Part of every score's key: bump it when what a stored document holds changes.
# 2: the document names no model (it is shared between recipes).
STORE_FORMAT = 2


def store_root() -> Path:
    """Scores kept once per machine, shared by every recipe and clone (as llama.cpp's build is)."""
    return settings.evals_store()
