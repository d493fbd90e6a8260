"""Check states and the one report builder that verify and the GGUF check share.

A verdict is only worth what it measured, so every check has one of five states,
each with a one-line reason:

- `pass`: measured, and within its limit;
- `fail`: measured, and past its limit (the only state that fails a build or exits 6);
- `warn`: measured, a problem worth reading, but the recipe does not make it fail;
- `not_applicable`: nothing here for the check to judge (say, which experts run
  when every token goes to every expert);
- `not_measured`: the check did not run (the candidate does not load, or the check
  needs something the candidate does not come with).

The headline counts the states and says "passed" only when no check failed and at
least one quality check (one that compares model outputs) was measured.
"""

from __future__ import annotations

from typing import Any, Iterable

PASS, FAIL, WARN, NOT_APPLICABLE, NOT_MEASURED = "pass", "fail", "warn", "not_applicable", "not_measured"
STATES = (PASS, FAIL, WARN, NOT_APPLICABLE, NOT_MEASURED)
MEASURED = (PASS, FAIL, WARN)
# How the headline counts each state: "4 passed, 1 warning, 1 not applicable, 0 failed".
COUNT_WORDS = {
    PASS: ("passed", "passed"),
    WARN: ("warning", "warnings"),
    NOT_APPLICABLE: ("not applicable", "not applicable"),
    NOT_MEASURED: ("not measured", "not measured"),
    FAIL: ("failed", "failed"),
}
# Verdicts: what the report's first line says.
PASSED, FAILED, UNMEASURED = "passed", "failed", "not measured"


def check(name: str, state: str, reason: str, *, quality: bool = False, **numbers: Any) -> dict:
    """One check for verify.json: its state, its one-line reason and its numbers.
    `quality`: the check compares model outputs (log-probs, routing), so a
    measured one can carry the headline's "passed"."""
    if state not in STATES:
        raise ValueError(f"unknown check state {state!r}")
    return {"name": name, "state": state, "summary": " ".join(reason.split()), "quality": quality, **numbers}


def judged(name: str, ok: bool, reason: str, *, quality: bool = False, **numbers: Any) -> dict:
    """A measured check against a limit: pass or fail."""
    return check(name, PASS if ok else FAIL, reason, quality=quality, **numbers)


def counts(checks: Iterable[dict]) -> dict[str, int]:
    out = dict.fromkeys(STATES, 0)
    for c in checks:
        out[c["state"]] += 1
    return out


def verdict(checks: list[dict]) -> str:
    if any(c["state"] == FAIL for c in checks):
        return FAILED
    if any(c["quality"] and c["state"] in MEASURED for c in checks):
        return PASSED
    return UNMEASURED


def tally(checks: list[dict]) -> str:
    """'4 passed, 1 warning, 1 not applicable, 0 failed' (not measured counted when any)."""
    n = counts(checks)
    order = [PASS, WARN, NOT_APPLICABLE] + ([NOT_MEASURED] if n[NOT_MEASURED] else []) + [FAIL]
    return ", ".join(f"{n[s]} {COUNT_WORDS[s][0 if n[s] == 1 else 1]}" for s in order)


def build_report(checks: list[dict], enforced: bool, **extra: Any) -> dict:
    """verify.json's common part: the checks, their counts, the verdict, the failures.
    `passed` is true only for the verdict "passed"; a build stops (when `enforced`)
    only on `failures`, so a check that did not measure never fails a build."""
    failures = [f"{c['name']}: {c['summary']}" for c in checks if c["state"] == FAIL]
    v = verdict(checks)
    return {
        "verdict": v,
        "passed": v == PASSED,
        "headline": f"{v} ({tally(checks)})",
        "counts": counts(checks),
        "enforced": enforced,
        "failures": failures,
        **extra,
        "checks": checks,
    }


def named(report: dict, name: str) -> dict:
    """The report's check of that name (names are the constants of the stage that
    writes the report: verify.QUANTIZATION_PARITY, gguf.parity_name(type))."""
    for c in report["checks"]:
        if c["name"] == name:
            return c
    raise KeyError(f"no check {name!r} in the report (it has {', '.join(c['name'] for c in report['checks'])})")


def shown(state: str) -> str:
    """A state as the tables and logs show it: a failure stands out."""
    return "**FAIL**" if state == FAIL else state.replace("_", " ")


def markdown_table(report: dict, title: str, override: str) -> list[str]:
    """The report's heading (its headline) and one row per check; `override`: the
    recipe key that lets a build continue past failed checks."""
    lines = [f"## {title}: {report['headline']}", ""]
    if not report["enforced"] and report["failures"]:
        lines += [f"> The build was allowed to continue past failed checks (`{override}: false`).", ""]
    lines += ["| check | result | numbers |", "|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['name'].replace('_', ' ')} | {shown(c['state'])} | {c['summary'].replace('|', '/')} |")
    return lines


def log_lines(report: dict, prefix: str) -> list[str]:
    """One line per check for the build log and the CLI, then the headline."""
    lines = [
        f"{prefix:<9} {c['name']:<22} {'FAIL' if c['state'] == FAIL else c['state']}  {c['summary']}"
        for c in report["checks"]
    ]
    return lines + [f"{prefix:<9} {report['headline']}"]
