"""End to end: the example recipe builds a correct MoE, caches, and survives kill -9.

The example experts differ from the base only in their MLPs, so the merge is
checkable exactly: tensors equal their sources bit for bit, and with the router
forced to expert k the MoE reproduces source model k.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from frankenmoe.checkpoints.loading import load_merged
from frankenmoe.checkpoints.moe_blocks import forced_expert
from frankenmoe.text.corpus import read_documents
from tests.conftest import EXAMPLE, REPO, example_data, run_cli

pytestmark = pytest.mark.slow


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_merged_folder_is_complete_mixtral(example):
    merged = example["merged"]
    names = {p.name for p in merged.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
    } <= names
    model = load_merged(merged)  # raises on any missing or unexpected tensor
    assert type(model).__name__ == "MixtralForCausalLM"
    assert model.config.num_local_experts == 2 and model.config.num_experts_per_tok == 2


def test_tensor_names_are_classic_mixtral(example):
    names = set(tensors(example["merged"]))
    assert "model.layers.0.block_sparse_moe.experts.1.w2.weight" in names
    assert "model.layers.3.block_sparse_moe.gate.weight" in names
    assert not any(".mlp." in n for n in names)


def test_every_tensor_equals_its_source_bit_for_bit(example, fixture_models):
    moe = tensors(example["merged"])
    base = tensors(fixture_models / "base")
    experts = [tensors(fixture_models / "expert-code"), tensors(fixture_models / "expert-prose")]
    proj = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
    checked = 0
    for name, t in moe.items():
        parts = name.split(".")
        if ".block_sparse_moe.experts." in name:
            layer, e, w = parts[2], int(parts[5]), parts[6]
            src = experts[e][f"model.layers.{layer}.mlp.{proj[w]}.weight"]
        elif ".block_sparse_moe.gate." in name:
            continue  # router rows come from the prompts
        else:
            src = base[name]
        assert t.dtype == src.dtype and torch.equal(t, src), name
        checked += 1
    assert checked == len(moe) - 4


def eval_ids(tokenizer_dir: Path, domain: str, n: int = 256) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = read_documents([REPO / "calibration" / domain / "eval.jsonl"])[0]["text"]
    return torch.tensor([tok(text)["input_ids"][:n]])


@pytest.mark.parametrize("k, source", [(0, "expert-code"), (1, "expert-prose")])
def test_forced_routing_reproduces_each_expert(example, fixture_models, k, source):
    moe = load_merged(example["merged"])
    ref = load_merged(fixture_models / source)
    for domain in ("code", "prose"):
        ids = eval_ids(example["merged"], domain)
        with torch.no_grad():
            with forced_expert(moe, k):
                forced = moe(ids).logits
            free = moe(ids).logits
            want = ref(ids).logits
        assert (forced - want).abs().max().item() < 1e-3, domain
        # The check can fail: the freely routed MoE is not expert k.
        assert (free - want).abs().max().item() > 1e-2


def test_rebuild_runs_nothing_but_push(example):
    """Every stage is cached. (Speed is measured by `make bench`, not here.)"""
    proc = run_cli("build", str(EXAMPLE), build=example["root"] / "build", dist=example["root"] / "dist")
    assert proc.returncode == 0, proc.stderr
    states = {l.split()[0]: l.split()[1] for l in proc.stdout.splitlines() if l.split()[1:2] in (["ran"], ["cached"])}
    from frankenmoe.engine.graph import enabled_stages
    from frankenmoe.recipe import load_recipe
    from frankenmoe.stages import STAGES

    assert set(states) == {s.name for s in enabled_stages(STAGES, load_recipe(EXAMPLE))}, proc.stdout
    assert set(states.values()) == {"cached"}, proc.stdout


def test_later_section_change_reuses_merge(example, tmp_path, fixture_models):
    data = example_data()
    data["name"] = "tiny-2x"
    data["verify"]["max_tokens"] = 2048  # evaluation settings: only evaluate and what follows rerun
    # Absolute paths this time: keys depend on model content, not on where it lies.
    data["base_model"] = str(fixture_models / "base")
    data["experts"][0]["source_model"] = str(fixture_models / "expert-code")
    data["experts"][1]["source_model"] = str(fixture_models / "expert-prose")
    recipe = tmp_path / "edited.yaml"
    recipe.write_text(yaml.safe_dump(data))
    # Same build cache, its own dist: the other tests read the example's dist.
    proc = run_cli("build", str(recipe), build=example["root"] / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    assert "merge     cached" in proc.stdout and "quantize  cached" in proc.stdout and "evaluate  ran" in proc.stdout


def test_plan_reports_cached_stages(example):
    proc = run_cli("plan", str(EXAMPLE), build=example["root"] / "build", dist=example["root"] / "dist")
    assert proc.returncode == 0, proc.stderr
    assert "resolve   cached" in proc.stdout and "merge     cached" in proc.stdout


def test_misspelled_key_exits_2_naming_it(tmp_path):
    data = example_data()
    data["experts"][1]["positve_prompts"] = data["experts"][1].pop("positive_prompts")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 2
    assert "error: experts[1].positve_prompts: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "build").exists() and not (tmp_path / "dist").exists()
