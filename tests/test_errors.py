"""Errors live in one module with one exit-code table, and the README's table says the same."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from frankenmoe import errors
from frankenmoe.errors import EXIT_CODES, FrankenmoeError, UndercalibratedExpert, exit_code

ROOT = Path(__file__).resolve().parent.parent


def readme_rows() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for code, classes in re.findall(r"^\| (\d+) \| ([^|]*) \|", section, re.M):
        for name in re.findall(r"`(\w+)`", classes):
            rows[name] = int(code)
    return rows


def error_classes() -> list[type[FrankenmoeError]]:
    return [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, FrankenmoeError) and c is not FrankenmoeError
    ]


def test_the_readme_table_matches_the_classes():
    assert readme_rows() == {cls.__name__: exit_code(cls("x")) for cls in error_classes()}
    assert set(EXIT_CODES) <= set(error_classes())


def test_every_error_class_lives_in_errors_and_has_a_code():
    classes = error_classes()
    for cls in classes:
        assert exit_code(cls("x")) != 1, cls
    assert exit_code(UndercalibratedExpert("x")) == 4
    for path in [*(ROOT / "frankenmoe").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert path.name == "errors.py" or not bases & {c.__name__ for c in classes}, (
                    f"{path}: error class {node.name} outside frankenmoe/errors.py"
                )
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                assert getattr(node.exc.func, "id", None) != "FrankenmoeError", (
                    f"{path}:{node.lineno}: raise a specific error class; FrankenmoeError would exit 1"
                )


def test_exit_1_is_left_to_internal_errors(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("build", str(tmp_path / "x.yaml"), "--until", "nope")
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
