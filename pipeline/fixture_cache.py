"""A cache of the trained example models shared by every clone on a machine.

The fixtures' bytes depend only on their key (pipeline/fixtures.py), so a clean
clone, CI's included, copies them from here instead of training for minutes.
FRANKENMOE_FIXTURES_CACHE moves it (default ~/.cache/frankenmoe/fixtures); an
empty value turns it off. (Kept out of fixtures.py: that file is part of the key.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.fixtures import FixtureSettings, ensure_fixtures as train_fixtures, fixtures_key


def shared_cache() -> Path | None:
    value = os.environ.get("FRANKENMOE_FIXTURES_CACHE")
    if value is not None:
        return Path(value) if value else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "frankenmoe" / "fixtures"


def _has_key(folder: Path, key: str) -> bool:
    stamp = folder / "fixtures.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("key") == key


def ensure_fixtures(out: Path, settings: FixtureSettings = FixtureSettings(), log=print) -> Path:
    """`out/{base,expert-code,expert-prose}` for the current key: as they are, copied
    from the shared cache, or trained (and then kept in the cache)."""
    key, cache = fixtures_key(settings), shared_cache()
    if not _has_key(out, key) and cache is not None and _has_key(cache / key, key):
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(cache / key, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log(f"fixtures: copied from {cache / key}")
        return out
    train_fixtures(out, settings, log)
    if cache is not None and not _has_key(cache / key, key):
        tmp = cache / f".{key}.tmp-{os.getpid()}"
        try:
            shutil.copytree(out, tmp)
            tmp.rename(cache / key)
            log(f"fixtures: kept in {cache / key} for other clones")
        except OSError:  # a read-only or full home only costs the next clone a retraining
            shutil.rmtree(tmp, ignore_errors=True)
    return out
