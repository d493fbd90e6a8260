"""Recipes: a mergekit-moe config plus frankenmoe's own sections, validated up front.

A user's existing mergekit-moe YAML is a valid recipe as it is: the top-level keys
`base_model`, `gate_mode`, `dtype`, `experts_per_token`, `experts`, `architecture`
mean exactly what they mean to mergekit-moe. frankenmoe adds `name`,
`trust_remote_code` and one section per stage (`merge`, `quantize`, `verify`,
`gates`, `gguf`, `card`, `publish`), each key with its default and description here,
from which `frankenmoe schema` generates docs/recipes.md and docs/recipe.schema.json.

Validation reports every problem at once, one line each, naming the key path
(`experts[1].positive_prompts: ...`), so a typo is found before a long GPU run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from frankenmoe.errors import RecipeError
from frankenmoe.support.paths import resolve_path, shipped

GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
DTYPES = ("float16", "bfloat16", "float32")
ARCHITECTURES = ("mixtral",)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Spelled out in both cases, not re.IGNORECASE: the JSON Schema reuses the pattern.
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KkMmGgTt][Ii]?[Bb]?|[Bb])?\s*$")


def _any_case(words: tuple[str, ...]) -> str:
    """A JSON Schema pattern for any of `words` in any letter case (`architecture` is compared lowercased)."""
    return "^(" + "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in w) for w in words) + ")$"


class Strict(BaseModel):
    # strict: `true` is not a number and "3" is not an int, whatever YAML made of them.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# The JSON Schema (`frankenmoe schema`) of a size: a positive int or a size string (which
# pydantic's ByteSize reads: decimal units 5GB, binary 2GiB, any case).
SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "exclusiveMinimum": 0},
        {"type": "string", "pattern": SIZE_RE.pattern, "examples": ["5GB", "500MB", "2GiB"]},
    ]
}
Size = Annotated[ByteSize, Field(gt=0), WithJsonSchema(SIZE_SCHEMA)]


def _model_ref_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema of a model reference: the three forms `from_string` takes."""
    mapping = {k: schema.pop(k) for k in ("type", "properties", "required", "additionalProperties")}
    revision = mapping["properties"]["revision"]
    path = {**mapping["properties"]["id"], "title": "Path"}
    schema["anyOf"] = [
        # The part before the first "@" must not be blank.
        {"type": "string", "pattern": r"^[^@]*[^@\s]", "description": "a folder, org/name or org/name@revision"},
        {**mapping, "description": "a mapping {id, revision}"},
        {
            **mapping,
            "properties": {"path": path, "revision": revision},
            "required": ["path"],
            "description": "mergekit's mapping {path, revision}",
        },
    ]


class ModelRef(Strict):
    """A local folder or a Hub repo id, with an optional revision (branch, tag or commit)."""

    model_config = ConfigDict(json_schema_extra=_model_ref_schema)

    id: str = Field(
        description="a local folder (relative to the recipe file's folder) or a Hub id org/name",
        json_schema_extra={"pattern": r"\S"},
    )
    revision: str | None = Field(
        default=None, description="branch, tag or commit of a Hub model; the lock pins the commit it resolves to"
    )

    @model_validator(mode="before")
    @classmethod
    def from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            ident, _, rev = value.partition("@")  # mergekit also accepts "org/name@revision"
            return {"id": ident, "revision": rev or None}
        if isinstance(value, dict) and "path" in value and "id" not in value:
            return {"id": value["path"], **{k: v for k, v in value.items() if k != "path"}}
        return value

    @field_validator("id")
    @classmethod
    def not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty model reference; give a local folder or a Hub id such as org/name")
        return value

    def local_path(self, root: Path) -> Path:
        """Where the folder would be: relative references are relative to the recipe's folder."""
        return resolve_path(self.id, root)

    def looks_like_hub_id(self, root: Path) -> bool:
        return bool(HUB_ID_RE.match(self.id)) and not self.local_path(root).exists()

    def display(self) -> str:
        return f"{self.id}@{self.revision}" if self.revision else self.id


class Expert(Strict):
    """One expert (mergekit-moe): the model whose MLP weights it takes, and the prompts its router row comes from."""

    source_model: ModelRef = Field(description="the model whose MLP weights become this expert")
    positive_prompts: list[str] | None = Field(
        default=None,
        description="prompts that should be routed to this expert; required (non-empty, no duplicates) unless "
        "gate_mode is random or uniform_random",
    )
    negative_prompts: list[str] | None = Field(
        default=None, description="prompts whose hidden states are subtracted from the positive prompts' ones"
    )
    noise_scale: float | None = Field(
        default=None, description="standard deviation of Gaussian noise mergekit adds to this expert's MLP weights"
    )
    residual_scale: float | None = Field(
        default=None, description="factor mergekit multiplies this expert's down_proj by"
    )


