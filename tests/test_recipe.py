"""Recipe validation: mergekit-moe configs are recipes; every problem is named by key path."""

from __future__ import annotations

import pytest
import yaml

from frankenmoe.errors import RecipeError
from frankenmoe.recipe import load_recipe, parse_recipe
from tests.conftest import REPO, run_cli

MERGEKIT_CONFIG = """\
base_model: mistralai/Mistral-7B-v0.1
gate_mode: hidden
dtype: bfloat16
experts_per_token: 2
experts:
  - source_model: teknium/OpenHermes-2.5-Mistral-7B
    positive_prompts: ["chat", "assistant"]
    negative_prompts: ["code"]
  - source_model: openchat/openchat-3.5-1210
    positive_prompts: ["code", "python"]
    noise_scale: 0.01
"""


def valid(**over) -> dict:
    data = yaml.safe_load(MERGEKIT_CONFIG)
    data.update(over)
    return data


def problems(data: dict) -> list[str]:
    with pytest.raises(RecipeError) as e:
        parse_recipe(data, "r")
    return e.value.problems


def test_plain_mergekit_config_is_a_recipe(tmp_path):
    path = tmp_path / "my-moe.yml"
    path.write_text(MERGEKIT_CONFIG)
    r = load_recipe(path)
    assert r.name == "my-moe"
    assert r.base_model.id == "mistralai/Mistral-7B-v0.1" and r.base_model.revision is None
    assert r.experts[1].noise_scale == 0.01
    assert r.quantize.bits == 4 and r.quantize.group_size is None and not r.quantize.zero_point
    assert r.quantize.compressed_tensors  # the w4a16 folder, where transformers reads it
    assert r.publish.push is False


def test_shipped_recipes_validate():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        load_recipe(path)


def test_model_reference_forms():
    r = parse_recipe(
        valid(
            base_model={"id": "org/base", "revision": "abc123"},
            experts=[
                {"source_model": "org/a@v1", "positive_prompts": ["a"]},
                {"source_model": {"id": "org/b"}, "positive_prompts": ["b"]},
            ],
        ),
        "r",
    )
    assert (r.base_model.id, r.base_model.revision) == ("org/base", "abc123")
    assert (r.experts[0].source_model.id, r.experts[0].source_model.revision) == ("org/a", "v1")
    assert r.experts[1].source_model.revision is None


def test_misspelled_key_is_named():
    assert problems(valid(experts_per_tokn=2)) == [
        "experts_per_tokn: unknown key (check its spelling against docs/recipes.md, or `frankenmoe schema --markdown`)"
    ]


def test_nested_problems_name_their_path_all_at_once():
    data = valid()
    data["experts"][1]["positive_prompts"] = []
    data["experts"][0]["noise_scale"] = "loud"
    data["quantize"] = {"group_size": 100, "calibraton": {}}
    got = problems(data)
    assert "experts[1].positive_prompts: empty list; give one or more prompts that suit this expert" in got
    assert any(p.startswith("experts[0].noise_scale: ") for p in got)
    assert any(p.startswith("quantize.group_size: ") for p in got)
    assert any(p.startswith("quantize.calibraton: unknown key") for p in got)
    assert len(got) == 4


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"experts_per_token": 3}, "experts_per_token: 3 is more than the 2 experts listed"),
        ({"gate_mode": "learned"}, "gate_mode: 'learned' is not supported"),
        ({"architecture": "qwen"}, "architecture: 'qwen' is not supported"),
        ({"dtype": "int8"}, "dtype: 'int8' is not supported"),
        ({"name": "../escape"}, "name: '../escape' must be a plain folder name"),
        ({"name": "/abs"}, "name: '/abs' must be a plain folder name"),
    ],
)
def test_semantic_rules(change, expected):
    assert any(p.startswith(expected) for p in problems(valid(**change))), problems(valid(**change))


def test_identical_prompts_and_empty_ones_are_refused_and_duplicates_said():
    data = valid()
    data["experts"][1]["positive_prompts"] = list(data["experts"][0]["positive_prompts"])
    data["experts"][1]["negative_prompts"] = list(data["experts"][0]["negative_prompts"])
    assert any(p.startswith("experts: every expert has identical prompts") for p in problems(data))
    data = valid()
    data["experts"][0]["positive_prompts"] = ["chat", "chat", " "]
    assert problems(data) == ["experts[0].positive_prompts[2]: empty prompt"]
    data["experts"][0]["positive_prompts"] = ["chat", "chat"]
    assert parse_recipe(data, "r").warnings == [
        "experts[0].positive_prompts[1]: duplicate prompt 'chat' (it counts twice in the router row)"
    ]


