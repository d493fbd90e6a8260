"""The shared fixtures cache: a clean clone copies the trained models, never stale ones."""

from __future__ import annotations

import json

from frankenmoe.example.catalog import ensure_tiny as ensure_fixtures
from frankenmoe.example.tiny import FixtureSettings, fixtures_key


def test_clean_clone_copies_from_the_cache_and_ignores_other_keys(tmp_path, monkeypatch):
    key = fixtures_key(FixtureSettings())
    cache = tmp_path / "cache"
    (cache / key / "base").mkdir(parents=True)
    (cache / key / "base" / "model.safetensors").write_bytes(b"weights")
    (cache / key / "fixtures.json").write_text(json.dumps({"key": key}))
    (cache / "0123456789abcdef").mkdir()  # another key: never used
    monkeypatch.setenv("FRANKENMOE_FIXTURES_CACHE", str(cache))
    said = []
    out = ensure_fixtures(tmp_path / "clone" / "fixtures", log=said.append)
    assert (out / "base" / "model.safetensors").read_bytes() == b"weights"
    assert said == [f"fixtures: copied from {cache / key}"]
    assert not list((tmp_path / "clone").glob(".fixtures.tmp-*"))
    said.clear()
    ensure_fixtures(out, log=said.append)  # now up to date in place
    assert said == [f"fixtures: cached ({out})"]
