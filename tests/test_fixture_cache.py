"""The shared fixtures cache: a clean clone copies the trained models, never stale ones."""

from __future__ import annotations

import ast
import hashlib
import json

from frankenmoe.example.catalog import ensure_tiny as ensure_fixtures
from frankenmoe.example.tiny import FixtureSettings, fixtures_key
from frankenmoe.example.training import CODE_VERSIONS
from tests.conftest import REPO


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


class _WithoutImports(ast.NodeTransformer):
    def visit_Import(self, node):
        return None

    visit_ImportFrom = visit_Import

    def visit_Expr(self, node):  # a docstring
        return None if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) else node


def code_without_imports(module: str) -> str:
    """sha256 of a module's syntax tree without imports and docstrings: what its code
    does, whatever the package's name or where the names it uses are imported from."""
    path = REPO / "frankenmoe" / "example" / f"{module}.py"
    tree = _WithoutImports().visit(ast.parse(path.read_text()))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


# The code each declared version stands for (training.CODE_VERSIONS), imports and docstrings aside.
CODE = {
    "training": "06423f8f92243e2de89100725e1a39a73a7ff60883a368d4f9574393ceeddeea",
    "tiny": "ef6d40a537e8cb0b4f55c537fd1989d0ae5a6a1375bf0203f47033b69290317c",
    "smollm2": "da254695d0dc92b006e618d703916ed370dd498c25880d419f6b8e7de9495119",
}


def test_the_example_code_has_the_version_its_models_are_cached_under():
    """Change the training code and this fails until CODE_VERSIONS gets a new value for
    that module (the examples are then trained again) and CODE records its new code."""
    for module, recorded in CODE.items():
        assert code_without_imports(module) == recorded, (
            f"frankenmoe/example/{module}.py changed: give it a new value in training.CODE_VERSIONS "
            f"and record {code_without_imports(module)} here"
        )
    assert set(CODE_VERSIONS) == set(CODE)


def test_making_an_example_says_so_and_what_it_cost(tmp_path, monkeypatch):
    """Examples are kept per machine; one made here (minutes to tens of minutes) is
    announced before and timed after, so the cost of getting it again is on record."""
    from frankenmoe.example.store import ensure

    monkeypatch.setenv("FRANKENMOE_FIXTURES_CACHE", str(tmp_path / "cache"))

    def make(folder):
        folder.mkdir()
        (folder / "fixtures.json").write_text(json.dumps({"key": "k"}))

    said = []
    ensure(tmp_path / "fixtures" / "ex", "k", make, said.append)
    assert said[0] == f"fixtures: making ex: not cached on this machine (kept in {tmp_path / 'cache'} once made)"
    assert said[1].startswith("fixtures: made ex in ") and said[1].endswith(" s")
    assert said[2] == f"fixtures: kept in {tmp_path / 'cache' / 'k'} for other clones"
