"""The README a new user reads first: short, what a build gives up front, and every
list in it (commands, docs pages, environment variables) the same as the code's."""

from __future__ import annotations

import json
import re

import jsonschema
import yaml

from frankenmoe import cli
from tests.conftest import REPO, run_cli

README = REPO / "README.md"
LIMIT = 250
UP_FRONT = 80  # the dist tree and the verify excerpt appear before this line


def lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def section(title: str) -> str:
    return README.read_text(encoding="utf-8").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_is_short():
    assert len(lines()) <= LIMIT, f"README.md has {len(lines())} lines; at most {LIMIT}"


def test_the_dist_tree_and_a_verify_excerpt_come_first():
    head = "\n".join(lines()[: UP_FRONT - 1])
    assert "pending" not in head, "the dist tree or the verify excerpt is still a placeholder"
    tree = re.search(r"```text\n(dist/smollm2-2x/?\n.*?)```", head, re.S)
    assert tree, "no `dist/smollm2-2x/` tree in a ```text block before line 80"
    for folder in ("merged", "awq", "gguf"):
        assert f"{folder}/" in tree.group(1) or f"/{folder}" in tree.group(1), folder
    assert "verify.md" in tree.group(1)
    excerpt = re.search(r"```markdown\n(.*?)```", head, re.S)
    assert excerpt and "## Verification: " in excerpt.group(1), "no verify.md excerpt before line 80"


def test_the_readme_links_the_docs_and_the_index_every_page():
    # that every link resolves: tests/test_docs_pages.py, for the README and the docs alike
    assert any(link.startswith("docs/") for link in re.findall(r"\]\(([^)#]+)", README.read_text(encoding="utf-8")))
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert pages <= set(re.findall(r"\]\(([\w.-]+\.md)\)", index)), "docs/index.md misses a page"


def test_the_commands_table_lists_every_subcommand():
    subparsers = next(a for a in cli.parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    listed = re.findall(r"^\| `frankenmoe ([\w-]+)", section("Commands"), re.M)
    assert sorted(listed) == sorted(subparsers.choices)


def test_the_readme_recipe_validates(tmp_path):
    recipe = re.search(r"```yaml\n(# yaml-language-server.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert recipe, "no recipe in the README"
    (tmp_path / "my-moe.yaml").write_text(recipe.group(1), encoding="utf-8")
    schema = run_cli("schema")
    (tmp_path / "recipe.schema.json").write_text(schema.stdout, encoding="utf-8")
    proc = run_cli("validate", str(tmp_path / "my-moe.yaml"))
    assert proc.returncode == 0, proc.stderr
    validator = jsonschema.Draft202012Validator(json.loads(schema.stdout))
    errors = list(validator.iter_errors(yaml.safe_load(recipe.group(1))))
    assert not errors, [e.message for e in errors]
