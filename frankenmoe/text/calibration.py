"""Calibration text -> fixed token windows, chosen deterministically from a seed.

Local files (`.jsonl` with a `text` field, or `.txt`) or a Hub dataset through
`datasets`, read at the commit its `revision` resolves to (recorded in the key and
the lock). The windows are non-overlapping `seq_len`-token
chunks of the tokenized text, `samples` of them picked by a seeded permutation,
so the same inputs always give the same calibration set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from frankenmoe.errors import InputFileError, RecipeError
from frankenmoe.recipe import CalibrationDataset, CalibrationSection
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.support.paths import portable, resolve_path
from frankenmoe.text.corpus import read_documents
from frankenmoe.text.overlap import EvaluationText

COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class CalibrationSet:
    windows: list[list[int]]
    source: dict  # what was read, with content hashes


def source_fingerprint(
    cal: CalibrationSection,
    state: HashState,
    root: Path,
    section: str = "quantize.calibration.files",
    offline: bool = False,
) -> dict | None:
    """Content identity of the calibration input, cheap on a no-op rebuild: file
    hashes, or a dataset's resolved commit (None offline when it is not pinned)."""
    if cal.dataset:
        identity = dataset_identity(cal.dataset, state, offline)
        return None if identity is None else {"dataset": identity}
    files = []  # in order, each by its portable name: two files of one basename (code/ and prose/) both count
    for name in cal.files:
        path = resolve_path(name, root)
        if not path.is_file():
            raise InputFileError(f"{section}: {name}: file not found")
        files.append([portable(name), state.sha256(path)])
    return {"files": files}


