"""The recipe's JSON Schema and its Markdown reference, both generated from the
pydantic models in frankenmoe/recipe/, so that neither is written by hand.

`frankenmoe schema` prints the schema (committed as docs/recipe.schema.json, which a
recipe names in its `# yaml-language-server: $schema=...` line) and `frankenmoe
schema --markdown` the reference (docs/recipes.md); tests/test_docs_reference.py
fails when a committed copy differs from what the models give.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from frankenmoe.recipe import Recipe

SCHEMA_FILE = "docs/recipe.schema.json"
REFERENCE_FILE = "docs/recipes.md"
SCHEMA_COMMAND = f"frankenmoe schema > {SCHEMA_FILE}"
REFERENCE_COMMAND = f"frankenmoe schema --markdown > {REFERENCE_FILE}"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _FactoryDefaults(GenerateJsonSchema):
    """pydantic leaves out the defaults a factory makes (the lists and mappings);
    editors and the reference should show them. A whole section's default is left
    out: each of its keys carries its own."""

    def get_default_value(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()
            return NoDefault if isinstance(value, BaseModel) else value
        return super().get_default_value(schema)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file as `frankenmoe validate` reads it."""
    schema = Recipe.model_json_schema(schema_generator=_FactoryDefaults)
    schema["required"].remove("name")  # parse_recipe takes the file's name when the recipe gives none
    schema.pop("title")
    return {
        "$schema": DRAFT,
        "$comment": f"Generated from frankenmoe/recipe/ by `{SCHEMA_COMMAND}`; do not edit.",
        "title": "frankenmoe recipe",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# --- the Markdown reference ---------------------------------------------------

INTRO = f"""\
<!-- Generated from frankenmoe/recipe/ by `{REFERENCE_COMMAND}`; do not edit. -->
# Recipe reference

A recipe is a mergekit-moe YAML file plus frankenmoe's own sections, one per stage.
The mergekit-moe keys (their descriptions start with "mergekit-moe") mean what they
mean to mergekit-moe 0.1.5, so an existing mergekit-moe config is a recipe as it is.
Every other key is optional. `frankenmoe validate RECIPE` checks a recipe and reports
every problem on its own line, naming its key path.

**Paths.** A relative path in a recipe (model folders, text files, the card template)
is relative to the recipe file's folder, not the current one; `~/...` and absolute
paths are taken as written; `shipped:<domain>/<split>.jsonl` names a corpus installed
with the package (`calibration/` in this repository), which is what the text keys
default to.

**Editor support.** `{SCHEMA_FILE}` is the recipe's JSON Schema, written by
`{SCHEMA_COMMAND}`. Editors with a YAML language server (VS Code's
YAML extension, JetBrains IDEs) check and complete a recipe whose first line names it,
relative to the recipe:

```yaml
# yaml-language-server: $schema=../docs/recipe.schema.json
```

Outside this repository, `frankenmoe schema > recipe.schema.json` writes it beside your
recipe (then `$schema=recipe.schema.json`). The schema checks each key's type and
allowed values and refuses unknown keys; the rules between keys (prompts that
`gate_mode` needs, `experts_per_token` at most the number of experts) are checked by
`frankenmoe validate`, which also warns of what mergekit-moe accepts but is often a slip
(one model for two experts, a prompt listed twice), and the files a recipe names by the
build's preflight.
"""


def _ref(prop: dict[str, Any]) -> str | None:
    """The definition a key's schema points to: directly, as list items, or beside null."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "items" in prop:
        return _ref(prop["items"])
    for alt in prop.get("anyOf", []):
        if alt.get("type") != "null" and (name := _ref(alt)):
            return name
    return None


def _sections(schema: dict[str, Any]) -> list[tuple[list[str], dict[str, Any]]]:
    """(key paths, object schema) of the recipe and of every section in it, in
    order; one entry per definition, listing every key path that uses it."""
    defs = schema["$defs"]
    found: dict[str, tuple[list[str], dict[str, Any]]] = {"": ([""], schema)}

    def visit(prefix: str, obj: dict[str, Any]) -> None:
        for key, prop in obj["properties"].items():
            name = _ref(prop)
            if name is None or "properties" not in defs[name]:
                continue
            path = f"{prefix}{key}" + ("[]" if prop.get("type") == "array" else "")
            if name in found:
                found[name][0].append(path)
            else:
                found[name] = ([path], defs[name])
                visit(path + ".", defs[name])

    visit("", schema)
    return list(found.values())


def _code(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return _plain(value)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _type(prop: dict[str, Any], defs: dict[str, Any], path: str) -> str:
    """The key's type in words; a section names the table of its keys (`path`)."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"section `{path}`" if "properties" in defs[name] else f"[{_title(defs[name])}](#{_anchor(defs[name])})"
    if "anyOf" in prop:
        return " or ".join(_type(alt, defs, path) for alt in prop["anyOf"] if alt.get("type") != "null")
    if "enum" in prop or "const" in prop:
        values = [v for v in prop.get("enum", [prop.get("const")]) if v is not None]
        kinds = dict.fromkeys("string" if isinstance(v, str) else "integer" for v in values)
        return " or ".join(kinds)
    kind = prop.get("type")
    if kind == "array":
        return f"list of {_type(prop['items'], defs, path + '[]')}" if "items" in prop else "list"
    if kind == "object":
        return f"mapping of string to {_type(prop.get('additionalProperties', {}), defs, path)}"
    return kind or "any"


def _allowed(prop: dict[str, Any]) -> str:
    """What the schema allows beyond the type: values, bounds, lengths, patterns."""
    if "anyOf" in prop:
        return "; or ".join(a for alt in prop["anyOf"] if (a := _allowed(alt)))
    parts = []
    values = [v for v in prop.get("enum", [prop["const"]] if "const" in prop else []) if v is not None]
    if values:
        parts.append(", ".join(f"`{_plain(v)}`" for v in values))
    for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{word} {prop[key]}")
    if "minItems" in prop:
        parts.append(f"at least {prop['minItems']} item{'s' if prop['minItems'] != 1 else ''}")
    if "maxItems" in prop:
        parts.append("empty" if prop["maxItems"] == 0 else f"at most {prop['maxItems']} items")
    if prop.get("uniqueItems"):
        parts.append("no repeats")
    if "items" in prop and (each := _allowed(prop["items"])):
        parts.append(f"each {each}")
    if "examples" in prop:
        parts.append("e.g. " + ", ".join(f"`{_plain(v)}`" for v in prop["examples"]))
    elif "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    return ", ".join(parts)


def _default(prop: dict[str, Any], required: bool, defs: dict[str, Any]) -> str:
    if required:
        return "required"
    if "properties" in defs.get(_ref(prop) or "", {}):
        return "its keys' defaults"
    if "default" not in prop or prop["default"] is None:
        return "unset"
    return f"`{_code(prop['default'])}`"


def _title(definition: dict[str, Any]) -> str:
    return {"ModelRef": "model reference"}.get(definition["title"], definition["title"])


def _anchor(definition: dict[str, Any]) -> str:
    """GitHub's anchor of the definition's heading."""
    return _title(definition).lower().replace(" ", "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(obj: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    required = set(obj.get("required", []))
    for key, prop in obj["properties"].items():
        kind = _type(prop, defs, prefix + key)
        cells = (f"`{key}`", kind, _default(prop, key in required, defs), _allowed(prop), prop["description"])
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _alternatives(definition: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    """A key type with several forms (a model reference): its description and each form."""
    lines = [f"## {_title(definition).capitalize()}", "", definition["description"], "", "One of:", ""]
    for alt in definition["anyOf"]:
        lines.append(f"- {alt['description']}" + (":" if "properties" in alt else ""))
        if "properties" in alt:
            lines += ["", *("  " + row for row in _table(alt, defs)), ""]
    return lines + [""]


def markdown() -> str:
    """docs/recipes.md: every key with its type, default, allowed values and description."""
    schema = json_schema()
    defs = schema["$defs"]
    lines = INTRO.splitlines() + [""]
    for paths, obj in _sections(schema):
        title = "Top-level keys" if paths == [""] else ", ".join(f"`{p}`" for p in paths)
        lines += [f"## {title}", ""]
        if obj.get("description") and paths != [""]:
            lines += [obj["description"], ""]
        lines += _table(obj, defs, paths[0] + "." if paths[0] else "") + [""]
    for definition in defs.values():
        if "anyOf" in definition:
            lines += _alternatives(definition, defs)
    return "\n".join(lines).rstrip("\n") + "\n"
