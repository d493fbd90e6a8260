"""The w4a16 folder (compressed-tensors): made by the library's converter, loaded by
transformers itself with no missing or unexpected key, measured against the 16-bit
model, run by its card's snippet over the Hub stand-in and by lm-eval's own `hf`
model; asymmetric experts still refused by the pinned transformers (pinned here, so
an upgrade that reads them is seen)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frankenmoe.quantization import readers
from tests.conftest import EXAMPLE, HUB_TOKEN, REPO, example_data, run_cli, write_recipe
from tests.test_card_snippets import (
    MIN_SHARE,
    code_blocks,
    prompt_length,
    run_transformers_snippet,
    share_of_ids_in_16_bit_top_k,
)

pytestmark = pytest.mark.slow
REPOS = {"merged": "me/tiny-2x", "awq": "me/tiny-2x-AWQ", "w4a16": "me/tiny-2x-W4A16"}


def example_recipe(folder: Path, quantize: dict | None = None, **verify) -> Path:
    """The toy recipe written into `folder`, with quantize and verify settings changed."""
    data = example_data(EXAMPLE)
    data["quantize"] = {**data.get("quantize", {}), **(quantize or {})}
    data["verify"] = {**data.get("verify", {}), **verify}
    return write_recipe(folder / "tiny-2x.yaml", data)


@pytest.fixture(scope="module")
def sym(example, tmp_path_factory) -> dict:
    """The toy example as built by default: symmetric experts, with the w4a16 folder."""
    dist = example["root"] / "dist" / "tiny-2x"
    return {"root": tmp_path_factory.mktemp("sym"), "dist": dist, "w4a16": dist / "w4a16"}


@pytest.fixture(scope="module")
def asym(example, tmp_path_factory) -> dict:
    """The toy recipe with asymmetric experts (zero points), asking for the folder."""
    root = tmp_path_factory.mktemp("asym")
    recipe = example_recipe(root, {"zero_point": True, "compressed_tensors": True})
    proc = run_cli("build", str(recipe), build=example["root"] / "build", dist=root / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"dist": root / "dist" / "tiny-2x"}


FROM_PRETRAINED = """
import json, sys, torch, transformers
transformers.logging.set_verbosity_error()
model, info = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True)
ids = torch.tensor([[1, 5, 9, 17, 33, 60, 61, 2]])
with torch.no_grad():
    lp = torch.log_softmax(model(ids).logits.float(), -1)
