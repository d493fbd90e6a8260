"""Malformed recipes: one line per problem naming the key, exit 2, no traceback, nothing written.

Each case is a recipe a user could plausibly write; the expected text is the key
path (and, where it matters, the hint) that the error line must carry.
"""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

GOOD = """base_model: org/base
experts:
  - source_model: org/code
    positive_prompts: ["def f(x):"]
  - source_model: org/prose
    positive_prompts: ["Once upon a time"]
"""

CASES = {
    "yaml_syntax": ("base_model: [unclosed\n", ["yaml_syntax.yaml:2:1: YAML syntax error"]),
    "tab_indent": (GOOD + "\tquantize: {}\n", ["tab_indent.yaml:7:1: YAML syntax error"]),
    "duplicate_key": (
        "base_model: a/b\nbase_model: c/d\nexperts: []\n",
        ["duplicate_key.yaml:2:1: YAML syntax error: duplicate key 'base_model'"],
    ),
    "non_string_key": (GOOD + "? [a, b]\n: c\n", ["YAML syntax error: key"]),
    "not_a_mapping": ("- org/base\n- org/code\n", ["a recipe must be a YAML mapping"]),
    "empty_file": ("", ["a recipe must be a YAML mapping"]),
    "unknown_top_key": (GOOD + "gate_mod: hidden\n", ["gate_mod: unknown key"]),
    "unknown_nested_key": (
        GOOD + "quantize:\n  calibration:\n    sample: 8\n",
        ["quantize.calibration.sample: unknown key"],
    ),
    "unknown_expert_key": (
        GOOD.replace('positive_prompts: ["def', 'positive_prompt: ["def'),
        ["experts[0].positive_prompt: unknown key"],
    ),
    "wrong_type_int": (GOOD + "experts_per_token: two\n", ["experts_per_token: Input should be a valid integer"]),
    "bool_for_int": (GOOD + "experts_per_token: true\n", ["experts_per_token: Input should be a valid integer"]),
    "wrong_type_section": (GOOD + "merge: 5\n", ["merge: expected a mapping"]),
    "expert_as_string": (
        "base_model: a/b\nexperts:\n  - c/d\n  - e/f\n",
        ["experts[0]: expected an expert", "experts[1]: expected an expert"],
    ),
    "model_as_number": (GOOD.replace("base_model: org/base", "base_model: 5"), ["base_model: expected a model"]),
    "empty_prompt": (GOOD.replace('["def f(x):"]', '[""]'), ["experts[0].positive_prompts[0]: empty prompt"]),
    "no_prompts": (
        "base_model: a/b\nexperts:\n  - source_model: c/d\n  - source_model: e/f\n",
        ["experts[0].positive_prompts: required"],
    ),
    "one_expert": (
        "base_model: a/b\nexperts:\n  - source_model: c/d\n    positive_prompts: [x]\n",
        ["experts: a MoE needs at least 2 experts, got 1"],
    ),
    "too_many_per_token": (GOOD + "experts_per_token: 3\n", ["experts_per_token: 3 is more than the 2 experts listed"]),
    "gate_mode": (GOOD + "gate_mode: learned\n", ["gate_mode: 'learned' is not supported; use one of hidden"]),
    "architecture": (GOOD + "architecture: qwen2_moe\n", ["architecture: 'qwen2_moe' is not supported"]),
    "name_escapes_up": (GOOD + "name: ../x\n", ["name: '../x' must be a plain folder name"]),
    "name_absolute": (GOOD + "name: /tmp/x\n", ["name: '/tmp/x' must be a plain folder name"]),
    "bits": (GOOD + "quantize:\n  bits: 3\n", ["quantize.bits: 3 is not supported; use one of 4"]),
    "threshold_range": (
        GOOD + "verify:\n  min_top1_agreement: 2\n",
        ["verify.min_top1_agreement: Input should be less than or equal to 1"],
    ),
    "size": (GOOD + "merge:\n  shard_size: huge\n", ["merge.shard_size: 'huge' is not a size"]),
    "repo_id": (
        GOOD + "publish:\n  awq:\n    repo_id: no-slash\n",
        ["publish.awq.repo_id: 'no-slash' is not a Hub repo id"],
    ),
    "no_calibration": (GOOD + "quantize:\n  calibration:\n    files: []\n", ["quantize.calibration: files: empty"]),
    "shared_experts": (GOOD + "shared_experts:\n  - source_model: a/b\n", ["shared_experts: not supported"]),
}


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> tuple[int, dict[str, list[str]]]:
    """All cases through one `frankenmoe validate` (one process: fast)."""
    root = tmp_path_factory.mktemp("malformed")
    for name, (text, _) in CASES.items():
        (root / f"{name}.yaml").write_text(text, encoding="utf-8")
    (root / "not_utf8.yaml").write_bytes(b"base_model: \xff\xfe\n")
    proc = run_cli("validate", *sorted(f"{n}.yaml" for n in [*CASES, "not_utf8"]), cwd=root)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines: dict[str, list[str]] = {}
    for line in proc.stderr.splitlines():
        lines.setdefault(line.split(".yaml", 1)[0], []).append(line)
    return proc.returncode, lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_is_one_line_naming_the_key(validated, case):
    status, lines = validated
    assert status == 2
    got = lines.get(case, [])
    for expected in CASES[case][1]:
        assert any(expected in line for line in got), f"{expected!r} not in {got}"
    assert all(len(line) < 300 for line in got)


def test_not_utf8_names_the_file(validated):
    assert validated[1]["not_utf8"] == ["not_utf8.yaml: not UTF-8 text"]


def test_all_problems_at_once_exit_2_and_nothing_written(tmp_path):
    recipe = tmp_path / "many.yaml"
    recipe.write_text(
        GOOD.replace('["def f(x):"]', '[""]') + "experts_per_token: 5\ngate_mode: x\nquantize:\n  bitz: 4\n"
    )
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    assert {l.split(":")[1].strip() for l in lines} == {
        "quantize.bitz",
        "gate_mode",
        "experts_per_token",
        "experts[0].positive_prompts[0]",
    }
    assert not (tmp_path / "build").exists() and not (tmp_path / "dist").exists()


def test_missing_recipe_file_is_one_line(tmp_path):
    proc = run_cli("build", str(tmp_path / "nope.yaml"), build=tmp_path / "build")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: recipe file not found"
