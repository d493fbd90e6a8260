"""One rule for every path key: shipped corpora by name, relative paths from the
recipe's folder, absolute ones as written; and the group size the configs decide."""

from __future__ import annotations

import shutil

import pytest

from bench.synthetic import SHAPES
from frankenmoe.errors import RecipeError
from frankenmoe.quantization.awq_layout import choose_group_size
from frankenmoe.recipe import load_recipe
from frankenmoe.support.paths import portable, resolve_path, shipped_dir
from tests.conftest import REPO, run_cli

# Whole configs (the group size reads a model's shape, which needs every key).
SMOLLM2 = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "head_dim": 64,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
MISTRAL_7B = {**SHAPES["7b"], "tie_word_embeddings": False}


def test_defaults_are_the_shipped_corpora_wherever_the_recipe_is(tmp_path):
    (tmp_path / "moe.yaml").write_text(
        "base_model: base\nexperts:\n"
        "  - {source_model: a, positive_prompts: [x]}\n"
        "  - {source_model: b, positive_prompts: [y]}\n"
    )
    r = load_recipe(tmp_path / "moe.yaml")
    assert r.verify.files == ["shipped:code/eval.jsonl", "shipped:prose/eval.jsonl"]
    for name in r.verify.files + r.quantize.calibration.files + r.gates.files:
        assert r.path(name).is_file() and shipped_dir() in r.path(name).parents
    assert r.base_model.local_path(r.root) == tmp_path / "base"


def test_relative_paths_follow_the_recipe_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert resolve_path("text/a.jsonl", tmp_path / "recipes") == tmp_path / "recipes" / "text" / "a.jsonl"
    assert resolve_path("/abs/a.jsonl", tmp_path) == resolve_path("/abs/a.jsonl", REPO)
    assert portable("/home/someone/data/a.jsonl") == "a.jsonl"
    assert portable("shipped:code/eval.jsonl") == "shipped:code/eval.jsonl"


@pytest.mark.parametrize(
    "config, wanted, chosen",
    [
        (SMOLLM2, None, 16),  # under 0.5B parameters: the small-model group
        (MISTRAL_7B, None, 128),
        (SMOLLM2, 32, 32),
        (MISTRAL_7B, 64, 64),
    ],
)
def test_group_size_is_16_for_a_small_model_else_the_largest_that_divides(config, wanted, chosen):
    assert choose_group_size(config, wanted) == chosen


def test_a_group_size_that_does_not_divide_is_refused_with_the_one_that_does():
    with pytest.raises(RecipeError) as e:
        choose_group_size(SMOLLM2, 128)
    assert e.value.problems == [
        "quantize.group_size: 128 does not divide the model's hidden_size (576); "
        "use 64, or leave quantize.group_size unset to choose it"
    ]


def test_bad_group_size_stops_the_build_before_any_stage_runs(tmp_path, fixture_models):
    """The base's config decides it: the build refuses at once, nothing is written."""
    models = tmp_path / "models"
    shutil.copytree(fixture_models, models)
    for name in ("base", "expert-code", "expert-prose"):  # 800: only 32 of 128, 64, 32 divides it
        cfg = models / name / "config.json"
        cfg.write_text(cfg.read_text().replace('"intermediate_size": 768', '"intermediate_size": 800'))
    recipe = tmp_path / "elsewhere" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text((REPO / "recipes" / "tiny-2x.yaml").read_text().replace("../fixtures/tiny/", "../models/"))
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: quantize.group_size: 128 does not divide the model's intermediate_size (800); use 32, "
        "or leave quantize.group_size unset to choose it"
    ]
    assert not (tmp_path / "build" / "r" / "merge").exists()