print(json.dumps({"info": {k: sorted(map(str, v)) for k, v in info.items()}, "logprobs": lp[0].tolist()}))
"""


def test_transformers_loads_the_folder_with_no_key_problem_and_it_matches_the_16_bit_model(sym):
    proc = subprocess.run(
        [sys.executable, "-c", FROM_PRETRAINED, str(sym["w4a16"])], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert facts["info"][k] == [], (k, facts["info"][k])
    config = json.loads((sym["w4a16"] / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["config_groups"]["config_group_0"]["weights"]["symmetric"] is True
    assert any(p.name.endswith(".safetensors") for p in sym["w4a16"].iterdir())
    report = json.loads((sym["w4a16"] / "verify.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["consumer_load"]["state"] == "pass"
    assert (
        f"with {readers.transformers_name()} AutoModelForCausalLM.from_pretrained" in checks["consumer_load"]["summary"]
    )
    assert checks["quantization_parity"]["state"] == "pass" and report["verdict"] == "passed"
    # the same weights as the AWQ folder, read by another reader: the same parity
    awq = {c["name"]: c for c in json.loads((sym["dist"] / "awq" / "verify.json").read_text())["checks"]}
    assert abs(awq["quantization_parity"]["kl_mean"] - checks["quantization_parity"]["kl_mean"]) < 1e-3
    assert "transformers 5.24.0" in (sym["w4a16"] / "verify.md").read_text()
    assert (sym["w4a16"] / "build.json").is_file() and (sym["w4a16"] / "README.md").is_file()


def test_the_cards_snippet_runs_from_the_hub_and_the_awq_card_points_to_it(sym, hub, example):
    data = example_data(EXAMPLE)
    (sym["root"] / "pushed").mkdir()
    data["publish"] = {"push": True, "private": False, **{f: {"repo_id": r} for f, r in REPOS.items()}}
    recipe = write_recipe(sym["root"] / "pushed" / "tiny-2x.yaml", data)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(sym["root"] / "hf")}
    dist = sym["root"] / "pushed" / "dist"
    proc = run_cli("build", str(recipe), build=example["root"] / "build", dist=dist, env={**env, "HF_TOKEN": HUB_TOKEN})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = dist / "tiny-2x" / "w4a16" / "README.md"
    (snippet,) = code_blocks(card, "python")
    assert f'from_pretrained("{REPOS["w4a16"]}"' in snippet
    prompt = re.search(r'tokenizer\("([^"]+)"', snippet).group(1)
    text, ids = run_transformers_snippet(snippet, sym["root"], env)
    assert prompt in text, text
    start = prompt_length(sym["dist"] / "merged", prompt)
    assert share_of_ids_in_16_bit_top_k(sym["dist"] / "merged", ids, start) >= MIN_SHARE, text
    awq_card = (dist / "tiny-2x" / "awq" / "README.md").read_text()
    assert f"use the compressed-tensors copy of this model, [{REPOS['w4a16']}]" in awq_card


def test_lm_eval_runs_the_folder_with_its_own_hf_model(sym, tmp_path):
    """`lm_eval --model hf --model_args pretrained=<folder>` on a local task over the toy's held-out text."""
    from frankenmoe.support.paths import shipped_dir

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy_prose.yaml").write_text(
        "task: toy_prose\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {shipped_dir() / 'prose' / 'eval.jsonl'}\n"
        "test_split: train\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={sym['w4a16']}"]
    cmd += ["--tasks", "toy_prose", "--include_path", str(tasks), "--limit", "2", "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results,) = list(out.rglob("results_*.json"))
    metrics = json.loads(results.read_text())["results"]["toy_prose"]
    assert 1 < metrics["word_perplexity,none"] < 1e6, metrics


def test_asymmetric_experts_are_still_refused_by_the_pinned_transformers(asym, tmp_path):
    """What keeps the asymmetric folder unpublished: when a transformers release
    reads it, this fails, and readers.READS_ASYMMETRIC can turn the folder on."""
    from frankenmoe.stages.compressed import convert

    assert readers.READS_ASYMMETRIC is False and readers.transformers_name() == "transformers 5.24.0"
    convert(asym["dist"] / "awq", tmp_path / "asym")
    script = "import sys, transformers; transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "asym")], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert proc.returncode != 0 and "Asymmetric quant requires zero-point values" in proc.stderr, proc.stderr[-2000:]


def test_an_asymmetric_recipe_asking_for_the_folder_builds_without_it(asym):
    config = json.loads((asym["dist"] / "awq" / "config.json").read_text())["quantization_config"]
    assert config["zero_point"] is True
    assert not (asym["dist"] / "w4a16").exists()
    card = (asym["dist"] / "awq" / "README.md").read_text()
    assert "compressed-tensors copy" not in card


def test_push_refuses_the_folder_when_its_checks_failed(sym, hub, example, tmp_path):
    recipe = example_recipe(tmp_path, max_mean_kl=0.0001, fail_on_mismatch=False)
    data = yaml.safe_load(recipe.read_text())
    data["publish"] = {"push": True, "w4a16": {"repo_id": REPOS["w4a16"]}}
    write_recipe(recipe, data)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": HUB_TOKEN}
    proc = run_cli("build", str(recipe), build=example["root"] / "build", dist=tmp_path / "dist", env=env)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert f"push: {tmp_path / 'dist' / 'tiny-2x' / 'w4a16'} failed quantization_parity" in proc.stderr
    assert hub.commits(REPOS["w4a16"]) == []
