"""The evals stage on the toy example: lm-eval scores every model, its MoE figure is
the one the `lm_eval` CLI gives on the same folder, scores are reused from the
machine's store, and a task whose data cannot be reached stops the build in preflight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frankenmoe.support.paths import shipped_dir
from tests.conftest import EXAMPLE, example_data, run_cli, write_recipe

pytestmark = pytest.mark.slow
TASK = "toy_prose"
MODELS = ["4-bit", "base", "experts[0]", "experts[1]", "moe"]


def task_folder(root: Path) -> Path:
    """lm-eval's wikitext-style rolling-loglikelihood task over the shipped prose held-out text."""
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {shipped_dir() / 'prose' / 'eval.jsonl'}\n"
        "test_split: train\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    return tasks


def evals_recipe(root: Path, name: str = "tiny-2x", tasks: list[str] = [TASK], **top) -> Path:
    data = example_data(EXAMPLE)
    zero_point = top.pop("zero_point", None)
    data = {**data, **top, "verify": {**data["verify"], **top.get("verify", {})}}
    if zero_point is not None:
        data["quantize"] = {**data["quantize"], "zero_point": zero_point}
    data["name"] = name
    data["evals"] = {"enabled": True, "tasks": tasks, "include": str(task_folder(root)), "limit": 4}
    return write_recipe(root / f"{name}.yaml", data)


def build(recipe: Path, root: Path, store: Path, build_dir: Path, env: dict | None = None):
    return run_cli(
        "build", str(recipe), build=build_dir, dist=root / "dist", env={"FRANKENMOE_CACHE": str(store), **(env or {})}
    )


def evals_json(build_dir: Path, name: str = "tiny-2x") -> dict:
    (folder,) = [p for p in (build_dir / name / "evals").iterdir() if (p / "evals.json").is_file()]
    return json.loads((folder / "evals.json").read_text())


