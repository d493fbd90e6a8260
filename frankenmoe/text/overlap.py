"""Whether text a stage learns from shares documents with the evaluation text.

Compared by content, not by file bytes: each document (a JSON Lines record's `text`,
or a whole `.txt` file) is whitespace-collapsed, and a document of the learning text
is shared when it equals an evaluation document, holds one, or is held in one
(either of at least MIN_CHARS characters, so a short line such as `}` that many
texts hold is no overlap). So re-serialized JSON Lines, a `.txt` copy of a `.jsonl`
file's texts and one evaluation document slipped into an otherwise new file are all
found, whatever the file names.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from frankenmoe.text.corpus import read_documents

MIN_CHARS = 200
SEPARATOR = "\x00"  # never inside a collapsed text, so no match spans two documents


@dataclass(frozen=True)
class Shared:
    """The documents of one learning file found in the evaluation text."""

    file: str
    count: int
    documents: int
    first_line: int
    evaluation_file: str


def collapsed(text: str) -> str:
    return " ".join(text.split())


class EvaluationText:
    """The evaluation documents, indexed once for every file checked against them."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.exact: dict[str, str] = {}  # collapsed text -> evaluation file
        joined, self.starts, self.names = [], [], []
        offset = 0
        for name, path in files.items():
            for doc in read_documents([path]):
                text = collapsed(doc["text"])
                if not text:
                    continue
                self.exact.setdefault(text, name)
                self.starts.append(offset)
                self.names.append(name)
                joined.append(text)
                offset += len(text) + len(SEPARATOR)
        self.long = [t for t in self.exact if len(t) >= MIN_CHARS]
        self.joined = SEPARATOR.join(joined)

    def shared_with(self, name: str, path: Path) -> Shared | None:
        """How many of `path`'s documents the evaluation text shares, and the first one's line."""
        docs = [(doc["line"], collapsed(doc["text"])) for doc in read_documents([path])]
        starts, offset = [], 0
        for _, text in docs:
            starts.append(offset)
            offset += len(text) + len(SEPARATOR)
        joined = SEPARATOR.join(text for _, text in docs)
        shared: dict[int, str] = {}  # index of the learning document -> evaluation file
        for i, (_, text) in enumerate(docs):
            if text in self.exact:
                shared[i] = self.exact[text]
            elif len(text) >= MIN_CHARS and (at := self.joined.find(text)) >= 0:
                shared[i] = self.names[bisect_right(self.starts, at) - 1]
        for text in self.long:  # an evaluation document inside a longer learning one
            at = joined.find(text)
            while at >= 0:
                shared.setdefault(bisect_right(starts, at) - 1, self.exact[text])
                at = joined.find(text, at + 1)
        if not shared:
            return None
        first = min(shared)
        return Shared(name, len(shared), len(docs), docs[first][0], shared[first])
