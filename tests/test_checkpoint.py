"""The fused -> classic Mixtral rewrite is exact, and sharding respects the limit."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.checkpoint import mixtral_pieces, plan_shards, write_sharded


def test_split_is_exact_and_sharded(tmp_path):
    E, I, H = 3, 8, 4
    gate_up = torch.randn(E, 2 * I, H).half()
    down = torch.randn(E, H, I).half()
    router = torch.randn(E, H).half()
    save_file({
        "model.layers.0.mlp.experts.gate_up_proj": gate_up,
        "model.layers.0.mlp.experts.down_proj": down,
        "model.layers.0.mlp.gate.weight": router,
        "model.embed_tokens.weight": torch.randn(10, H).half(),
    }, tmp_path / "in.safetensors")
    pieces = mixtral_pieces([tmp_path / "in.safetensors"])
    out = tmp_path / "out"
    out.mkdir()
    names = write_sharded(pieces, out, max_bytes=200)
    assert len(names) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    got = {}
    for fname in names:
        assert (out / fname).stat().st_size < 200 + 1024  # data within the limit, plus the header
        with safe_open(out / fname, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            got.update({k: f.get_tensor(k) for k in f.keys()})
    assert set(index["weight_map"]) == set(got)
    p = "model.layers.0.block_sparse_moe"
    for e in range(E):
        assert torch.equal(got[f"{p}.experts.{e}.w1.weight"], gate_up[e, :I])
        assert torch.equal(got[f"{p}.experts.{e}.w3.weight"], gate_up[e, I:])
        assert torch.equal(got[f"{p}.experts.{e}.w2.weight"], down[e])
    assert torch.equal(got[f"{p}.gate.weight"], router)
    assert not any(".mlp." in k for k in got)


def test_single_shard_has_no_index(tmp_path):
    save_file({"a": torch.zeros(4)}, tmp_path / "in.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    assert write_sharded(mixtral_pieces([tmp_path / "in.safetensors"]), out, max_bytes=10**9) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()


def test_oversized_tensor_gets_its_own_shard(tmp_path):
    save_file({"a": torch.zeros(100), "b": torch.zeros(1), "c": torch.zeros(1)}, tmp_path / "in.safetensors")
    shards = plan_shards(mixtral_pieces([tmp_path / "in.safetensors"]), max_bytes=16)
    assert [[p.name for p in s] for s in shards] == [["a"], ["b", "c"]]
