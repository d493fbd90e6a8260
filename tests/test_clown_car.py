"""One model for two experts (a "clown-car" MoE, which mergekit-moe accepts): the build
says so in its log and builds it, each copy with its own router row."""

from __future__ import annotations

import copy

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
    proc = run_cli("build", str(recipe), "--until", "merge", build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recipe    warning: experts[2].source_model: same model as experts[0];" in proc.stdout
    (merged,) = (tmp_path / "build" / "tiny-3x" / "merge").glob("*/model")
    tensors = {}
    for shard in merged.glob("*.safetensors"):
        tensors.update(load_file(shard))
    layer = "model.layers.0.mlp"
    experts = [k for k in tensors if k.startswith(f"{layer}.experts") or k.startswith(f"{layer}.gate")]
    assert experts, sorted(tensors)[:20]
    router = next(v for k, v in tensors.items() if k.startswith(f"{layer}.gate.") and k.endswith("weight"))
    assert router.shape[0] == 3
    assert not torch.equal(router[0], router[2])  # the copies differ only by their prompts' rows
    print(sorted(k for k in tensors if k.startswith(layer)))