DEVICE_DOC = "auto (a GPU when torch finds one, else the CPU), cpu, or cuda (refused before any stage without a GPU)"


class MergeSection(Strict):
    """The merge stage: mergekit-moe builds the MoE from the resolved models."""

    seed: int = Field(default=0, description="seed of the random generators (random gate modes, noise_scale)")
    shard_size: Size = Field(
        default=5 * 10**9, description="largest safetensors shard of the merged model, in bytes or as a size"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description=f"where mergekit computes the hidden-state router rows: {DEVICE_DOC}"
    )


def _shipped(split: str) -> list[str]:
    """The corpora installed with the package (frankenmoe/support/paths.py), one file per domain."""
    return [shipped(f"code/{split}.jsonl"), shipped(f"prose/{split}.jsonl")]


TEXT_FILES_DOC = "`.jsonl` (field `text`) or `.txt` files; `shipped:<domain>/<split>.jsonl` names a shipped corpus"


class GatesSection(Strict):
    """The gates stage: train only the router weights on text after the merge (off unless `fit: true`)."""

    fit: bool = Field(default=False, description="train the routers after the merge; false keeps mergekit's routers")
    files: list[str] = Field(
        default_factory=lambda: _shipped("calibration"),
        min_length=1,
        description=f"training text: {TEXT_FILES_DOC}; default: quantize.calibration.files when the recipe names "
        "them, else the shipped calibration split; may not share a document with verify.files (compared by content)",
    )
    start: Literal["routers", "best_expert"] = Field(
        default="routers",
        description="where the Adam steps start: routers, the merge's routers as they are; best_expert first fits "
        "each layer's router to send each gates.files file's tokens to the expert best on that file "
        "(docs/routing-and-study.md)",
    )
    steps: int = Field(
        default=100,
        ge=0,
        description="most Adam steps; the fit stops sooner when its held-out loss stops improving; 0: the start alone",
    )
    holdout: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="share of each gates.files file's windows held out (its last ones, at most 8) to decide when "
        "to stop and which routers to keep",
    )
    check_every: int = Field(default=5, ge=1, description="steps between two measurements of the held-out loss")
    patience: int = Field(default=3, ge=1, description="held-out checks without a new best loss before the fit stops")
    lr: float = Field(default=0.05, gt=0, description="learning rate")
    batch_size: int = Field(default=4, ge=1, description="windows per step, taken in turn from each file")
    seq_len: int = Field(default=128, ge=8, description="tokens per window")
    seed: int = Field(default=0, description="seed for picking the windows")
    balance: float = Field(
        default=0.0, ge=0, description="weight of a Switch-Transformer load-balance term added to the loss"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description=f"where the fit computes: {DEVICE_DOC}")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="what the model computes in while fitting; auto: bfloat16 where the machine computes it "
        "natively (a GPU, AVX512-BF16, AMX), else float32",
    )


class CalibrationDataset(Strict):
    """A Hub dataset as calibration text, read with `datasets` at the commit its revision resolves to."""

    id: str = Field(description="Hub dataset id, or a local dataset folder")
    split: str = Field(default="validation", description="dataset split")
    text_column: str = Field(default="text", description="column holding the text")
    revision: str | None = Field(
        default=None,
        description="branch, tag or commit (unset: main); resolved to its commit, which the key and the lock record",
    )


class CalibrationSection(Strict):
    """The text AWQ calibrates on: fixed token windows picked from it by a seed."""

    files: list[str] = Field(
        default_factory=lambda: _shipped("calibration"),
        description=f"calibration text: {TEXT_FILES_DOC}; may not share a document with verify.files "
        "(compared by content); empty only with a dataset",
    )
    dataset: CalibrationDataset | None = Field(default=None, description="a Hub dataset instead of files")
    samples: int = Field(default=128, ge=1, description="calibration windows")
    seq_len: int = Field(default=512, ge=8, description="tokens per calibration window")
    seed: int = Field(default=0, description="seed for picking the windows")

    @model_validator(mode="after")
    def some_text(self) -> "CalibrationSection":
        if not self.files and not self.dataset:
            raise ValueError("files: empty; list calibration text files or set quantize.calibration.dataset")
        return self


