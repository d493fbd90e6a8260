"""Validating a recipe mapping: every problem at once, one line each with its key
path; what mergekit-moe accepts though it is often a slip is said as a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from frankenmoe.errors import RecipeError
from frankenmoe.recipe.model import Recipe


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
