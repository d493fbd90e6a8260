"""Numeric and text arguments are checked when the command line is parsed: one line,
exit 2, naming the flag, before any model is loaded."""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-new-tokens", "0"], "argument --max-new-tokens: 0 is too small; give 1 or more"),
        (["--max-new-tokens", "-5"], "argument --max-new-tokens: -5 is too small; give 1 or more"),
        (["--max-new-tokens", "ten"], "argument --max-new-tokens: 'ten' is not a whole number; give 1 or more"),
        (["--max-new-tokens", "2.5"], "argument --max-new-tokens: '2.5' is not a whole number; give 1 or more"),
        (["--prompt", "  "], "argument --prompt: empty; give some text"),
    ],
)
def test_generate_arguments_are_refused_before_the_model_loads(tmp_path, args, message):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")  # loading it would fail otherwise
    t0 = time.monotonic()
    proc = run_cli("generate", str(folder), "--prompt", "def f(", *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: frankenmoe generate: {message} (see frankenmoe generate --help)"]
    assert time.monotonic() - t0 < 30


def test_more_new_tokens_than_the_model_has_positions_is_refused_before_it_loads(fixture_models):
    t0 = time.monotonic()
    proc = run_cli(
        "generate", str(fixture_models / "base"), "--prompt", "def f(", "--max-new-tokens", "99999", timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: --max-new-tokens: 99999 is more than the model's context (1024 tokens, max_position_embeddings); "
        "give at most that"
    ]
    assert time.monotonic() - t0 < 30


def test_fixtures_into_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_cli("fixtures", "--only", "tiny", "--out", str(tmp_path / "file" / "sub"), timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: fixtures: --out {tmp_path / 'file' / 'sub'}: cannot make it (Not a directory); give a writable folder"
    ]
