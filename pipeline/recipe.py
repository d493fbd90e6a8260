"""Recipes: a mergekit-moe config plus frankenmoe's own sections, validated up front.

A user's existing mergekit-moe YAML is a valid recipe as it is: the top-level keys
`base_model`, `gate_mode`, `dtype`, `experts_per_token`, `experts`, `architecture`
mean exactly what they mean to mergekit-moe. frankenmoe adds `name`,
`trust_remote_code` and one section per stage (`merge`, `quantize`, `verify`,
`card`, `publish`), each with defaults documented in the README.

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
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import RecipeError
from pipeline.support.paths import resolve_path, shipped

GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
DTYPES = ("float16", "bfloat16", "float32")
ARCHITECTURES = ("mixtral",)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


class Strict(BaseModel):
    # strict: `true` is not a number and "3" is not an int, whatever YAML made of them.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as `5GB`, `500MB`, `2GiB`."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 5GB or a number of bytes")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    m = SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size; write e.g. 5GB, 500MB or 2GiB")
    unit = (m.group(2) or "").upper().removesuffix("B")
    return int(float(m.group(1)) * SIZE_UNITS[unit])


Size = Annotated[int, BeforeValidator(parse_size)]


class ModelRef(Strict):
    """A local folder or a Hub repo id, with an optional revision (branch, tag or commit)."""

    id: str
    revision: str | None = None

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
    source_model: ModelRef
    positive_prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    noise_scale: float | None = None
    residual_scale: float | None = None


class MergeSection(Strict):
    seed: int = 0
    shard_size: Size = parse_size("5GB")
    device: Literal["auto", "cpu", "cuda"] = "auto"


def _shipped(split: str) -> list[str]:
    """The corpora installed with the package (pipeline/support/paths.py), one file per domain."""
    return [shipped(f"code/{split}.jsonl"), shipped(f"prose/{split}.jsonl")]


class GatesSection(Strict):
    fit: bool = False
    files: list[str] = Field(default_factory=lambda: _shipped("calibration"), min_length=1)
    steps: int = Field(default=25, ge=1)
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=4, ge=1)
    seq_len: int = Field(default=128, ge=8)
    seed: int = 0
    balance: float = Field(default=0.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bfloat16 where the machine computes it natively (a GPU, AVX512-BF16, AMX), else float32
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class CalibrationDataset(Strict):
    id: str
    split: str = "validation"
    text_column: str = "text"
    revision: str | None = None


class CalibrationSection(Strict):
    files: list[str] = Field(default_factory=lambda: _shipped("calibration"))
    dataset: CalibrationDataset | None = None
    samples: int = Field(default=128, ge=1)
    seq_len: int = Field(default=512, ge=8)
    seed: int = 0

    @model_validator(mode="after")
    def some_text(self) -> "CalibrationSection":
        if not self.files and not self.dataset:
            raise ValueError("files: empty; list calibration text files or set quantize.calibration.dataset")
        return self


class QuantizeSection(Strict):
    method: Literal["awq"] = "awq"
    bits: Literal[4] = 4
    # None: the largest of 128, 64, 32 that divides every quantized input dimension
    # (chosen in preflight from the base model's config, recorded by quantize).
    group_size: Literal[32, 64, 128] | None = None
    zero_point: bool = True
    dtype: Literal["float16"] = "float16"
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    # Forward every calibration token through every expert while AWQ collects its
    # statistics (the layer's output stays the routed one): no expert is
    # calibrated on a handful of tokens, whatever the routers do.
    calibrate_all_experts: bool = True
    min_expert_tokens: int = Field(default=64, ge=0)
    allow_undercalibrated_experts: bool = False
    shard_size: Size = parse_size("5GB")


class VerifySection(Strict):
    files: list[str] = Field(default_factory=lambda: _shipped("eval"), min_length=1)
    max_tokens: int = Field(default=8192, ge=16)
    seq_len: int = Field(default=256, ge=8)
    forced_routing_atol: float = Field(default=1e-2, gt=0)
    # How much of an expert may be lost in the merge: mean KL(source || MoE forced
    # to that expert) per token. Reported always; a limit only when set.
    max_forced_kl: float | None = Field(default=None, gt=0)
    # Unset: by the model's size (pipeline/moe/quality_limits.py: published 7B figures,
    # a measured 135M model); router drift measured on the example (README,
    # "Verification thresholds").
    max_mean_kl: float | None = Field(default=None, gt=0)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    max_ppl_ratio: float | None = Field(default=None, ge=1)
    min_routing_agreement: float = Field(default=0.90, ge=0, le=1)
    max_router_weight_mae: float | None = Field(default=None, gt=0)
    # An expert is dead at a layer when it gets less than this share of the routed
    # weight there on every evaluation domain, its own included; reported always,
    # a failure only with fail_on_dead_experts.
    dead_expert_share: float = Field(default=0.05, ge=0, le=1)
    fail_on_dead_experts: bool = False
    fail_on_mismatch: bool = True


class GgufSection(Strict):
    """GGUF files made and checked by llama.cpp's own tools (pipeline/stages/gguf.py)."""

    enabled: bool = True
    types: list[str] = Field(default_factory=lambda: ["Q8_0", "Q4_K_M"], min_length=1)
    # Per type ({"Q4_K_M": 0.1}); a type not named gets its default by model size
    # (pipeline/moe/quality_limits.py).
    max_mean_kl: dict[str, float] = Field(default_factory=dict)
    min_top1_agreement: dict[str, float] = Field(default_factory=dict)
    max_ppl_ratio: dict[str, float] = Field(default_factory=dict)
    fail_on_mismatch: bool = True

    @field_validator("types")
    @classmethod
    def known_types(cls, value: list[str]) -> list[str]:
        from pipeline.quantization.llama_cpp import FTYPES

        unknown = [t for t in value if t not in FTYPES]
        if unknown:
            raise ValueError(f"unknown GGUF type {', '.join(unknown)}; use some of {', '.join(FTYPES)}")
        if len(set(value)) != len(value):
            raise ValueError("a GGUF type is listed twice")
        return value


