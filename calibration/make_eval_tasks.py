"""Write the example's own lm-eval tasks over its shipped held-out text.

Run by a maintainer (`python calibration/make_eval_tasks.py`); the output in
calibration/tasks/ is committed (shipped with the package as `shipped:tasks`). Per
domain (default: code and prose, the real example's), from `<domain>/eval.jsonl` only,
the text verify holds out (never training, calibration or router-fitting text):

- `frankenmoe_<domain>_ppl`: a rolling-loglikelihood task, as lm-eval's wikitext
  (word and byte perplexity, bits per byte), over excerpts of the held-out documents;
- `frankenmoe_<domain>_mc`: multiple choice (acc, acc_norm): a context cut from a
  held-out document at a line end, its true continuation (the next lines) and three
  continuations of the same domain taken after other contexts, in a seeded order.

Data files sit beside their YAMLs under relative names: the evals stage runs lm-eval
with the task folder as its working folder (by hand: `cd calibration/tasks` first).
`provenance.json` records the source files' sha256, this script's settings and counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 0
PPL_CHARS = 1200  # an excerpt for the rolling task, cut back to a line end
CONTEXT_CHARS = 500  # a multiple-choice context, cut back to a line end
CONTINUATION_CHARS = 120  # its continuation: whole lines, at least this long
MIN_CONTINUATION = 40
ITEMS = 48  # most items per task and domain (evals.limit takes the first N)


def lines_upto(text: str, start: int, size: int) -> int:
    """The end of the last whole line that ends within `size` characters of `start` (0: none)."""
    cut = text.rfind("\n", start, start + size)
    return cut + 1 if cut > start else 0


def lines_from(text: str, start: int, size: int) -> int:
    """The end of the first line that ends at or past `size` characters after `start`."""
    cut = text.find("\n", start + size)
    return cut + 1 if cut >= 0 else 0


def excerpts(docs: list[dict]) -> list[dict]:
    """Consecutive excerpts of about PPL_CHARS characters, document by document, each whole lines."""
    out = []
    for doc in docs:
        text, pos = doc["text"], 0
        while (end := lines_upto(text, pos, PPL_CHARS)) and end - pos >= PPL_CHARS // 2:
            out.append({"id": f"{doc['id']}@{pos}", "text": text[pos:end]})
            pos = end
    return out


def contexts(docs: list[dict]) -> list[dict]:
    """(context, true continuation) pairs, consecutive through each document."""
    out = []
    for doc in docs:
        text, pos = doc["text"], 0
        while (mid := lines_upto(text, pos, CONTEXT_CHARS)) and (end := lines_from(text, mid, CONTINUATION_CHARS)):
            cont = text[mid:end]
            if mid - pos >= CONTEXT_CHARS // 2 and len(cont.strip()) >= MIN_CONTINUATION and cont.count("\n") <= 12:
                out.append({"id": f"{doc['id']}@{pos}", "doc": doc["id"], "context": text[pos:mid], "true": cont})
            pos = end
    return out


def multiple_choice(docs: list[dict], rng: random.Random) -> list[dict]:
    pairs = contexts(docs)
    rng.shuffle(pairs)
    items = []
    for pair in pairs[:ITEMS]:
        others = [p["true"] for p in pairs if p["doc"] != pair["doc"] and p["true"] != pair["true"]]
        choices = [pair["true"], *rng.sample(others, 3)]
        rng.shuffle(choices)
        items.append(
            {"id": pair["id"], "context": pair["context"], "choices": choices, "label": choices.index(pair["true"])}
        )
    return items


HEADER = """task: frankenmoe_{domain}_{kind}
tag: frankenmoe_example
dataset_path: json
dataset_kwargs:
  data_files: frankenmoe_{domain}_{kind}.jsonl
test_split: train
"""
PPL_YAML = """output_type: loglikelihood_rolling
doc_to_text: ''
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""
MC_YAML = """output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ''
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domains", nargs="*", default=["code", "prose"])
    parser.add_argument("--out", type=Path, default=HERE / "tasks")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "script": "calibration/make_eval_tasks.py",
        "settings": {
            "seed": SEED,
            "ppl_chars": PPL_CHARS,
            "context_chars": CONTEXT_CHARS,
            "continuation_chars": CONTINUATION_CHARS,
            "items": ITEMS,
        },
        "domains": {},
    }
    for domain in args.domains:
        source = HERE / domain / "eval.jsonl"
        docs = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        rng = random.Random(f"{SEED}:{domain}")
        ppl = excerpts(docs)
        rng.shuffle(ppl)
        ppl = ppl[:ITEMS]
        mc = multiple_choice(docs, rng)
        write_jsonl(args.out / f"frankenmoe_{domain}_ppl.jsonl", ppl)
        write_jsonl(args.out / f"frankenmoe_{domain}_mc.jsonl", mc)
        for kind, body in (("ppl", PPL_YAML), ("mc", MC_YAML)):
            (args.out / f"frankenmoe_{domain}_{kind}.yaml").write_text(HEADER.format(domain=domain, kind=kind) + body)
        provenance["domains"][domain] = {
            "source": f"{domain}/eval.jsonl",
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "ppl_excerpts": len(ppl),
            "mc_items": len(mc),
        }
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
