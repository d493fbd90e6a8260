"""Recipes: a mergekit-moe config plus frankenmoe's own sections, validated up front.

A user's existing mergekit-moe YAML is a valid recipe as it is: the top-level keys
`base_model`, `gate_mode`, `dtype`, `experts_per_token`, `experts`, `architecture`
mean exactly what they mean to mergekit-moe. frankenmoe adds `name`,
`trust_remote_code` and one section per stage (`merge`, `quantize`, `verify`,
`gates`, `gguf`, `card`, `publish`), each key with its default and description here,
from which `frankenmoe schema` generates docs/recipes.md and docs/recipe.schema.json.

Validation reports every problem at once, one line each, naming the key path
(`experts[1].positive_prompts: ...`), so a typo is found before a long GPU run.

The package: `fields` (strict models, sizes, model references, experts), `sections`
(one model per stage section), `model` (the Recipe), `validation` (problems and
warnings), `yaml_file` (reading the file). Importers take names from here.
"""

from __future__ import annotations

from frankenmoe.recipe.fields import (
    ARCHITECTURES,
    DTYPES,
    GATE_MODES,
    NAME_RE,
    Expert,
    ModelRef,
)
from frankenmoe.recipe.model import Recipe
from frankenmoe.recipe.sections import (
    GGUF_TYPES,
    CalibrationDataset,
    CalibrationSection,
    CardSection,
    EvalsSection,
    GatesSection,
    GgufSection,
    MergeSection,
    PublishSection,
    QuantizeSection,
    VerifySection,
)
from frankenmoe.recipe.validation import parse_recipe
from frankenmoe.recipe.yaml_file import load_raw, load_recipe

__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "GATE_MODES",
    "GGUF_TYPES",
    "NAME_RE",
    "CalibrationDataset",
    "CalibrationSection",
    "CardSection",
    "EvalsSection",
    "Expert",
    "GatesSection",
    "GgufSection",
    "MergeSection",
    "ModelRef",
    "PublishSection",
    "QuantizeSection",
    "Recipe",
    "VerifySection",
    "load_raw",
    "load_recipe",
    "parse_recipe",
]
