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