class QuantizeSection(Strict):
    """The quantize stage: 4-bit AWQ by GPTQModel, published in the AutoAWQ GEMM layout."""

    method: Literal["awq"] = Field(default="awq", description="quantization method (AWQ only)")
    bits: Literal[4] = Field(default=4, description="weight bits")
    group_size: Literal[16, 32, 64, 128] | None = Field(
        default=None,
        description="quantization group size; unset: 16 for a model under 0.5B parameters (measured: the one "
        "symmetric setting that passes on SmolLM2-135M), else the largest of 128, 64, 32 that divides every quantized "
        "input dimension; chosen from the base model's config before any stage runs and recorded by quantize",
    )
    zero_point: bool = Field(
        default=False,
        description="asymmetric quantization with zero points (AutoAWQ's default); false (symmetric): the setting "
        "the pinned transformers reads as compressed-tensors, at a measured quality cost (docs/verification.md)",
    )
    compressed_tensors: bool = Field(
        default=True,
        description="also publish dist/<name>/w4a16/: the 4-bit model converted to compressed-tensors (W4A16) by its "
        "own converter and verified through transformers' from_pretrained; made only where the pinned transformers "
        "reads it (zero_point false; docs/verification.md)",
    )
    dtype: Literal["float16"] = Field(
        default="float16", description="dtype of the scales and of the tensors left unquantized"
    )
    calibration: CalibrationSection = Field(
        default_factory=CalibrationSection, description="the calibration text (section below)"
    )
    calibrate_all_experts: bool = Field(
        default=True,
        description="while AWQ collects its statistics, every calibration token goes through every expert (the "
        "layer's output stays the routed one), so no expert is calibrated on a handful of tokens; false: each expert "
        "sees only the tokens routed to it",
    )
    min_expert_tokens: int = Field(
        default=64,
        ge=0,
        description="with calibrate_all_experts false: the fewest routed calibration tokens an expert may get at "
        "any layer; fewer stops the build",
    )
    allow_undercalibrated_experts: bool = Field(
        default=False, description="continue when an expert gets fewer than min_expert_tokens (recorded)"
    )
    shard_size: Size = Field(
        default=5 * 10**9, description="largest safetensors shard of the 4-bit model, in bytes or as a size"
    )


SIZE_LIMIT_DOC = "unset: by the model's size (frankenmoe/measure/quality_limits.py; verify.json records which)"


class VerifySection(Strict):
    """The verify checks of the 4-bit model against the 16-bit merge, on held-out text."""

    files: list[str] = Field(
        default_factory=lambda: _shipped("eval"),
        min_length=1,
        description=f"held-out evaluation text: {TEXT_FILES_DOC}; labelled by domain (a document's `domain` field, "
        "else the file's folder name)",
    )
    max_tokens: int = Field(default=8192, ge=16, description="evaluation tokens, an equal share per domain")
    seq_len: int = Field(default=256, ge=8, description="tokens per evaluation window")
    forced_routing_atol: float = Field(
        default=1e-2,
        gt=0,
        description="largest log-prob difference between the MoE routed fully to expert k and source model k "
        "(checked for experts that share the base's non-MLP weights)",
    )
    max_forced_kl: float | None = Field(
        default=None,
        gt=0,
        description="largest mean KL(source || MoE forced to that expert) per token: how much of an expert the "
        "merge may lose; reported always, a limit only when set",
    )
    # Unset: by the model's size (frankenmoe/measure/quality_limits.py: published 7B figures,
    # a measured 135M model; docs/verification.md); router drift: each example recipe's own limit.
    max_mean_kl: float | None = Field(
        default=None, gt=0, description=f"largest mean KL(16-bit || 4-bit) per token; {SIZE_LIMIT_DOC}"
    )
    min_top1_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=f"smallest share of tokens whose top-1 prediction is unchanged; {SIZE_LIMIT_DOC}",
    )
    max_ppl_ratio: float | None = Field(
        default=None, ge=1, description=f"largest perplexity ratio 4-bit / 16-bit; {SIZE_LIMIT_DOC}"
    )
    min_routing_agreement: float = Field(
        default=0.90,
        ge=0,
        le=1,
        description="smallest share of tokens routed to the same top-k experts, at every layer (with top-k of k "
        "experts it cannot fail, and verify says so)",
    )
    max_router_weight_mae: float | None = Field(
        default=None,
        gt=0,
        description="largest mean absolute difference of the router weights, per layer; reported always, a limit "
        "only when set",
    )
    dead_expert_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="an expert is dead at a layer when it gets less than this share of the routed weight there on "
        "every evaluation domain; reported always",
    )
    fail_on_dead_experts: bool = Field(default=False, description="a dead expert fails verify")
    fail_on_mismatch: bool = Field(
        default=True,
        description="a failed check stops the build before publishing further; false: continue (recorded in "
        "verify.json)",
    )


