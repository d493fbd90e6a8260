"""The card's evaluation section from lm-eval's numbers: the MoE against its best
expert judged by 2 stderr, and the Hub's metadata split by where a task's data lives."""

from __future__ import annotations

from frankenmoe.measure.benchmark_report import eval_results_files, evals_markdown, model_index


def doc(moe_acc: float, expert_acc: float, se: float) -> dict:
    row = lambda acc: {"acc,none": acc, "acc_stderr,none": se, "acc_norm,none": acc, "acc_norm_stderr,none": se}
    return {
        "lm_eval": "0.4.13",
        "limit": 100,
        "models": {
            "experts[0]": {"reader": "hf", "tasks": {"arc_easy": row(expert_acc), "local_mc": row(expert_acc)}},
            "experts[1]": {"reader": "hf", "tasks": {"arc_easy": row(0.1), "local_mc": row(0.1)}},
            "moe": {"reader": "hf", "tasks": {"arc_easy": row(moe_acc), "local_mc": row(moe_acc)}},
        },
        "tasks": {
            "arc_easy": {"shots": 0, "dataset": "allenai/ai2_arc", "higher_is_better": {"acc": True}},
            "local_mc": {"shots": None, "dataset": None, "higher_is_better": {"acc": True}},
        },
    }


def test_a_loss_beyond_two_stderr_is_flagged_and_a_small_one_is_not():
    names = {"experts[0]": "expert 0 (code)"}
    flagged = evals_markdown(doc(0.50, 0.60, 0.02), names)  # 0.10 > 2 * hypot(0.02, 0.02) = 0.057
    assert "MoE vs best expert (expert 0 (code)): acc 0.5000 vs 0.6000; **the MoE loses by more than 2 stderr**" in (
        flagged
    )
    assert "| expert 0 (code) | 0.6000 ± 0.0200 |" in flagged and "### arc_easy (0-shot)" in flagged
    close = evals_markdown(doc(0.58, 0.60, 0.02), names)
    assert "loses by more than" not in close and "within 2 stderr (0.0566) or better" in close


def test_hub_tasks_go_to_eval_results_and_local_ones_to_the_model_index():
    d = doc(0.5, 0.6, 0.02)
    files = eval_results_files(d, "moe")
    assert list(files) == ["arc_easy.yaml"]
    (entry,) = files["arc_easy.yaml"]
    assert entry["dataset"] == {"id": "allenai/ai2_arc", "task_id": "arc_easy"} and entry["value"] == 0.5
    index = model_index(d, "moe")
    assert {(r.dataset_name, r.metric_type, r.metric_value) for r in index} == {
        ("local_mc", "acc", 0.5),
        ("local_mc", "acc_norm", 0.5),
    }
