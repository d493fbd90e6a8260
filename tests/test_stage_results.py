"""Stage results are typed: each stage's `run` returns its own `Facts` class, the engine
writes its JSON form into record.json, and readers get the same class back. The JSON
form is what build.json publishes, so a round trip through the class must give the
record's bytes again."""

from __future__ import annotations

import json
from typing import get_type_hints

import pytest

from frankenmoe.engine.build import finished_results
from frankenmoe.engine.cache import default_layout
from frankenmoe.measure.documents import ForcedRouting, HeldOutWindows, MergeStructure, Reference
from frankenmoe.recipe import load_recipe
from frankenmoe.stages import STAGES
from frankenmoe.stages.base import Facts
from frankenmoe.stages.baseline import baseline
from frankenmoe.stages.evaluate import reference
from frankenmoe.stages.gates import GatesResult
from tests.conftest import EXAMPLE


def result_type(stage) -> type[Facts]:
    return get_type_hints(type(stage).run)["return"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_returns_its_own_facts_class(stage):
    kind = result_type(stage)
    assert isinstance(kind, type) and issubclass(kind, Facts) and kind is not Facts, stage.name


def test_a_result_with_a_field_it_does_not_declare_is_refused():
    with pytest.raises(ValueError, match="fited"):
        GatesResult.model_validate({"fited": True})


def test_each_stage_result_of_the_example_reads_back_as_its_class_and_writes_the_same_json(example):
    recipe = load_recipe(EXAMPLE)
    layout = default_layout(recipe, example["root"] / "build", example["root"] / "dist")
    done = finished_results(recipe, layout, STAGES, [s.name for s in STAGES if s.enabled(recipe)])
    assert {"resolve", "merge", "gates", "quantize", "verify", "card", "manifest"} <= set(done)
    for name, result in done.items():
        kind = result_type(next(s for s in STAGES if s.name == name))
        typed = result.read(kind)
        assert isinstance(typed, kind)
        assert typed.record() == result.result, name


def test_the_examples_reference_and_baseline_read_back_typed_and_write_the_same_bytes(example, tmp_path):
    """reference.json and baseline.json, the 16-bit side's documents, read as their
    classes (inner records included) and written again give the stage's file byte for byte."""
    recipe = load_recipe(EXAMPLE)
    layout = default_layout(recipe, example["root"] / "build", example["root"] / "dist")
    done = finished_results(recipe, layout, STAGES, ["evaluate", "baseline"])
    ref = reference(done["evaluate"])
    assert isinstance(ref.structure, MergeStructure) and all(isinstance(f, ForcedRouting) for f in ref.forced_routing)
    assert [f.expert for f in ref.forced_routing] == list(range(len(recipe.experts)))
    shared = baseline(done["baseline"])
    assert set(shared.perplexity) == {"base", *(f"experts[{i}]" for i in range(len(recipe.experts)))}
    for doc, written in (
        (ref, done["evaluate"].path / "reference.json"),
        (shared, done["baseline"].path / "baseline.json"),
    ):
        doc.write(tmp_path / written.name)
        assert (tmp_path / written.name).read_bytes() == written.read_bytes(), written.name


def test_a_reference_missing_a_field_is_refused_naming_it(tmp_path):
    (tmp_path / "reference.json").write_text(json.dumps({"domains": ["code"], "seq_len": 8}))
    with pytest.raises(ValueError, match="top_k"):
        Reference.read(tmp_path / "reference.json")
    assert HeldOutWindows.read(tmp_path / "reference.json").seq_len == 8  # all the GGUF parity reads
