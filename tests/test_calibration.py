"""Calibration windows: deterministic, sized as asked, and clear errors for thin text."""

from __future__ import annotations

import json

import pytest

from frankenmoe.errors import InputFileError
from frankenmoe.measure.evaluation import eval_windows, spread_windows
from frankenmoe.recipe import CalibrationSection
from frankenmoe.text.calibration import calibration_windows
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


def test_a_hub_dataset_is_read_at_the_commit_its_revision_names(hub, monkeypatch, tmp_path):
    """The real huggingface_hub client over HTTP (the stand-in): `main` resolves to its
    current commit, which the key, the lock and `datasets` all use; a revision that
    is a commit needs no network; offline and unpinned, the identity is unknown."""
    import datasets
    from huggingface_hub import HfApi, constants

    from frankenmoe.support.hashing import HashState
    from frankenmoe.text import calibration
    from frankenmoe.text.calibration import dataset_commit, load_texts, source_fingerprint
    from tests.conftest import HUB_TOKEN

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setattr(calibration, "_COMMITS", {})
    api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    api.create_repo("toy/texts")
    first = api.upload_file(path_or_fileobj=b'{"text": "one"}\n', path_in_repo="train.jsonl", repo_id="toy/texts").oid
    second = api.upload_file(path_or_fileobj=b'{"text": "two"}\n', path_in_repo="train.jsonl", repo_id="toy/texts").oid
    cal = CalibrationSection(dataset={"id": "toy/texts", "split": "train"})
    state = HashState(tmp_path / "state.json")
    assert source_fingerprint(cal, state, tmp_path, offline=True) is None  # unpinned, offline: not known
    assert dataset_commit(cal.dataset) == second != first
    assert source_fingerprint(cal, state, tmp_path)["dataset"]["commit"] == second
    read = []

    class Rows(dict):
        column_names, _fingerprint = ["text"], "f"

    monkeypatch.setattr(
        datasets, "load_dataset", lambda id, split, revision: read.append(revision) or Rows(text=["two"])
    )
    texts, source = load_texts(cal, tmp_path)
    assert read == [second] and texts == ["two"] and source["dataset"]["commit"] == second
    pinned = CalibrationSection(dataset={"id": "toy/texts", "split": "train", "revision": first})
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network needed
    assert dataset_commit(pinned.dataset) == first
    assert source_fingerprint(pinned, state, tmp_path, offline=True)["dataset"]["commit"] == first
    monkeypatch.setattr(calibration, "_COMMITS", {})
    with pytest.raises(InputFileError, match=r"^quantize.calibration.dataset: toy/texts: cannot resolve revision main"):
        dataset_commit(cal.dataset)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    with pytest.raises(InputFileError, match="toy/nothing not found on the Hub"):
        dataset_commit(cal.dataset.model_copy(update={"id": "toy/nothing"}))


def test_every_text_file_counts_in_the_fingerprint_even_two_of_one_name(tmp_path):
    """The default calibration is code/calibration.jsonl and prose/calibration.jsonl:
    a change to either must change the stages' keys."""
    from frankenmoe.support.hashing import HashState
    from frankenmoe.text.calibration import source_fingerprint

    for domain in ("code", "prose"):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "calibration.jsonl").write_text(json.dumps({"text": domain}) + "\n")
    cal = CalibrationSection(files=["code/calibration.jsonl", "prose/calibration.jsonl"])
    before = source_fingerprint(cal, HashState(tmp_path / "state.json"), tmp_path)
    (tmp_path / "code" / "calibration.jsonl").write_text(json.dumps({"text": "changed"}) + "\n")
    after = source_fingerprint(cal, HashState(tmp_path / "state.json"), tmp_path)
    assert before != after and len(after["files"]) == 2


def test_held_out_windows_are_spread_over_all_of_each_domains_text(tokenizer, tmp_path):
    """The probe's and the study's held-out windows come from across each domain's
    documents, not its first ones, and each domain gets the tokens asked however many
    domains there are; verify's windows stay the first ones (its published numbers)."""
    files = []
    for domain, n in (("code", 12), ("prose", 40)):
        f = tmp_path / domain / "eval.jsonl"
        f.parent.mkdir()
        f.write_text("".join(json.dumps({"text": f"{domain} document {i}: " + "word " * 200}) + "\n" for i in range(n)))
        files.append(f)
    spread = spread_windows(files, tokenizer, 32, 4 * 32)
    for f in files:
        every = eval_windows([f], tokenizer, 32, 10**6)
        assert [w for _, w in eval_windows([f], tokenizer, 32, 4 * 32)] == [w for _, w in every[:4]]
        mine = [w for d, w in spread if d == f.parent.name]
        assert mine == [every[i * len(every) // 4][1] for i in range(4)] and len(every) // 4 > 1
