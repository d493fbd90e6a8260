"""Every FRANKENMOE_* variable is read in frankenmoe/support/settings.py only, and the README lists them all."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from frankenmoe.support import settings

ROOT = Path(__file__).resolve().parent.parent


def _env_reads(tree: ast.AST) -> list[str]:
    """FRANKENMOE_* names read from the environment: os.environ.get/[...]/os.getenv."""
    out = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            f = node.func
            environ_get = f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "environ"
            if environ_get or f.attr == "getenv":
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "environ":
            if isinstance(node.ctx, ast.Load):
                key = node.slice
        if isinstance(key, ast.Constant) and str(key.value).startswith("FRANKENMOE_"):
            out.append(key.value)
    return out


def test_only_the_settings_module_reads_frankenmoe_variables():
    readers = {}
    for path in [*(ROOT / "frankenmoe").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        if path.name != "settings.py" and (names := _env_reads(ast.parse(path.read_text()))):
            readers[path.relative_to(ROOT).as_posix()] = names
    assert readers == {}
    assert _env_reads(ast.parse('import os\nos.environ.get("FRANKENMOE_X")\nos.environ["FRANKENMOE_Y"]')) == [
        "FRANKENMOE_X",
        "FRANKENMOE_Y",
    ]


def test_the_readme_lists_every_variable():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(FRANKENMOE_\w+)` \|", section, re.M)
    assert sorted(listed) == sorted(settings.VARIABLES)
    used = set(
        re.findall(r"FRANKENMOE_[A-Z_]+[A-Z]", "\n".join(p.read_text() for p in (ROOT / "frankenmoe").rglob("*.py")))
    )
    assert used <= set(settings.VARIABLES)