# GGUF file types a recipe may ask for, by llama.cpp's own names (llama_ftype); each has
# its number in frankenmoe/quantization/llama_cpp.py FTYPES (a test keeps the two equal).
GGUF_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K")


def _gguf_types_schema(schema: dict[str, Any]) -> None:
    """The GGUF types `known_types` accepts."""
    schema["items"]["enum"] = list(GGUF_TYPES)
    schema["uniqueItems"] = True


GGUF_LIMIT_DOC = "per type ({TYPE: value}); a type not named gets its default by its bits and the model's size"


class GgufSection(Strict):
    """GGUF files made and checked by llama.cpp's own tools (frankenmoe/stages/gguf.py)."""

    enabled: bool = Field(
        default=True,
        description="make and check GGUF files; false: no gguf stage (needed for a tokenizer llama.cpp's converter "
        "does not know)",
    )
    types: list[str] = Field(
        default_factory=lambda: ["Q8_0", "Q4_K_M"],
        min_length=1,
        description="llama.cpp file types to make, each once",
        json_schema_extra=_gguf_types_schema,
    )
    max_mean_kl: dict[str, float] = Field(
        default_factory=dict, description=f"largest mean KL(16-bit || GGUF) per token, {GGUF_LIMIT_DOC}"
    )
    min_top1_agreement: dict[str, float] = Field(
        default_factory=dict, description=f"smallest share of tokens with the same top-1 prediction, {GGUF_LIMIT_DOC}"
    )
    max_ppl_ratio: dict[str, float] = Field(
        default_factory=dict, description=f"largest perplexity ratio GGUF / 16-bit, {GGUF_LIMIT_DOC}"
    )
    fail_on_mismatch: bool = Field(default=True, description="a failed GGUF check stops the build")

    @field_validator("types")
    @classmethod
    def known_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in GGUF_TYPES]
        if unknown:
            raise ValueError(f"unknown GGUF type {', '.join(unknown)}; use some of {', '.join(GGUF_TYPES)}")
        if len(set(value)) != len(value):
            raise ValueError("a GGUF type is listed twice")
        return value


EVALS_MODELS = ("base", "experts", "moe", "4-bit", "gguf")


