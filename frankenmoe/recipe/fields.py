"""What recipe sections are made of: strict models, sizes, model references,
experts, and the names mergekit-moe accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from frankenmoe.support.paths import resolve_path

GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
DTYPES = ("float16", "bfloat16", "float32")
ARCHITECTURES = ("mixtral",)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Spelled out in both cases, not re.IGNORECASE: the JSON Schema reuses the pattern.
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KkMmGgTt][Ii]?[Bb]?|[Bb])?\s*$")


def any_case(words: tuple[str, ...]) -> str:
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


class _PathMark:
    """Marks a recipe field that names a file or folder relative to the recipe."""


PATH_MARK = _PathMark()
# A path field: published recipes and lock files write it portably (frankenmoe/provenance/lockfile.py).
RecipePath = Annotated[str, PATH_MARK]


def _marked(annotation: Any) -> bool:
    """`RecipePath` anywhere in a field's type: alone, in a list, or optional."""
    if get_origin(annotation) is Annotated:
        return PATH_MARK in get_args(annotation)[1:] or _marked(get_args(annotation)[0])
    return any(_marked(a) for a in get_args(annotation))


def path_fields(model: BaseModel, at: tuple = ()) -> list[tuple[tuple, str]]:
    """(key path, value) of every path field set in `model`, nested sections and
    lists included: the one list of what in a recipe is a path."""
    out = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        marked = PATH_MARK in info.metadata or _marked(info.annotation)
        for i, item in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
            where = (*at, name) if i is None else (*at, name, i)
            if isinstance(item, BaseModel):
                out += path_fields(item, where)
            elif marked and isinstance(item, str):
                out.append((where, item))
    return out


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

    id: RecipePath = Field(
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
