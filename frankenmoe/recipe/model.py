"""The recipe: a mergekit-moe config (base_model ... architecture) plus one section per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from frankenmoe.recipe.fields import ARCHITECTURES, DTYPES, GATE_MODES, NAME_RE, Expert, ModelRef, Strict, any_case
from frankenmoe.recipe.sections import (
    CardSection,
    EvalsSection,
    GatesSection,
    GgufSection,
    MergeSection,
    PublishSection,
    QuantizeSection,
    VerifySection,
)
from frankenmoe.support.paths import resolve_path


class Recipe(Strict):
    """A frankenmoe recipe: a mergekit-moe config (base_model ... architecture) plus one section per stage."""

    name: str = Field(
        description="build and publish folder name (build/<name>, dist/<name>): letters, digits, '.', '_', '-'; "
        "unset: the recipe file's name without .yaml",
        json_schema_extra={"pattern": "^(?!.*\\.\\.)" + NAME_RE.pattern.removeprefix("^")},
    )
    base_model: ModelRef = Field(
        description="mergekit-moe: the model giving attention, embeddings, norms and the tokenizer"
    )
    experts: list[Expert] = Field(
        description="mergekit-moe: the experts, at least 2, in router order", json_schema_extra={"minItems": 2}
    )
    gate_mode: Literal[GATE_MODES] = Field(  # type: ignore[valid-type]
        default="hidden",
        description="mergekit-moe: how the router rows are made: hidden / hidden_last (each layer's hidden state "
        "at the prompts' last token), hidden_avg (averaged over the prompt), cheap_embed (token embeddings, the "
        "same for every layer), random / uniform_random (no prompts)",
    )
    dtype: Literal[DTYPES] | None = Field(  # type: ignore[valid-type]
        default=None, description="mergekit-moe: dtype of the merged weights; unset: the base model's"
    )
    experts_per_token: int = Field(
        default=2, ge=1, description="mergekit-moe: experts each token is routed to, at most the number of experts"
    )
    architecture: Annotated[
        str | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": any_case(ARCHITECTURES), "examples": list(ARCHITECTURES)},
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(default=None, description="mergekit-moe: output architecture; only mixtral (any case) is supported")
    # Validation refuses any shared expert (_semantic_problems): the schema takes only none.
    shared_experts: Annotated[
        list[Expert] | None, WithJsonSchema({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]})
    ] = Field(default=None, description="mergekit-moe: not supported by the Mixtral output architecture; leave it out")
    trust_remote_code: bool = Field(
        default=False, description="allow source models that need their own code (auto_map in config.json)"
    )
    merge: MergeSection = Field(default_factory=MergeSection, description="the merge stage")
    gates: GatesSection = Field(default_factory=GatesSection, description="router fitting")
    quantize: QuantizeSection = Field(default_factory=QuantizeSection, description="4-bit AWQ")
    verify: VerifySection = Field(default_factory=VerifySection, description="the checks of the 4-bit model")
    gguf: GgufSection = Field(default_factory=GgufSection, description="GGUF files by llama.cpp")
    evals: EvalsSection = Field(default_factory=EvalsSection, description="benchmarks by lm-eval")
    card: CardSection = Field(default_factory=CardSection, description="the model cards")
    publish: PublishSection = Field(default_factory=PublishSection, description="pushing to the Hub")
    # The recipe file's folder: relative paths in the recipe are relative to it.
    _root: Path = PrivateAttr(default_factory=Path)
    # What validation found that mergekit-moe accepts (parse_recipe): said, never refused.
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @field_validator("name")
    @classmethod
    def plain_folder_name(cls, name: str) -> str:
        if not NAME_RE.match(name) or ".." in name:
            raise ValueError(f"{name!r} must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..')")
        return name

    @field_validator("architecture")
    @classmethod
    def mixtral_only(cls, arch: str | None) -> str | None:
        if arch is not None and arch.lower() not in ARCHITECTURES:
            raise ValueError(f"{arch!r} is not supported; frankenmoe builds Mixtral-style MoEs (architecture: mixtral)")
        return arch

    @field_validator("shared_experts", mode="before")
    @classmethod
    def no_shared_experts(cls, value: Any) -> Any:
        if value:
            raise ValueError("not supported by the Mixtral output architecture; remove the key")
        return value

    @model_validator(mode="before")
    @classmethod
    def fit_on_the_recipes_calibration_text(cls, data: Any) -> Any:
        """Routers are fitted on the recipe's own calibration text unless `gates.files`
        names other: a recipe whose experts know other domains than the shipped
        code and prose gives its text once. (Malformed sections are left for the
        field validators to report.)"""
        quantize = data.get("quantize") if isinstance(data, dict) else None
        cal = quantize.get("calibration") if isinstance(quantize, dict) else None
        files = cal.get("files") if isinstance(cal, dict) else None
        gates = data.get("gates", {}) if isinstance(data, dict) else None
        if files and isinstance(gates, dict) and "files" not in gates:
            return {**data, "gates": {**gates, "files": files}}
        return data

    def path(self, name: str) -> Path:
        """A path key's file (frankenmoe/support/paths.py: shipped, recipe-relative or absolute)."""
        return resolve_path(name, self._root)

    def all_models(self) -> list[tuple[str, ModelRef]]:
        """(role, reference) for the base and every expert, in merge order."""
        return [("base", self.base_model)] + [(f"experts[{i}]", e.source_model) for i, e in enumerate(self.experts)]
