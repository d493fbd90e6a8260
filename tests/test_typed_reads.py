"""No module reads another stage's record or report by string key: cross-stage values
go through the accessor of the stage that writes them (`quantize_result`,
`reference`, `verdict.named` with the writer's check-name constant)."""

from __future__ import annotations

import ast

from tests.conftest import REPO

# Who may index a stage's record, result or a report's checks: the writers themselves.
OWNERS = {
    "record": {
        "frankenmoe/stages/base.py",
        "frankenmoe/stages/lock.py",
        "frankenmoe/engine/cache.py",
        "frankenmoe/stages/manifest.py",
    },
    "result": {"frankenmoe/stages/base.py"},
    "checks": {"frankenmoe/measure/verdict.py", "frankenmoe/stages/gguf.py", "bench/scale.py"},  # scale: its own rows
}


def string_key_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) for `x.record[...]`, `x.result[...]` and `x["checks"]` subscripts."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Subscript) or not isinstance(node.ctx, ast.Load):
            continue
        if isinstance(node.value, ast.Attribute) and node.value.attr in ("record", "result"):
            found.append((node.lineno, node.value.attr))
        if isinstance(node.slice, ast.Constant) and node.slice.value == "checks":
            found.append((node.lineno, "checks"))
    return found


def test_no_module_reads_another_stages_record_by_string_key():
    bad = []
    for path in sorted((REPO / "frankenmoe").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for line, what in string_key_reads(path.read_text(encoding="utf-8")):
            if rel not in OWNERS[what]:
                bad.append(f"{rel}:{line}: reads .{what} by key; use the writing stage's accessor")
    assert not bad, "\n".join(bad)


def test_the_walk_finds_such_reads():
    assert string_key_reads('q = next(c for c in report["checks"] if c["name"] == "x")') == [(1, "checks")]
    assert string_key_reads('x = ctx.inputs["quantize"].result["wall_s"]') == [(1, "result")]
