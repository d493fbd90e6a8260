"""One model for two experts (a "clown-car" MoE, which mergekit-moe accepts): the build
says so in its log and builds it, each copy with its own router row and the source's MLP."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import example_data, run_cli, write_recipe

pytestmark = pytest.mark.slow


def test_the_toy_with_its_code_expert_twice_builds_with_a_warning(fixture_models, tmp_path):
    import torch
    from safetensors.torch import load_file

    data = example_data()
    again = copy.deepcopy(data["experts"][0])
    again["positive_prompts"] = ["class Config:\n    def load(self, path):", "return [x for x in values if x]"]
    again.pop("negative_prompts", None)
    data["experts"].append(again)
    recipe = write_recipe(tmp_path / "tiny-3x.yaml", data)
    proc = run_cli("build", str(recipe), "--until", "evaluate", build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recipe    warning: experts[2].source_model: same model as experts[0];" in proc.stdout
    (merged,) = (tmp_path / "build" / "tiny-3x" / "merge").glob("*/model")
    tensors = {}
    for shard in merged.glob("*.safetensors"):
        tensors.update(load_file(shard))
    layer = "model.layers.0.block_sparse_moe"
    router = tensors[f"{layer}.gate.weight"]
    assert router.shape[0] == 3
    for w in ("w1", "w2", "w3"):  # the copies' MLPs are the same model's
        assert torch.equal(tensors[f"{layer}.experts.0.{w}.weight"], tensors[f"{layer}.experts.2.{w}.weight"])
    assert not torch.equal(tensors[f"{layer}.experts.0.w1.weight"], tensors[f"{layer}.experts.1.w1.weight"])
    assert not torch.equal(router[0], router[2])  # told apart by their prompts' router rows
    # verify's 16-bit side: each expert, the copy too, forced alone gives its source's output
    (reference,) = (tmp_path / "build" / "tiny-3x" / "evaluate").glob("*/reference.json")
    forced = json.loads(reference.read_text())["forced_routing"]
    assert [f["expert"] for f in forced] == [0, 1, 2] and all(f["max_abs"] == 0.0 for f in forced), forced
