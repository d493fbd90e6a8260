"""Calibration windows: deterministic, sized as asked, and clear errors for thin text."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import InputFileError
from pipeline.moe.calibration import calibration_windows
from pipeline.recipe import CalibrationSection
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tokenizer(fixture_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_models / "base")


def test_windows_are_deterministic_and_seeded(tokenizer):
    cal = CalibrationSection(samples=8, seq_len=64)
    a, b = calibration_windows(cal, tokenizer), calibration_windows(cal, tokenizer)
    assert a.windows == b.windows and len(a.windows) == 8 and all(len(w) == 64 for w in a.windows)
    assert a.source["sha256"] == b.source["sha256"]
    other = calibration_windows(cal.model_copy(update={"seed": 1}), tokenizer)
    assert other.windows != a.windows


def test_too_little_text_says_how_much_is_needed(tokenizer, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("def f(x):\n    return x\n" * 10)
    with pytest.raises(InputFileError, match=r"give \d+ windows of 512, 128 needed \(65536 tokens\)"):
        calibration_windows(CalibrationSection(files=[str(small)]), tokenizer)


def test_missing_empty_and_non_utf8_files(tokenizer, tmp_path):
    with pytest.raises(InputFileError, match="nope.jsonl: file not found"):
        calibration_windows(CalibrationSection(files=[str(tmp_path / "nope.jsonl")]), tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(InputFileError, match="empty.txt: no text in file"):
        calibration_windows(CalibrationSection(files=[str(empty)]), tokenizer)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputFileError, match="latin.txt: not UTF-8 text"):
        calibration_windows(CalibrationSection(files=[str(latin)]), tokenizer)


def test_dataset_source_goes_through_datasets(tokenizer, tmp_path, fixture_models):
    """A `dataset` id is loaded with datasets.load_dataset (here a local dataset folder)."""
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    rows = [
        json.loads(line) for line in (REPO / "calibration" / "prose" / "calibration.jsonl").read_text().splitlines()
    ]
    with open(folder / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"content": r["text"]}) + "\n")
    cal = CalibrationSection(
        dataset={"id": str(folder), "split": "train", "text_column": "content"}, samples=4, seq_len=64
    )
    got = calibration_windows(cal, tokenizer)
    assert len(got.windows) == 4 and got.source["dataset"]["text_column"] == "content"
    bad = cal.model_copy(update={"dataset": cal.dataset.model_copy(update={"text_column": "text"})})
    with pytest.raises(InputFileError, match=r"text_column: 'text' not in \['content'\]"):
        calibration_windows(bad, tokenizer)