@pytest.fixture(scope="module")
def scored(example, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evals")
    recipe, store = evals_recipe(root), root / "store"
    # the example's stages, linked in; no evals result of an earlier run
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(root / "build")], check=True)
    shutil.rmtree(root / "build" / "tiny-2x" / "evals", ignore_errors=True)
    proc = build(recipe, root, store, root / "build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"root": root, "recipe": recipe, "store": store, "out": proc.stdout, "build": root / "build"}


def test_every_model_is_scored_with_a_progress_line_each(scored):
    doc = evals_json(scored["build"])
    assert sorted(doc["models"]) == MODELS and doc["lm_eval"] == "0.4.13"
    readers = {label: m["reader"] for label, m in doc["models"].items()}
    assert readers == {**dict.fromkeys(MODELS, "hf"), "4-bit": "transformers-dequantized"}  # from w4a16/
    for label in MODELS:
        row = doc["models"][label]["tasks"][TASK]
        assert 1 < row["byte_perplexity,none"] < 50, (label, row)
        assert f"evals     {label} · {TASK}: " in scored["out"] and "s left)" in scored["out"]
    # the experts were trained on other text than each other: their scores differ
    rows = [doc["models"][m]["tasks"][TASK]["bits_per_byte,none"] for m in MODELS]
    assert len(set(rows)) == len(rows)


def lm_eval_cli(folder: Path, tasks: Path, out: Path) -> dict:
    """lm-eval's own command line with its `hf` model on `folder`: the task's results."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf"]
    cmd += ["--model_args", f"pretrained={folder},dtype=float32", "--device", "cpu", "--batch_size", "4"]
    cmd += ["--tasks", TASK, "--include_path", str(tasks), "--limit", "4", "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf")}
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = list(out.rglob("results_*.json"))
    return json.loads(results.read_text())["results"][TASK]


def test_the_moe_figure_is_what_the_lm_eval_cli_gives_on_the_merged_folder(scored, example, tmp_path):
    cli = lm_eval_cli(example["merged"], scored["root"] / "tasks", tmp_path / "out")
    ours = evals_json(scored["build"])["models"]["moe"]["tasks"][TASK]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours[metric] == pytest.approx(cli[metric], rel=1e-6), metric


def test_the_4_bit_figure_is_what_the_lm_eval_cli_gives_on_the_w4a16_folder(scored, example, tmp_path):
    """The stage loads w4a16/ dequantized and in float32 (faster on CPU); lm-eval's `hf`
    on the folder decompresses at the first forward: the same scores."""
    cli = lm_eval_cli(example["root"] / "dist" / "tiny-2x" / "w4a16", scored["root"] / "tasks", tmp_path / "out")
    ours = evals_json(scored["build"])["models"]["4-bit"]["tasks"][TASK]
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours[metric] == pytest.approx(cli[metric], rel=1e-4), metric


def test_scores_come_from_the_store_for_the_same_models_and_a_recipe_sharing_the_experts(scored, tmp_path):
    again = build(scored["recipe"], scored["root"], scored["store"], tmp_path / "build")
    assert again.returncode == 0, again.stderr
    assert "evals     5 model x task scores: 5 from the store, 0 to run" in again.stdout
    assert evals_json(tmp_path / "build") == evals_json(scored["build"])
    # random routers and asymmetric experts: another MoE of the same experts, whose 4-bit
    # model transformers cannot read (no w4a16 folder), so frankenmoe's AWQ reader runs it in HFLM
    other = evals_recipe(
        tmp_path, name="tiny-random", gate_mode="random", verify={"fail_on_mismatch": False}, zero_point=True
    )
    proc = build(other, tmp_path, scored["store"], scored["build"])
    assert proc.returncode == 0, proc.stderr
    assert "evals     5 model x task scores: 3 from the store, 2 to run" in proc.stdout  # base and both experts
    doc = evals_json(scored["build"], "tiny-random")
    first = evals_json(scored["build"])
    for label in ("base", "experts[0]", "experts[1]"):
        assert doc["models"][label] == first["models"][label]
    assert doc["models"]["moe"] != first["models"]["moe"]
    assert doc["models"]["4-bit"]["reader"] == "frankenmoe-awq" and doc["models"]["moe"]["reader"] == "hf"


def test_a_task_whose_data_cannot_be_reached_stops_the_build_before_any_model_loads(tmp_path):
    recipe = evals_recipe(tmp_path, tasks=[TASK, "hellaswag"])
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    proc = build(recipe, tmp_path, tmp_path / "store", tmp_path / "build", env)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: evals.tasks: hellaswag: the data of hellaswag"), lines
    assert "Rowan/hellaswag" in lines[0] and "HF_ENDPOINT" in lines[0]
    assert not (tmp_path / "build" / "tiny-2x" / "resolve").exists() and time.monotonic() - start < 120


def test_a_hub_task_runs_with_its_data_from_the_hub_standin(example, hub, tmp_path, monkeypatch):
    """The path a user with the Hub takes: lm-eval's own `hellaswag` task, its
    `dataset_path: Rowan/hellaswag` read by `datasets` from HF_ENDPOINT over HTTP
    (a repo of HellaSwag's shape on the stand-in), and the Hub metadata names that dataset."""
    from huggingface_hub import constants

    from tests.conftest import HUB_TOKEN
    from tests.hub_datasets import upload_hellaswag

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the stand-in has no Xet storage
    upload_hellaswag(hub, HUB_TOKEN, tmp_path)
    data = example_data(EXAMPLE)
    data["evals"] = {"enabled": True, "tasks": ["hellaswag"], "limit": 4, "models": ["moe"]}
    recipe = write_recipe(tmp_path / "tiny-2x.yaml", data)
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(tmp_path / "build")], check=True)
    shutil.rmtree(tmp_path / "build" / "tiny-2x" / "evals", ignore_errors=True)
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1"}
    env.update({"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"})
    proc = build(recipe, tmp_path, tmp_path / "store", tmp_path / "build", env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = evals_json(tmp_path / "build")
    row = doc["models"]["moe"]["tasks"]["hellaswag"]
    assert 0 <= row["acc,none"] <= 1 and row["acc_stderr,none"] > 0, row
    assert doc["tasks"]["hellaswag"]["dataset"] == "Rowan/hellaswag"
    fetched = [p for m, p in hub.requests if m == "GET" and p.startswith("/datasets/Rowan/hellaswag/resolve/")]
    assert {p.rsplit("/", 1)[1] for p in fetched} == {  # over HTTP: both splits (train: the few-shot pool)
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    }, hub.requests
    (entry,) = yaml_load(tmp_path / "dist" / "tiny-2x" / "merged" / ".eval_results" / "hellaswag.yaml")
    assert entry["dataset"]["id"] == "Rowan/hellaswag" and entry["value"] == pytest.approx(row["acc,none"], abs=1e-6)


def yaml_load(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_gguf_scores_without_gguf_files_are_refused_before_anything_runs(tmp_path):
    data = example_data(EXAMPLE)  # the toy makes no GGUF files
    data["evals"] = {"enabled": True, "tasks": [TASK], "include": str(task_folder(tmp_path)), "models": ["gguf"]}
    proc = run_cli("plan", str(write_recipe(tmp_path / "tiny-2x.yaml", data)), build=tmp_path / "build")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: evals.models: gguf, but gguf.enabled is false; make GGUF files or drop gguf"
    ]


def test_an_unknown_task_is_named_in_one_line(tmp_path):
    recipe = evals_recipe(tmp_path, tasks=["no_such_task_anywhere"])
    proc = build(recipe, tmp_path, tmp_path / "store", tmp_path / "build")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "evals.tasks: no lm-eval task, group or tag named 'no_such_task_anywhere'" in proc.stderr


def test_the_shipped_tasks_run_from_their_own_folder(example, tmp_path):
    """The example's tasks (calibration/make_eval_tasks.py) name their data files
    relative to the task folder, installed as shipped:tasks."""
    data = example_data(EXAMPLE)
    tasks = ["frankenmoe_code_ppl", "frankenmoe_code_mc", "frankenmoe_prose_mc"]
    data["evals"] = {"enabled": True, "tasks": tasks, "include": "shipped:tasks", "limit": 2, "models": ["moe"]}
    recipe = write_recipe(tmp_path / "tiny-2x.yaml", data)
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(tmp_path / "build")], check=True)
    shutil.rmtree(tmp_path / "build" / "tiny-2x" / "evals", ignore_errors=True)
    proc = build(recipe, tmp_path, tmp_path / "store", tmp_path / "build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = evals_json(tmp_path / "build")["models"]["moe"]["tasks"]
    assert 1 < rows["frankenmoe_code_ppl"]["byte_perplexity,none"] < 50
    for task in ("frankenmoe_code_mc", "frankenmoe_prose_mc"):
        assert {"acc,none", "acc_norm,none", "acc_stderr,none"} <= set(rows[task]), rows[task]


def test_the_cards_carry_the_table_the_metadata_and_lm_evals_results(scored):
    from huggingface_hub import ModelCard

    doc = evals_json(scored["build"])
    dist = scored["root"] / "dist" / "tiny-2x"
    for folder in ("merged", "awq", "w4a16"):
        card = (dist / folder / "README.md").read_text()
        assert "## Evaluation results" in card and f"### {TASK}" in card
        for name in ("base (base)", "expert 0 (expert-code)", "expert 1 (expert-prose)", "MoE, 16-bit", "MoE, 4-bit"):
            assert f"| {name} | " in card, (folder, name)
        assert "MoE vs best expert (expert 1 (expert-prose)): bits_per_byte" in card  # the lower bits per byte
        own = json.loads((dist / folder / "lm-eval-results.json").read_text())
        assert (
            sorted(own) == MODELS
            and own["moe"][TASK]["results"][TASK]["bits_per_byte,none"]
            == (doc["models"]["moe"]["tasks"][TASK]["bits_per_byte,none"])
        )
    index = {f: ModelCard.load(dist / f / "README.md").data.eval_results for f in ("merged", "awq", "w4a16")}
    moe = {r.metric_type: r.metric_value for r in index["merged"]}
    four = {r.metric_type: r.metric_value for r in index["w4a16"]}
    assert moe["bits_per_byte"] == pytest.approx(doc["models"]["moe"]["tasks"][TASK]["bits_per_byte,none"], abs=1e-6)
    assert four["bits_per_byte"] == pytest.approx(doc["models"]["4-bit"]["tasks"][TASK]["bits_per_byte,none"], 1e-6)
    assert index["awq"] is None  # the 4-bit scores were measured on w4a16/, not on this folder


def test_the_real_examples_gguf_files_are_scored_by_llama_cpp_near_the_16_bit_model(real, tmp_path):
    """lm-eval over llama.cpp (frankenmoe/measure/gguf_lm.py) on the same token ids as the
    hf model: Q8_0 lands within 1% of the 16-bit MoE's bits per byte, Q4_K_M within 5%."""
    from tests.conftest import REAL_RECIPE

    data = example_data(REAL_RECIPE)
    tasks = ["frankenmoe_code_ppl", "frankenmoe_prose_mc"]
    data["evals"] = {"enabled": True, "tasks": tasks, "include": "shipped:tasks", "limit": 4, "models": ["moe", "gguf"]}
    recipe = write_recipe(tmp_path / "smollm2-2x.yaml", data)
    subprocess.run(["cp", "-al", str(real["root"] / "build"), str(tmp_path / "build")], check=True)
    shutil.rmtree(tmp_path / "build" / "smollm2-2x" / "evals", ignore_errors=True)
    proc = build(recipe, tmp_path, tmp_path / "store", tmp_path / "build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    models = evals_json(tmp_path / "build", "smollm2-2x")["models"]
    assert sorted(models) == ["gguf Q4_K_M", "gguf Q8_0", "moe"]
    assert {models[m]["reader"] for m in models if m.startswith("gguf")} == {"frankenmoe-gguf"}
    bpb = {m: models[m]["tasks"]["frankenmoe_code_ppl"]["bits_per_byte,none"] for m in models}
    assert abs(bpb["gguf Q8_0"] / bpb["moe"] - 1) < 0.01, bpb
    assert abs(bpb["gguf Q4_K_M"] / bpb["moe"] - 1) < 0.05, bpb
    assert 0 <= models["gguf Q8_0"]["tasks"]["frankenmoe_prose_mc"]["acc,none"] <= 1
    card = (tmp_path / "dist" / "smollm2-2x" / "merged" / "README.md").read_text()
    assert "| MoE, GGUF Q8_0 (llama.cpp) | " in card


def test_when_lm_eval_fails_the_log_the_message_names_is_kept(example, tmp_path):
    tasks = task_folder(tmp_path)
    (tasks / "broken.jsonl").write_text("this line is not JSON\n")  # found by preflight, unreadable by datasets
    (tasks / "broken_task.yaml").write_text(
        "task: broken_task\ndataset_path: json\ndataset_kwargs:\n  data_files: broken.jsonl\ntest_split: train\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n"
    )
    data = example_data(EXAMPLE)
    data["evals"] = {"enabled": True, "tasks": ["broken_task"], "include": str(tasks), "limit": 2, "models": ["moe"]}
    recipe = write_recipe(tmp_path / "tiny-2x.yaml", data)
    subprocess.run(["cp", "-al", str(example["root"] / "build"), str(tmp_path / "build")], check=True)
    shutil.rmtree(tmp_path / "build" / "tiny-2x" / "evals", ignore_errors=True)
    proc = build(recipe, tmp_path, tmp_path / "store", tmp_path / "build")
    assert proc.returncode == 11, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: evals: lm-eval failed")]
    log = Path(line.rsplit("full log: ", 1)[1])
    assert log.is_file() and ".failed-" in str(log) and "Traceback" in log.read_text(), line
