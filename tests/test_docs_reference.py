"""The recipe reference (docs/recipes.md) and JSON Schema (docs/recipe.schema.json)
are generated from the pydantic models: the committed copies must be what
`frankenmoe schema` prints, and the schema must take what validation takes."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from frankenmoe.errors import RecipeError
from frankenmoe.recipe import load_raw, parse_recipe
from frankenmoe.recipe_schema import REFERENCE_COMMAND, REFERENCE_FILE, SCHEMA_COMMAND, SCHEMA_FILE
from tests.conftest import REPO, run_cli

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
HEADER = "# yaml-language-server: $schema=../docs/recipe.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    proc = run_cli("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("args", "committed", "command"),
    [((), SCHEMA_FILE, SCHEMA_COMMAND), (("--markdown",), REFERENCE_FILE, REFERENCE_COMMAND)],
)
def test_committed_copy_is_what_the_models_give(args, committed, command):
    proc = run_cli("schema", *args)
    assert proc.returncode == 0, proc.stderr
    assert (REPO / committed).read_text(encoding="utf-8") == proc.stdout, f"{committed} is stale; run `{command}`"


def test_reference_lists_every_key_of_every_section(validator):
    """Each section's table has a row for each key the schema knows."""
    text = (REPO / REFERENCE_FILE).read_text(encoding="utf-8")
    defs = validator.schema["$defs"]
    for obj in [validator.schema, *(d for d in defs.values() if "properties" in d)]:
        for key, prop in obj["properties"].items():
            assert f"| `{key}` |" in text, key
            assert prop.get("description"), f"{obj.get('title')}.{key} has no description"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_names_the_schema_and_validates_against_it(recipe, validator):
    assert recipe.read_text(encoding="utf-8").splitlines()[0] == HEADER
    assert (recipe.parent / HEADER.partition("$schema=")[2]).resolve() == (REPO / SCHEMA_FILE).resolve()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load_raw(recipe))]
    assert not errors, errors


def test_recipes_holds_only_recipes_and_their_locks():
    """So the validation above covers every file in recipes/ that a user could build
    (sweep files, in recipes/sweeps/, are checked by tests/test_sweep.py)."""
    others = [p.name for p in (REPO / "recipes").iterdir() if p not in RECIPES and p.name != "sweeps"]
    assert all(
        n.endswith(".lock.json") and (REPO / "recipes" / n.replace(".lock.json", ".yaml")).is_file() for n in others
    ), others


def test_an_unknown_key_is_refused_by_the_schema_and_by_validate(tmp_path, validator):
    for where in ("top", "merge"):
        raw = load_raw(REPO / "recipes" / "tiny-2x.yaml")
        (raw if where == "top" else raw["merge"])["shard_sizes"] = "2MB"
        errors = list(validator.iter_errors(raw))
        assert [e.validator for e in errors] == ["additionalProperties"], where
        assert "shard_sizes" in errors[0].message
        path = tmp_path / f"{where}.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        proc = run_cli("validate", str(path))
        assert proc.returncode == 2 and "shard_sizes: unknown key" in proc.stderr, proc.stderr


TWO_EXPERTS = [
    {"source_model": "org/a", "positive_prompts": ["a"]},
    {"source_model": "org/b", "positive_prompts": ["b"]},
]


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({}, True),
        ({"base_model": "org/base@v1.0"}, True),
        ({"base_model": {"path": "./base", "revision": "main"}}, True),
        ({"base_model": {"id": "org/base", "path": "./base"}}, False),
        ({"base_model": "@v1"}, False),
        ({"base_model": {"id": "  "}}, False),
        ({"name": "my.moe-2x"}, True),
        ({"name": "../x"}, False),
        ({"gate_mode": "hidden_avg"}, True),
        ({"gate_mode": "hiden"}, False),
        ({"dtype": "float64"}, False),
        ({"architecture": "Mixtral"}, True),
        ({"architecture": "qwen"}, False),
        ({"shared_experts": []}, True),
        ({"shared_experts": TWO_EXPERTS[:1]}, False),
        ({"experts": TWO_EXPERTS[:1]}, False),
        ({"experts_per_token": 0}, False),
        ({"experts_per_token": True}, False),
        ({"merge": {"shard_size": "2GiB"}}, True),
        ({"merge": {"shard_size": "500 mb"}}, True),
        ({"merge": {"shard_size": "5 parsecs"}}, False),
        ({"merge": {"shard_size": 0}}, False),
        ({"quantize": {"group_size": 48}}, False),
        ({"quantize": {"group_size": 64, "calibration": {"samples": "8"}}}, False),
        ({"gguf": {"types": ["Q6_K", "Q4_K_M"], "max_mean_kl": {"Q6_K": 0.05}}}, True),
        ({"gguf": {"types": ["Q3_K"]}}, False),
        ({"gguf": {"types": ["Q8_0", "Q8_0"]}}, False),
        ({"verify": {"min_top1_agreement": 1.5}}, False),
        ({"publish": {"awq": {"repo_id": "org/name-AWQ"}}}, True),
        ({"publish": {"awq": {"repo_id": "no-slash"}}}, False),
    ],
)
def test_the_schema_takes_what_validation_takes(change, accepted, validator):
    raw = {"base_model": "org/base", "experts": TWO_EXPERTS, **change}
    try:
        parse_recipe(raw, "r")
        validates = True
    except RecipeError:
        validates = False
    assert validates is accepted
    assert validator.is_valid(raw) is accepted, [e.message for e in validator.iter_errors(raw)]
