"""The examples' models, each in its own folder under fixtures/, made or copied on demand.

- `tiny`: a 4-layer Mistral and two MLP-only experts trained from scratch on the
  shipped corpora (frankenmoe/example/tiny.py): fast tests;
- `smollm2`: SmolLM2-135M-Instruct from PyPI and MLP-only fine-tunes of it
  (frankenmoe/example/smollm2.py): the real example;
- `smollm2-docs`, `smollm2-source`: the same base with three experts each on Debian
  text (calibration/make_debian_corpora.py), for recipes the router fit was not
  tuned on; made only when asked for (`frankenmoe fixtures --only NAME`), not by
  `make fixtures`.

Each is keyed by a hash of its inputs and shared between clones through the cache
in frankenmoe/example/store.py. (Kept out of tiny.py and smollm2.py: those files are part of
tiny models' key.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from frankenmoe.example.smollm2 import Settings, ensure_smollm2
from frankenmoe.example.store import ensure
from frankenmoe.example.tiny import FixtureSettings, fixtures_key, make_tiny

EXAMPLES = ("tiny", "smollm2")  # what `frankenmoe fixtures` makes by default
DOMAIN_SETS = {
    "smollm2-docs": ("licenses", "manpages", "changelogs"),
    "smollm2-source": ("c-headers", "perl", "shell"),
}


def ensure_tiny(out: Path, settings: FixtureSettings = FixtureSettings(), log: Callable[[str], None] = print) -> Path:
    """`out/{base,expert-code,expert-prose}`: the tiny models for the current key."""
    return ensure(out, fixtures_key(settings), lambda tmp: make_tiny(tmp, settings, log), log)


def ensure_example(name: str, root: Path, log: Callable[[str], None] = print) -> Path:
    """`root/<name>` holding the named example's models."""
    if name == "tiny":
        return ensure_tiny(root / name, log=log)

    if name in DOMAIN_SETS:
        return ensure_smollm2(root / name, Settings(domains=DOMAIN_SETS[name]), log=log)
    return ensure_smollm2(root / name, log=log)