# mergekit-moe accepts one model for several experts (a "clown-car" MoE, each copy with its
# own prompts); frankenmoe builds it and says so, as it refuses only what mergekit refuses.
CLOWN_CAR = (
    MERGEKIT_CONFIG
    + """  - source_model: teknium/OpenHermes-2.5-Mistral-7B
    positive_prompts: ["story", "poem"]
"""
)


def test_one_model_for_two_experts_is_a_warning_and_one_expert_a_refusal():
    data = valid()
    data["experts"] = data["experts"][:1]
    data["experts_per_token"] = 1
    assert problems(data) == ["experts: a MoE needs at least 2 experts, got 1"]
    recipe = parse_recipe(yaml.safe_load(CLOWN_CAR), "r")
    assert recipe.warnings == [
        "experts[2].source_model: same model as experts[0]; their MLPs are identical, so only their router rows "
        "tell them apart"
    ]
    data = valid()
    data["experts"][1]["source_model"] = data["experts"][0]["source_model"]
    (warning,) = parse_recipe(data, "r").warnings
    assert warning.startswith("experts: every expert is the same source model;") and "mergekit-moe refuses" in warning
    assert parse_recipe(valid(), "r").warnings == []


def test_validate_and_plan_say_the_warning(tmp_path):
    path = tmp_path / "clown-car.yaml"
    path.write_text(CLOWN_CAR)
    proc = run_cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: warning: experts[2].source_model: same model as experts[0];" in proc.stdout
    proc = run_cli("plan", str(path), build=tmp_path / "build")
    assert "  warning: experts[2].source_model: same model as experts[0];" in proc.stdout, proc.stdout + proc.stderr


def test_random_gates_need_no_prompts():
    data = valid(gate_mode="random")
    for e in data["experts"]:
        e.pop("positive_prompts"), e.pop("negative_prompts", None)
    assert parse_recipe(data, "r").gate_mode == "random"


def test_yaml_errors_report_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: a/b\nexperts:\n  - source_model: [unclosed\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    assert e.value.problems[0].startswith(f"{bad}:4:1: YAML syntax error")
    bad.write_text("base_model: a/b\nbase_model: c/d\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    assert "2:1: YAML syntax error: duplicate key 'base_model'" in e.value.problems[0]
    bad.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    assert "a recipe must be a YAML mapping" in e.value.problems[0]


def test_sizes():
    shard = lambda size: parse_recipe(valid(merge={"shard_size": size}), "r").merge.shard_size
    assert shard("5GB") == 5 * 10**9 and shard("2GiB") == 2 * 2**30 and shard("500 mb") == 5 * 10**8
    assert shard(1234) == 1234 and parse_recipe(valid(), "r").merge.shard_size == 5 * 10**9
    assert problems(valid(merge={"shard_size": "lots"})) == [
        "merge.shard_size: 'lots' is not a size; write e.g. 5GB, 500MB or 2GiB"
    ]
    assert problems(valid(merge={"shard_size": 0})) == ["merge.shard_size: Input should be greater than 0"]
    assert problems(valid(merge={"shard_size": True}))  # YAML's true is no size


def test_routers_are_fitted_on_the_recipes_own_calibration_text():
    """Without `gates.files`, the fit reads `quantize.calibration.files` (a recipe for
    other domains than the shipped code and prose names its text once)."""
    assert parse_recipe(valid(), "r").gates.files == parse_recipe(valid(), "r").quantize.calibration.files
    mine = {"calibration": {"files": ["legal.jsonl", "medical.jsonl"]}}
    assert parse_recipe(valid(quantize=mine), "r").gates.files == ["legal.jsonl", "medical.jsonl"]
    named = parse_recipe(valid(quantize=mine, gates={"files": ["other.txt"]}), "r")
    assert named.gates.files == ["other.txt"]
    dataset = {"calibration": {"dataset": {"id": "org/texts"}}}
    assert parse_recipe(valid(quantize=dataset), "r").gates.files == parse_recipe(valid(), "r").gates.files
    assert problems(valid(quantize={"calibration": "text.jsonl"}))  # a malformed section is still reported
