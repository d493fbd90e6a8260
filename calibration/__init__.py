"""The shipped corpora, installed as package data `frankenmoe.shipped` (see frankenmoe/support/paths.py).

Each domain folder holds train.jsonl (the example's fine-tuning text),
calibration.jsonl (default quantization and router-fit text) and eval.jsonl
(default held-out verification text). Provenance and licenses: README.md.
"""
