"""One model per stage section of a recipe (`merge`, `gates`, `quantize`, `verify`,
`gguf`, `evals`, `card`, `publish`), each key with its default and description."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from frankenmoe.recipe.fields import HUB_ID_RE, RecipePath, Size, Strict
from frankenmoe.support.paths import shipped

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
    files: list[RecipePath] = Field(
        default_factory=lambda: _shipped("calibration"),
        min_length=1,
        description=f"training text: {TEXT_FILES_DOC}; default: quantize.calibration.files when the recipe names "
        "them, else the shipped calibration split; may not share a document with verify.files (compared by content)",
    )
    # The defaults below are the fit the router probe measured best on four real recipes
    # (docs/routing-and-study.md, "The default"): the best_expert start, then Adam at 5e-3.
    start: Literal["routers", "best_expert"] = Field(
        default="best_expert",
        description="where the Adam steps start: routers, the merge's routers as they are; best_expert first fits "
        "each layer's router to send each gates.files file's tokens to the expert best on that file "
        "(docs/routing-and-study.md)",
    )
    steps: int = Field(
        default=60,
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
    lr: float = Field(default=5e-3, gt=0, description="learning rate")
    warmup: int = Field(
        default=10,
        ge=0,
        description="steps over which the learning rate rises linearly to gates.lr, so the first steps cannot "
        "throw a good start away; 0: none",
    )
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

    files: list[RecipePath] = Field(
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

    files: list[RecipePath] = Field(
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
    include: RecipePath | None = Field(
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

    template: RecipePath | None = Field(
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
