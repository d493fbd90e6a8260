"""bench/synthetic.py: the scale benchmark's model families are complete Mistral
folders, the same bytes every time, sized as `family_bytes` says, and share
their non-MLP shards by hard link."""

from __future__ import annotations

import pytest

from bench import synthetic
from frankenmoe.checkpoints.streaming import StreamingLM

TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
}


@pytest.fixture
def tiny_shape(monkeypatch):
    monkeypatch.setitem(synthetic.SHAPES, "tiny", TINY)
    return "tiny"


def test_family_is_complete_deterministic_and_shared(tiny_shape, fixture_models, tmp_path):
    a = synthetic.make_family(tmp_path / "a", tiny_shape, fixture_models / "base", log=lambda _: None)
    b = synthetic.make_family(tmp_path / "b", tiny_shape, fixture_models / "base", log=lambda _: None)
    assert sorted(a) == ["base", "expert-0", "expert-1"]
    for name, folder in a.items():
        assert StreamingLM(folder).check() == []
        for f in folder.glob("*.safetensors"):
            assert f.read_bytes() == (b[name] / f.name).read_bytes()
    shared = a["base"] / "attn-000.safetensors"
    assert shared.stat().st_ino == (a["expert-1"] / "attn-000.safetensors").stat().st_ino
    assert (a["base"] / "mlp-e0-000.safetensors").stat().st_ino == (
        a["expert-0"] / "mlp-e0-000.safetensors"
    ).stat().st_ino
    assert (a["expert-0"] / "mlp-e0-001.safetensors").read_bytes() != (
        a["expert-1"] / "mlp-e1-001.safetensors"
    ).read_bytes()
    blobs = sum(f.stat().st_size for f in (tmp_path / "a" / ".blobs").iterdir())
    sizes = synthetic.family_bytes(tiny_shape)
    assert 0 < blobs - sizes["inputs"] < 4096 * len(list((tmp_path / "a" / ".blobs").iterdir()))  # headers only
