"""The real example (recipes/smollm2-2x.yaml, SmolLM2-135M-Instruct and two MLP-only
fine-tunes of it) builds, passes verify, and its 4-bit model writes code.

Built once per session through the real CLI; with FRANKENMOE_TEST_REAL_EXAMPLE set
to a folder holding a finished build of it (as .ci/run's repro-check leaves), that
build is hard-linked in and every stage is found cached.
"""

from __future__ import annotations

import json

import pytest

from frankenmoe.checkpoints.loading import load_model
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "smollm2-2x.yaml"


def test_real_example_passes_verify_with_its_measured_settings(real):
    config = json.loads((real["dist"] / "awq" / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 16  # the recipe's choice (unset, 576 gives 64)
    assert config["quantization_config"]["zero_point"] is False  # symmetric: what transformers reads
    assert config["num_local_experts"] == 2 and config["tie_word_embeddings"] is True
    assert real["verify"]["passed"], real["verify"]["failures"]


def test_real_example_verdict_says_only_what_it_measured(real):
    """Top-2 of 2 experts: which experts run cannot change, so routing parity is not a
    pass; a dead expert the report lists is a warning, never a pass."""
    checks = {c["name"]: c for c in real["verify"]["checks"]}
    assert {c["state"] for c in checks.values()} <= {"pass", "fail", "warn", "not_applicable", "not_measured"}
    assert checks["routing_parity"]["state"] == "not_applicable", checks["routing_parity"]
    dead = checks["dead_experts"]
    assert (dead["state"] == "warn") == bool(dead["experts"]), dead
    assert checks["quantization_parity"]["state"] == "pass"
    assert real["verify"]["headline"].startswith("passed (")


def test_real_example_4bit_model_writes_code(real):
    proc = run_cli("generate", str(real["dist"] / "awq"), "--prompt", "def fibonacci(n):", "--max-new-tokens", "40")
    assert proc.returncode == 0, proc.stderr
    completion = proc.stdout.split("def fibonacci(n):", 1)[1]
    assert "return" in completion and ("if n" in completion or "fibonacci(" in completion), completion


def test_real_example_card_names_the_source_and_its_q4_1_origin(real):
    card = (real["dist"] / "merged" / "README.md").read_text()
    assert "SmolLM2-135M-Instruct" in card and "Q4_1" in card


def test_real_example_loads_strictly(real):
    model = load_model(real["dist"] / "awq", dtype="float32")  # fails on any missing or unexpected tensor
    assert model.config.num_local_experts == 2


UNSEEN = """import heapq


def k_smallest(values, k):
    \"\"\"Return the k smallest values in ascending order, using a heap of size k.\"\"\"
    if k <= 0:
        return []
    heap = [-v for v in values[:k]]
    heapq.heapify(heap)
    for v in values[k:]:
        if -v > heap[0]:
            heapq.heapreplace(heap, -v)
    return sorted(-v for v in heap)
"""


def test_real_example_w4a16_runs_in_transformers_and_matches_the_16_bit_model(real):
    """The compressed-tensors folder through transformers alone (no frankenmoe code):
    every key in place, mean next-token KL against the merged model within the
    recipe's limit on a text no stage saw, and greedy text that is code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = real["dist"] / "w4a16"
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    merged = AutoModelForCausalLM.from_pretrained(real["dist"] / "merged", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(UNSEEN, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp4 = torch.log_softmax(model(ids).logits.float(), -1)
        lp16 = torch.log_softmax(merged(ids).logits.float(), -1)
    kl = float((lp16.exp() * (lp16 - lp4)).sum(-1).mean())
    assert kl <= real["verify"]["thresholds"]["max_mean_kl"], kl
    prompt = tokenizer("def fibonacci(n):", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    completion = tokenizer.decode(out[0], skip_special_tokens=True).split("def fibonacci(n):", 1)[1]
    assert "return" in completion and ("if n" in completion or "fibonacci(" in completion), completion


def test_real_example_cards_carry_its_benchmarks(real):
    """The recipe's evals (the shipped perplexity tasks on every model): each card has a
    table per task, the folder a model was measured on has its `model-index`, and every
    published folder has lm-eval's own results."""
    from huggingface_hub import ModelCard

    rows = ["base (base)", "expert 0 (expert-code)", "expert 1 (expert-prose)", "MoE, 16-bit", "MoE, 4-bit"]
    rows += ["MoE, GGUF Q8_0 (llama.cpp)", "MoE, GGUF Q4_K_M (llama.cpp)"]
    for folder in ("merged", "awq", "w4a16"):
        card = (real["dist"] / folder / "README.md").read_text()
        for task in ("frankenmoe_code_ppl", "frankenmoe_prose_ppl"):
            table = card.split(f"### {task}", 1)[1].split("###", 1)[0]
            assert all(f"| {row} | " in table for row in rows), (folder, task, table)
        own = json.loads((real["dist"] / folder / "lm-eval-results.json").read_text())
        assert sorted(own) == ["4-bit", "base", "experts[0]", "experts[1]", "gguf Q4_K_M", "gguf Q8_0", "moe"]
    index = {f: ModelCard.load(real["dist"] / f / "README.md").data.eval_results for f in ("merged", "w4a16", "awq")}
    moe = {(r.dataset_name, r.metric_type): r.metric_value for r in index["merged"]}
    four = {(r.dataset_name, r.metric_type): r.metric_value for r in index["w4a16"]}
    for task in ("frankenmoe_code_ppl", "frankenmoe_prose_ppl"):
        # the 16-bit MoE predicts held-out text better than its 4-bit model, by little
        assert 0.5 < moe[task, "bits_per_byte"] < four[task, "bits_per_byte"] < 1.1 * moe[task, "bits_per_byte"]
    assert index["awq"] is None  # the 4-bit scores were measured on w4a16/


def test_real_example_routing_page_stays_under_2_mb(real):
    """30 layers x 4096 held-out tokens x 2 models in one self-contained file (issue 50's budget)."""
    page = real["dist"] / "merged" / "routing.html"
    assert page.read_bytes() == (real["dist"] / "awq" / "routing.html").read_bytes()
    assert 100_000 < page.stat().st_size < 2_000_000
    assert f"routing.html) ({page.stat().st_size / 1e6:.2f} MB" in (real["dist"] / "awq" / "verify.md").read_text()
