"""Where example models live, and a cache of them shared by every clone on a machine.

An example's bytes depend only on its key (a hash of everything that shapes them),
so a clean clone, CI's included, copies them from the shared cache instead of
training for minutes. FRANKENMOE_FIXTURES_CACHE moves that cache (default
~/.cache/frankenmoe/fixtures); an empty value turns it off.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from frankenmoe.support.owned import foreign_entries, refusal
from frankenmoe.support.settings import fixtures_cache

STAMP = "fixtures.json"


def shared_cache() -> Path | None:
    return fixtures_cache()


def has_key(folder: Path, key: str) -> bool:
    stamp = folder / STAMP
    try:
        return json.loads(stamp.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def ensure(out: Path, key: str, make: Callable[[Path], None], log: Callable[[str], None]) -> Path:
    """`out` holding the models for `key`: as they are, copied from the shared cache,
    or made by `make(tmp)` (which writes the models and a STAMP with the key) into a
    temporary folder renamed into place, so a killed run leaves nothing half-made."""
    if has_key(out, key):
        log(f"fixtures: cached ({out})")
        return out
    if out.is_dir() and not (out / STAMP).is_file() and (foreign := foreign_entries(out, set())):
        raise refusal("fixtures:", out, foreign, f"are not example models (no {STAMP})")
    cache = shared_cache()
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(out.parent, f".{out.name}.tmp-")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if cache is not None and has_key(cache / key, key):
        shutil.copytree(cache / key, tmp)
        log(f"fixtures: copied from {cache / key}")
    else:
        where = f"kept in {cache} once made" if cache is not None else "the shared cache is off"
        log(f"fixtures: making {out.name}: not cached on this machine ({where})")
        t0 = time.monotonic()
        make(tmp)
        log(f"fixtures: made {out.name} in {time.monotonic() - t0:.0f} s")
        if not has_key(tmp, key):
            raise RuntimeError(f"fixtures: {tmp} was made without its key stamp")  # a bug in `make`
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        shutil.rmtree(old)
    tmp.rename(out)
    if cache is not None and not has_key(cache / key, key):
        _clear_leftovers(cache, f".{key}.tmp-")
        keep = cache / f".{key}.tmp-{os.getpid()}"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copytree(out, keep)
            keep.rename(cache / key)
            log(f"fixtures: kept in {cache / key} for other clones")
        except OSError:  # a read-only or full home only costs the next clone a retraining
            shutil.rmtree(keep, ignore_errors=True)
    return out


def _clear_leftovers(folder: Path, prefix: str) -> None:
    """Temporary folders of killed runs (their process is gone); a live one is left alone."""
    if not folder.is_dir():
        return
    for leftover in folder.glob(prefix + "*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(leftover, ignore_errors=True)