class CardSection(Strict):
    template: str | None = None
    license: str | None = None
    language: list[str] | None = None
    quantized_by: str | None = None
    # A study.json written by `frankenmoe study` for this recipe: its table goes into the cards.
    study: str | None = None


class RepoTarget(Strict):
    repo_id: str

    @field_validator("repo_id")
    @classmethod
    def hub_id(cls, value: str) -> str:
        if not HUB_ID_RE.match(value):
            raise ValueError(f"{value!r} is not a Hub repo id of the form org/name")
        return value


class PublishSection(Strict):
    push: bool = False
    merged: RepoTarget | None = None
    awq: RepoTarget | None = None
    gguf: RepoTarget | None = None
    private: bool = True
    revision: str = "main"
    commit_message: str | None = None
    # Push folders whose checks failed anyway; their cards say so in their first line.
    allow_failed: bool = False

    def targets(self) -> dict[str, str]:
        """{published folder: repo id} for every folder the recipe pushes."""
        return {
            name: target.repo_id
            for name in type(self).model_fields
            if isinstance(target := getattr(self, name), RepoTarget)
        }


class Recipe(Strict):
    name: str
    base_model: ModelRef
    experts: list[Expert]
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    architecture: str | None = None
    shared_experts: list[Expert] | None = None
    trust_remote_code: bool = False
    merge: MergeSection = Field(default_factory=MergeSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    verify: VerifySection = Field(default_factory=VerifySection)
    gguf: GgufSection = Field(default_factory=GgufSection)
    card: CardSection = Field(default_factory=CardSection)
    publish: PublishSection = Field(default_factory=PublishSection)
    # The recipe file's folder: relative paths in the recipe are relative to it.
    _root: Path = PrivateAttr(default_factory=Path)

    @property
    def root(self) -> Path:
        return self._root

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
        """A path key's file (pipeline/support/paths.py: shipped, recipe-relative or absolute)."""
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
            msg = "unknown key (check its spelling against the README's recipe reference)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
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
    seen: set[str] = set()
    for i, p in enumerate(prompts):
        if isinstance(p, str) and not p.strip():
            problems.append(f"{where}[{i}]: empty prompt")
        elif isinstance(p, str) and p in seen:
            problems.append(f"{where}[{i}]: duplicate prompt {p!r}")
        if isinstance(p, str):
            seen.add(p)
    return problems


def _prompt_key(prompts: Any) -> tuple | int:
    """What makes two experts' prompts identical: the strings, in order. Anything else
    (a type error pydantic reports) is never identical to another expert's, and is
    never expanded: YAML aliases can nest a 1 KB file into billions of items."""
    if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts):
        return tuple(prompts)
    return id(prompts) if prompts is not None else 0


def _semantic_problems(raw: dict) -> list[str]:
    """Cross-field rules, checked on the raw mapping so they are reported together
    with type errors (pydantic would skip them once a field fails)."""
    problems = []
    name = raw.get("name")
    if isinstance(name, str) and (not NAME_RE.match(name) or ".." in name):
        problems.append(f"name: {name!r} must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..')")
    gate_mode = raw.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        problems.append(f"gate_mode: {gate_mode!r} is not supported; use one of {', '.join(GATE_MODES)}")
    dtype = raw.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        problems.append(f"dtype: {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    arch = raw.get("architecture")
    if arch is not None and (not isinstance(arch, str) or arch.lower() not in ARCHITECTURES):
        problems.append(
            f"architecture: {arch!r} is not supported; frankenmoe builds Mixtral-style MoEs (architecture: mixtral)"
        )
    if raw.get("shared_experts"):
        problems.append("shared_experts: not supported by the Mixtral output architecture; remove the key")
    experts = raw.get("experts")
    k = raw.get("experts_per_token", 2)
    if isinstance(k, int) and not isinstance(k, bool) and k < 1:
        problems.append(f"experts_per_token: must be at least 1, got {k}")
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
        for i, e in enumerate(experts):
            for j in range(i):
                if (
                    isinstance(e, dict)
                    and isinstance(experts[j], dict)
                    and e.get("source_model") == experts[j].get("source_model")
                    and e.get("source_model") is not None
                ):
                    problems.append(
                        f"experts[{i}].source_model: same model as experts[{j}]; an MoE of identical experts gives "
                        "the same output at more cost"
                    )
    return problems


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
    return recipe


def load_recipe(path: Path, root: Path | None = None) -> Recipe:
    """The recipe in `path`; its relative paths are relative to its folder, or to `root`."""
    return parse_recipe(load_raw(path), default_name=Path(path).stem, root=Path(path).parent if root is None else root)
