"""card: Hub-parsable metadata, the verify table and heatmap, provenance; templates."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import ModelCard

from frankenmoe.errors import RecipeError
from frankenmoe.recipe import parse_recipe
from frankenmoe.stages.resolve import resolve_license
from tests.conftest import example_data, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("folder, extra_tags", [("merged", []), ("awq", ["awq", "4-bit"])])
def test_cards_parse_and_carry_metadata(example, folder, extra_tags):
    root = example[folder]
    card = ModelCard.load(root / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "psf-2.0"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["moe", "frankenmoe", "mergekit", "mixtral"] + extra_tags
    text = card.text
    assert "## Verification: passed" in text and "| quantization parity | pass |" in text
    assert "![routing heatmap](routing.png)" in text and (root / "routing.png").is_file()
    assert "## Recipe" in text and "gate_mode: hidden" in text
    assert "build id `" in text
    for shard in sorted(root.glob("*.safetensors")):
        assert shard.name in text  # provenance lists every weight file with its sha256
    if folder == "awq":
        assert "vllm serve" in text and "group size 128" in text
    else:
        assert "AutoModelForCausalLM" in text


@pytest.mark.slow
def test_custom_template_reruns_only_what_names_the_build(example, tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n\n# {{ title }} by me\n\n{{ verify_md }}\n")
    data = example_data()
    data["name"] = "tiny-2x"
    data["card"]["template"] = str(template)
    recipe = tmp_path / "custom.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=example["root"] / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    ran = [line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) > 1 and line.split()[1] == "ran"]
    # A new recipe is a new build id, so the lock record and build.json follow;
    # nothing that reads weights reruns.
    assert ran == ["lock", "card", "manifest"], proc.stdout
    card = ModelCard.load(tmp_path / "dist" / "tiny-2x" / "awq" / "README.md")
    assert card.text.startswith("\n# tiny-2x (AWQ 4-bit) by me") and card.data.license == "psf-2.0"


def test_license_from_recipe_or_agreeing_sources():
    recipe = parse_recipe(
        {
            "base_model": "org/base",
            "experts": [
                {"source_model": "org/a", "positive_prompts": ["a"]},
                {"source_model": "org/b", "positive_prompts": ["b"]},
            ],
        },
        "r",
    )
    agree = {"base": "apache-2.0", "experts[0]": "apache-2.0", "experts[1]": "apache-2.0"}
    assert resolve_license(recipe, agree) == "apache-2.0"
    with pytest.raises(
        RecipeError,
        match=r"card.license: the source models do not agree on a license \(base: apache-2.0, experts\[0\]: mit",
    ):
        resolve_license(recipe, {**agree, "experts[0]": "mit"})
    with pytest.raises(RecipeError, match="experts\\[1\\]: none stated"):
        resolve_license(recipe, {**agree, "experts[1]": None})
    chosen = recipe.model_copy(update={"card": recipe.card.model_copy(update={"license": "mit"})})
    assert resolve_license(chosen, {**agree, "experts[0]": "mit"}) == "mit"


def test_the_gguf_card_does_not_depend_on_the_order_a_record_keeps_its_files():
    """A cached gguf record reads its files back sorted, a fresh one in the order
    they were made: the card is the same bytes either way (repro-check, two fresh
    builds, could not see it; a build with gguf cached wrote the other order)."""
    from frankenmoe.measure.verdict import PASS, build_report, check
    from frankenmoe.recipe import load_recipe
    from frankenmoe.stages.card import gguf_card
    from frankenmoe.stages.gguf import parity_name
    from tests.conftest import REAL_RECIPE

    recipe = load_recipe(REAL_RECIPE)
    made = {t: f"smollm2-2x-{t}.gguf" for t in recipe.gguf.types}
    checks = [check(parity_name(t), PASS, f"mean KL of {t}", quality=True) for t in made]
    report = build_report(checks, True, files={t: {"file": f, "bytes": 10**8} for t, f in made.items()})
    orders = (made.items(), sorted(made.items()))
    cards = {gguf_card(recipe, "apache-2.0", "b", dict(order), report) for order in orders}
    assert len(cards) == 1
    assert f'filename="smollm2-2x-{recipe.gguf.types[0]}.gguf"' in cards.pop()