def dataset_identity(ds: CalibrationDataset, state: HashState, offline: bool = False) -> dict | None:
    """A dataset as the key and the lock name it: a local dataset folder by its files'
    hashes (its path made portable), a Hub dataset by its resolved commit."""
    folder = Path(ds.id)
    if folder.is_dir():
        files = {p.relative_to(folder).as_posix(): state.sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        return {**ds.model_dump(), "id": portable(ds.id), "files": files}
    commit = dataset_commit(ds, offline)
    return None if commit is None else {**ds.model_dump(), "commit": commit}


_COMMITS: dict[tuple[str, str | None], str] = {}


def dataset_commit(ds: CalibrationDataset, offline: bool = False) -> str | None:
    """The commit a dataset's `revision` (default: main) names on the Hub, as for
    models: the key, the lock and the texts all use it, so a dataset that moves on
    the Hub is a new build, never other bytes under the same key. A revision that
    is a commit needs no network; otherwise None when `offline`. Resolved once per
    process, so the key and the text read agree even if the branch moves between."""
    if ds.revision and COMMIT_RE.fullmatch(ds.revision):
        return ds.revision
    if (ds.id, ds.revision) in _COMMITS:
        return _COMMITS[(ds.id, ds.revision)]
    if offline:
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"quantize.calibration.dataset: {ds.id}"
    try:
        sha = HfApi().dataset_info(ds.id, revision=ds.revision).sha
    except RevisionNotFoundError:
        raise InputFileError(f"{where}: revision {ds.revision!r} not found") from None
    except GatedRepoError:
        raise InputFileError(
            f"{where} is gated; accept its terms on the Hub and log in (huggingface-cli login)"
        ) from None
    except RepositoryNotFoundError:
        raise InputFileError(f"{where} not found on the Hub (or private: log in with huggingface-cli login)") from None
    except Exception as e:  # HTTP errors, and the HTTP client's own connection errors (not OSError)
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise InputFileError(
            f"{where}: cannot resolve revision {ds.revision or 'main'} to a commit "
            f"({f'HTTP {status}' if status else type(e).__name__}); check the network, or pin `revision` to a commit"
        ) from None
    if not sha:
        raise InputFileError(f"{where}: the Hub named no commit for revision {ds.revision or 'main'}")
    _COMMITS[(ds.id, ds.revision)] = sha
    return sha


def load_texts(cal: CalibrationSection, root: Path) -> tuple[list[str], dict]:
    if cal.dataset:
        import datasets
        from datasets.exceptions import DatasetNotFoundError
        from huggingface_hub.errors import HfHubHTTPError

        # What datasets raises for a dataset that is not there, not reachable, or has
        # no such split (ValueError "Unknown split"); anything else is a bug.
        expected = (DatasetNotFoundError, FileNotFoundError, ConnectionError, TimeoutError, HfHubHTTPError, ValueError)
        ds = cal.dataset
        commit = None if Path(ds.id).is_dir() else dataset_commit(ds)
        try:
            data = datasets.load_dataset(ds.id, split=ds.split, revision=commit)
        except expected as e:
            said = " ".join(str(e).split())[:300] or type(e).__name__
            raise InputFileError(
                f"quantize.calibration.dataset: cannot load {ds.id} split {ds.split!r}: {said}; "
                "check id, split and network"
            ) from None
        if ds.text_column not in data.column_names:
            raise InputFileError(
                f"quantize.calibration.dataset.text_column: {ds.text_column!r} not in {data.column_names}"
            )
        texts = [t for t in data[ds.text_column] if isinstance(t, str) and t.strip()]
        return texts, {
            "dataset": {**ds.model_dump(), "id": portable(ds.id), "commit": commit},
            "fingerprint": data._fingerprint,
            "sha256": sha256_json(texts),
        }
    docs = read_documents([resolve_path(f, root) for f in cal.files])
    texts = [d["text"] for d in docs if d["text"].strip()]
    return texts, {"files": [portable(f) for f in cal.files], "sha256": sha256_json(texts)}


def token_stream(texts: list[str], tokenizer) -> list[int]:
    """The texts' token ids end to end, each followed by EOS."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids


def token_windows(files: list[Path], tokenizer, seq_len: int, section: str) -> list[list[int]]:
    """Every non-overlapping `seq_len`-token window of the text in `files`, in order."""
    ids = token_stream([doc["text"] for doc in read_documents(files)], tokenizer)
    windows = [ids[i * seq_len : (i + 1) * seq_len] for i in range(len(ids) // seq_len)]
    if not windows:
        raise InputFileError(
            f"{section}: {len(ids)} tokens of text, not one window of {seq_len}; add text or lower seq_len"
        )
    return windows


def calibration_windows(cal: CalibrationSection, tokenizer, root: Path = Path()) -> CalibrationSet:
    import torch

    texts, source = load_texts(cal, root)
    ids = token_stream(texts, tokenizer)
    chunks = len(ids) // cal.seq_len
    if chunks < cal.samples:
        raise InputFileError(
            f"quantize.calibration: {len(ids)} tokens of text give {chunks} windows of {cal.seq_len}, "
            f"{cal.samples} needed ({cal.samples * cal.seq_len} tokens); add text or lower samples/seq_len"
        )
    order = torch.randperm(chunks, generator=torch.Generator().manual_seed(cal.seed))[: cal.samples].tolist()
    windows = [ids[i * cal.seq_len : (i + 1) * cal.seq_len] for i in sorted(order)]
    return CalibrationSet(windows, {**source, "tokens": len(ids), "windows": len(windows)})


def check_not_evaluation_text(recipe, section: str, files: list[str], why: str) -> None:
    """Text a stage learns from must not hold the held-out text verify measures on.
    Compared per document by content (frankenmoe/text/overlap.py), so a copy under
    another name, re-serialized JSON Lines, a `.txt` copy or one evaluation document
    in an otherwise new file are caught."""
    held_out = EvaluationText({name: recipe.path(name) for name in recipe.verify.files if recipe.path(name).is_file()})
    problems = []
    for name in files:
        path = recipe.path(name)
        if path.is_file() and (shared := held_out.shared_with(name, path)):
            problems.append(
                f"{section}: {name} shares {shared.count} of its {shared.documents} documents with verify.files "
                f"{shared.evaluation_file} (the first at {name}:{shared.first_line}); {why}"
            )
    if problems:
        raise RecipeError(problems)


def check_text_files(recipe, section: str, files: list[str]) -> None:
    """Read every file of a text section once before any stage runs, so a missing,
    empty, malformed or non-UTF-8 file stops the build in seconds, not after the
    merge. (Whether there is enough text is known only with the tokenizer;
    `quantize` checks it before the engine starts.)"""
    problems = []
    for name in files:
        try:
            read_documents([recipe.path(name)])
        except InputFileError as e:
            problems += [f"{section}: {p}" for p in e.problems]
    if problems:
        raise InputFileError(problems)
