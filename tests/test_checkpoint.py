"""Renamed tensors are written whole, and sharding respects the limit."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from frankenmoe.checkpoints.writing import plan_shards, renamed_pieces, write_sharded


def test_renamed_and_sharded_within_the_limit(tmp_path):
    tensors = {f"t{i}": torch.randn(4, 4).half() for i in range(6)}
    save_file(tensors, tmp_path / "in.safetensors")
    pieces = renamed_pieces([tmp_path / "in.safetensors"], lambda n: f"model.{n}")
    out = tmp_path / "out"
    out.mkdir()
    names = write_sharded(pieces, out, max_bytes=100)
    assert len(names) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got = {}
    for fname in names:
        assert (out / fname).stat().st_size < 100 + 1024  # data within the limit, plus the header
        with safe_open(out / fname, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            got.update({k: f.get_tensor(k) for k in f.keys()})
    assert set(index["weight_map"]) == set(got) == {f"model.{n}" for n in tensors}
    assert all(torch.equal(got[f"model.{n}"], t) for n, t in tensors.items())


def test_single_shard_has_no_index(tmp_path):
    save_file({"a": torch.zeros(4)}, tmp_path / "in.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    assert write_sharded(renamed_pieces([tmp_path / "in.safetensors"], str), out, max_bytes=10**9) == [
        "model.safetensors"
    ]
    assert not (out / "model.safetensors.index.json").exists()


def test_oversized_tensor_gets_its_own_shard(tmp_path):
    save_file({"a": torch.zeros(100), "b": torch.zeros(1), "c": torch.zeros(1)}, tmp_path / "in.safetensors")
    shards = plan_shards(renamed_pieces([tmp_path / "in.safetensors"], str), max_bytes=16)
    assert [[p.name for p in s] for s in shards] == [["a"], ["b", "c"]]
