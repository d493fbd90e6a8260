"""Reading a recipe file: YAML with duplicate keys refused, errors naming the file, line and column."""

from __future__ import annotations

from pathlib import Path

import yaml

from frankenmoe.errors import RecipeError
from frankenmoe.recipe.model import Recipe
from frankenmoe.recipe.validation import parse_recipe


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


def load_recipe(path: Path, root: Path | None = None) -> Recipe:
    """The recipe in `path`; its relative paths are relative to its folder, or to `root`."""
    return parse_recipe(load_raw(path), default_name=Path(path).stem, root=Path(path).parent if root is None else root)