class EvalsSection(Strict):
    """Standard benchmarks by lm-evaluation-harness (frankenmoe/stages/evals.py), off unless enabled."""

    enabled: bool = Field(default=False, description="score the models with lm-eval; false: no evals stage")
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task or group names, each once; `leaderboard`: the Open LLM Leaderboard's tasks with "
        "their few-shot counts (frankenmoe/measure/benchmarks.py)",
    )
    include: str | None = Field(
        default=None, description="a folder of lm-eval task YAMLs (lm-eval's --include_path), relative to the recipe"
    )
    limit: float | None = Field(
        default=None,
        gt=0,
        description="documents per task (lm-eval's --limit): a whole number, or a share below 1; unset: all",
    )
    models: list[Literal[EVALS_MODELS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(EVALS_MODELS),
        min_length=1,
        description="which models to score: the base, each expert, the 16-bit MoE, the 4-bit MoE, each GGUF file "
        "(gguf: by llama.cpp; by default only when the build makes GGUF files, listed with gguf.enabled false it "
        "is refused)",
    )

    @model_validator(mode="after")
    def tasks_when_enabled(self) -> "EvalsSection":
        if self.enabled and not self.tasks:
            raise ValueError("tasks: empty; name lm-eval tasks (or `leaderboard`), or set evals.enabled: false")
        for name, values in (("tasks", self.tasks), ("models", self.models)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: a value is listed twice")
        if self.limit is not None and self.limit >= 1 and self.limit != int(self.limit):
            raise ValueError(f"limit: {self.limit} is neither a whole number nor a share below 1")
        return self


class CardSection(Strict):
    """The model cards of the published folders."""

    template: str | None = Field(
        default=None, description="a Jinja model card template; unset: the built-in frankenmoe/templates/model_card.md"
    )
    license: str | None = Field(
        default=None, description="license id for the cards; unset: the one license every source model states"
    )
    language: list[str] | None = Field(default=None, description="languages for the card metadata")
    quantized_by: str | None = Field(default=None, description="name for the AWQ card's quantized_by")
    study: str | None = Field(
        default=None,
        description="a study.json written by `frankenmoe study` for this recipe: its table goes into the cards",
    )


class RepoTarget(Strict):
    """A Hub repository to push one published folder to."""

    repo_id: str = Field(description="Hub repo id org/name", json_schema_extra={"pattern": HUB_ID_RE.pattern})

    @field_validator("repo_id")
    @classmethod
    def hub_id(cls, value: str) -> str:
        if not HUB_ID_RE.match(value):
            raise ValueError(f"{value!r} is not a Hub repo id of the form org/name")
        return value


class PublishSection(Strict):
    """Pushing the published folders (dist/<name>/merged, awq, gguf, w4a16) to the Hugging Face Hub."""

    push: bool = Field(default=False, description="push at the end of the build (`frankenmoe push` pushes too)")
    merged: RepoTarget | None = Field(default=None, description="where dist/<name>/merged goes")
    awq: RepoTarget | None = Field(default=None, description="where dist/<name>/awq goes")
    gguf: RepoTarget | None = Field(default=None, description="where dist/<name>/gguf goes")
    w4a16: RepoTarget | None = Field(
        default=None, description="where dist/<name>/w4a16 (compressed-tensors, quantize.compressed_tensors) goes"
    )
    private: bool = Field(default=True, description="create new repos as private")
    revision: str = Field(default="main", description="branch to push to")
    commit_message: str | None = Field(default=None, description="commit message; unset: `frankenmoe build <build id>`")
    allow_failed: bool = Field(
        default=False,
        description="push folders whose checks failed anyway; their cards then say so in their first line",
    )

    def targets(self) -> dict[str, str]:
        """{published folder: repo id} for every folder the recipe pushes."""
        return {
            name: target.repo_id
            for name in type(self).model_fields
            if isinstance(target := getattr(self, name), RepoTarget)
        }


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
                    {"type": "string", "pattern": _any_case(ARCHITECTURES), "examples": list(ARCHITECTURES)},
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


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "recipe"


EXPECTED = {
    "ModelRef": "expected a model: a local folder, a Hub id org/name[@revision] or {id, revision}",
    "Expert": "expected an expert: a mapping with source_model and positive_prompts",
}


def _pydantic_problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-before[from_string()]",))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against docs/recipes.md, or `frankenmoe schema --markdown`)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "literal_error":
            choices = e.get("ctx", {}).get("expected", "").replace("'", "").replace(" or ", ", ")
            msg = f"{e.get('input')!r} is not supported; use one of {choices}"
        elif e["type"] in ("byte_size", "byte_size_unit"):
            msg = f"{e.get('input')!r} is not a size; write e.g. 5GB, 500MB or 2GiB"
        elif e["type"] in ("model_type", "model_attributes_type", "dict_type"):
            what = e.get("ctx", {}).get("class_name", "")
            msg = EXPECTED.get(what, "expected a mapping of settings (key: value lines)") + f", got {e.get('input')!r}"
        problems.append(f"{_key_path(loc)}: {msg}")
    return problems


def _prompt_problems(where: str, prompts: Any, required: bool) -> list[str]:
    if prompts is None:
        return [f"{where}: required for gate_mode hidden/cheap_embed; give one or more prompts"] if required else []
    if not isinstance(prompts, list):
        return []  # the type error is reported by pydantic
    problems = []
    if required and not prompts:
        problems.append(f"{where}: empty list; give one or more prompts that suit this expert")
    for i, p in enumerate(prompts):
        if isinstance(p, str) and not p.strip():
            problems.append(f"{where}[{i}]: empty prompt")
    return problems


def _duplicate_prompts(where: str, prompts: Any) -> list[str]:
    if not isinstance(prompts, list):
        return []
    seen: set[str] = set()
    found = []
    for i, p in enumerate(prompts):
        if isinstance(p, str) and p.strip() and p in seen:
            found.append(f"{where}[{i}]: duplicate prompt {p!r} (it counts twice in the router row)")
        if isinstance(p, str):
            seen.add(p)
    return found


def _prompt_key(prompts: Any) -> tuple | int:
    """What makes two experts' prompts identical: the strings, in order. Anything else
    (a type error pydantic reports) is never identical to another expert's, and is
    never expanded: YAML aliases can nest a 1 KB file into billions of items."""
    if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts):
        return tuple(prompts)
    return id(prompts) if prompts is not None else 0


def _semantic_problems(raw: dict) -> list[str]:
    """The rules across fields (the number of experts, prompts by gate mode), checked on
    the raw mapping: pydantic runs no model validator once a field fails, and these are
    reported together with the field errors, every problem at once."""
    problems = []
    gate_mode = raw.get("gate_mode", "hidden")
    experts = raw.get("experts")
    k = raw.get("experts_per_token", 2)
    if isinstance(experts, list):
        if len(experts) < 2:
            problems.append(f"experts: a MoE needs at least 2 experts, got {len(experts)}")
        if isinstance(k, int) and len(experts) < k:
            problems.append(f"experts_per_token: {k} is more than the {len(experts)} experts listed")
        need_prompts = gate_mode not in ("random", "uniform_random")
        prompt_sets = []
        for i, e in enumerate(experts):
            if not isinstance(e, dict):
                continue
            problems += _prompt_problems(f"experts[{i}].positive_prompts", e.get("positive_prompts"), need_prompts)
            problems += _prompt_problems(f"experts[{i}].negative_prompts", e.get("negative_prompts"), False)
            prompt_sets.append((_prompt_key(e.get("positive_prompts")), _prompt_key(e.get("negative_prompts"))))
        if need_prompts and len(experts) > 1 and len(prompt_sets) == len(experts) and len(set(prompt_sets)) == 1:
            problems.append(
                "experts: every expert has identical prompts; give each expert prompts that describe what it should get"
            )
    return problems


def _mergekit_accepts(raw: dict) -> list[str]:
    """What mergekit-moe accepts though it is often a slip: said in `validate`, `plan` and
    the build log, never refused (a "clown-car" MoE uses one model for several experts,
    each with its own prompts)."""
    experts = raw.get("experts")
    if not isinstance(experts, list):
        return []
    found = []
    for i, e in enumerate(experts):
        if isinstance(e, dict):
            for key in ("positive_prompts", "negative_prompts"):
                found += _duplicate_prompts(f"experts[{i}].{key}", e.get(key))
    models = [e.get("source_model") if isinstance(e, dict) else None for e in experts]
    if len(models) > 1 and models[0] is not None and all(m == models[0] for m in models[1:]):
        found.append(
            "experts: every expert is the same source model; the MoE gives that model's output at more cost until it "
            "is trained (mergekit-moe refuses this unless run with --i-understand-this-is-not-useful-without-training)"
        )
        return found
    for i, model in enumerate(models):
        first = models.index(model)
        if model is not None and first < i:
            found.append(
                f"experts[{i}].source_model: same model as experts[{first}]; their MLPs are identical, so only "
                "their router rows tell them apart"
            )
    return found


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is not a name; keys are words such as base_model or experts",
                key_node.start_mark,
            )
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_raw(path: Path) -> dict:
    """The recipe file as a mapping, or a RecipeError naming the file, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([f"{path}: recipe file not found"])
    except UnicodeDecodeError:
        raise RecipeError([f"{path}: not UTF-8 text"])
    except OSError as e:
        raise RecipeError([f"{path}: cannot read ({e.strerror})"])
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError([f"{where}: YAML syntax error: {e.problem or e.context}"])
    except yaml.YAMLError as e:
        raise RecipeError([f"{path}: YAML error: {e}"])
    if not isinstance(raw, dict):
        raise RecipeError(
            [f"{path}: a recipe must be a YAML mapping of keys (base_model, experts, ...), got {type(raw).__name__}"]
        )
    return raw


def parse_recipe(raw: dict, default_name: str, root: Path = Path()) -> Recipe:
    """Validate a raw mapping; raise RecipeError listing every problem. Relative
    paths in it are taken relative to `root` (the recipe file's folder)."""
    data = {"name": default_name, **raw}
    problems = _semantic_problems(data)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        problems = _pydantic_problems(err) + problems
        recipe = None
    if problems:
        raise RecipeError(list(dict.fromkeys(problems)))
    assert recipe is not None
    recipe._root = root
    recipe._warnings = _mergekit_accepts(data)
    return recipe


def load_recipe(path: Path, root: Path | None = None) -> Recipe:
    """The recipe in `path`; its relative paths are relative to its folder, or to `root`."""
    return parse_recipe(load_raw(path), default_name=Path(path).stem, root=Path(path).parent if root is None else root)
