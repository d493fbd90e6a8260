"""The evals stage's scores as the cards show them: one table per task, the MoE
against its best expert, and the Hub's evaluation metadata.

Only lm-eval's numbers are shown: each metric with lm-eval's own stderr where it gives
one. "MoE vs best expert" compares the task's first metric; a loss is flagged when it
is larger than twice the stderr of the difference (both stderrs combined), and not
judged where lm-eval gives no stderr (the perplexity metrics).
"""

from __future__ import annotations

import math
from typing import Any

LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"


def metrics(row: dict[str, Any]) -> list[str]:
    """The metric names of a task's row, in lm-eval's order, without stderr entries."""
    return [k for k in row if "_stderr," not in k]


def stderr(row: dict[str, Any], metric: str) -> float | None:
    name, _, flt = metric.partition(",")
    value = row.get(f"{name}_stderr,{flt}")
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def cell(row: dict[str, Any], metric: str) -> str:
    value, se = row.get(metric), stderr(row, metric)
    if not isinstance(value, (int, float)):
        return "-"
    text = f"{value:.4g}" if abs(value) >= 100 else f"{value:.4f}"
    return f"{text} ± {se:.4f}" if se is not None else text


def label_name(label: str, names: dict[str, str]) -> str:
    return names.get(label, label)


def in_table_order(labels, names: dict[str, str]) -> list[str]:
    """`labels` in the order of `names` (the card's), any other after them, sorted: never
    the order a record happens to hold, so a build whose evals came from the cache
    writes the card a fresh build writes."""
    rank = {label: i for i, label in enumerate(names)}
    return sorted(labels, key=lambda label: (rank.get(label, len(rank)), label))


def best_expert_line(task: str, scores: dict, info: dict, names: dict[str, str]) -> str | None:
    """The MoE's first metric on `task` against the best expert's, judged by 2 stderr."""
    experts = [m for m in scores if m.startswith("experts[")]
    if "moe" not in scores or not experts:
        return None
    moe = scores["moe"]["tasks"][task]
    metric = metrics(moe)[0]
    higher = info.get("higher_is_better", {}).get(metric.split(",")[0], True)
    pick = max if higher else min
    best = pick(experts, key=lambda m: scores[m]["tasks"][task][metric])
    ours, theirs = moe[metric], scores[best]["tasks"][task][metric]
    loss = (theirs - ours) if higher else (ours - theirs)
    head = f"MoE vs best expert ({label_name(best, names)}): {metric.split(',')[0]} {ours:.4f} vs {theirs:.4f}"
    se_a, se_b = stderr(moe, metric), stderr(scores[best]["tasks"][task], metric)
    if se_a is None or se_b is None:
        return f"{head}; lm-eval gives no stderr for this metric, so the difference is not judged."
    limit = 2 * math.hypot(se_a, se_b)
    verdict = (
        f"**the MoE loses by more than 2 stderr** ({loss:.4f} > {limit:.4f})"
        if loss > limit
        else f"within 2 stderr ({limit:.4f}) or better"
    )
    return f"{head}; {verdict}."


def evals_markdown(doc: dict, names: dict[str, str]) -> str:
    """The card's "Evaluation results" section from the evals stage's result; `names`:
    each model's label in the card, in the order of the table's rows."""
    scores, tasks = doc["models"], doc["tasks"]
    readers = {m: s["reader"] for m, s in scores.items()}
    four = readers.get("4-bit")
    how = {
        "transformers-dequantized": "the 4-bit model through lm-eval's `HFLM` over transformers' `from_pretrained` on "
        "the compressed-tensors (w4a16) folder, dequantized at load",
        "frankenmoe-awq": "the 4-bit model through frankenmoe's AWQ reader inside lm-eval's `HFLM` (transformers "
        "cannot read the AWQ folder)",
    }.get(four or "")
    limit = doc["limit"]
    lines = [
        "## Evaluation results",
        "",
        f"[lm-evaluation-harness]({LM_EVAL_URL}) {doc['lm_eval']}, "
        + (f"the first {limit:g} documents of each task" if limit and limit >= 1 else "")
        + (f"{limit:g} of each task's documents" if limit and limit < 1 else "")
        + ("every document of each task" if not limit else "")
        + "; every model through lm-eval's own `hf` model type on its folder"
        + (f", {how}" if how else "")
        + (
            ", each GGUF file through llama.cpp as the lm-eval model `frankenmoe-gguf` (the 16-bit model's tokenizer)"
            if "frankenmoe-gguf" in readers.values()
            else ""
        )
        + ". Scores ± lm-eval's stderr; results JSON: `lm-eval-results.json`.",
        "",
    ]
    for task, info in tasks.items():
        order = in_table_order([m for m in scores if task in scores[m]["tasks"]], names)
        if not order:
            continue
        cols = metrics(scores[order[0]]["tasks"][task])
        shots = info.get("shots")
        lines += [f"### {task}" + (f" ({shots}-shot)" if shots is not None else ""), ""]
        lines += ["| model | " + " | ".join(c.split(",")[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in order:
            row = scores[m]["tasks"][task]
            lines.append(f"| {label_name(m, names)} | " + " | ".join(cell(row, c) for c in cols) + " |")
        line = best_expert_line(task, scores, info, names)
        lines += ["", line, ""] if line else [""]
    return "\n".join(lines).rstrip() + "\n"


def model_index(doc: dict, label: str) -> list:
    """huggingface_hub EvalResults (the card's `model-index`) of one model, for the
    tasks without a Hub dataset id (those go to .eval_results/)."""
    from huggingface_hub import EvalResult

    out = []
    for task, info in doc["tasks"].items():
        row = doc["models"].get(label, {}).get("tasks", {}).get(task)
        if row is None or info.get("dataset"):
            continue
        for metric in metrics(row):
            if isinstance(row[metric], (int, float)):
                out.append(
                    EvalResult(
                        task_type="text-generation",
                        dataset_type=task,
                        dataset_name=task,
                        metric_type=metric.split(",")[0],
                        metric_value=round(float(row[metric]), 6),
                        source_name="lm-evaluation-harness",
                        source_url=LM_EVAL_URL,
                    )
                )
    return out


def eval_results_files(doc: dict, label: str) -> dict[str, list[dict]]:
    """{file name: entries} of `.eval_results/*.yaml` (huggingface_hub's EvalResultEntry
    format) for the tasks whose data is a Hub dataset: the task's first metric."""
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    out = {}
    for task, info in doc["tasks"].items():
        row = doc["models"].get(label, {}).get("tasks", {}).get(task)
        if row is None or not info.get("dataset"):
            continue
        metric = metrics(row)[0]
        entry = EvalResultEntry(
            dataset_id=info["dataset"],
            task_id=task,
            value=round(float(row[metric]), 6),
            source_url=LM_EVAL_URL,
            source_name="lm-evaluation-harness",
            notes=f"{metric.split(',')[0]}, {info.get('shots') if info.get('shots') is not None else 'default'}-shot",
        )
        out[f"{task}.yaml"] = eval_result_entries_to_yaml([entry])
    return out
