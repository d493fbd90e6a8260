"""The slice-by-slice safetensors writer (frankenmoe/checkpoints/tensor_file.py): the
same bytes as safetensors' own save_file, rows read back one at a time, and no
incomplete file passed off as whole."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from frankenmoe.checkpoints.tensor_file import Rows, TensorFileWriter


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tokens": torch.randint(0, 100, (3, 6), generator=g),
        "logprobs": torch.randn(3, 5, 11, generator=g),
        "router": torch.rand(2, 15, 4, generator=g),
    }


def specs(t: dict[str, torch.Tensor]) -> dict:
    return {k: ({torch.int64: "I64", torch.float32: "F32"}[v.dtype], tuple(v.shape)) for k, v in t.items()}


def test_streamed_file_has_save_files_bytes(tmp_path):
    t = tensors()
    save_file(t, tmp_path / "whole.safetensors", metadata={"format": "pt"})
    with TensorFileWriter(tmp_path / "streamed.safetensors", specs(t), {"format": "pt"}) as out:
        for w in range(3):  # interleaved, as evaluate writes them
            out.write("logprobs", t["logprobs"][w])
            if w == 0:
                out.write("tokens", t["tokens"])
        out.write("router", t["router"])
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()

    with safe_open(tmp_path / "streamed.safetensors", framework="pt") as st:
        rows = Rows(st, "logprobs")
        assert len(rows) == 3
        assert all(torch.equal(rows[w], t["logprobs"][w]) for w in range(3))


def test_incomplete_or_overlong_tensor_is_refused(tmp_path):
    t = tensors()
    out = TensorFileWriter(tmp_path / "x.safetensors", specs(t), {"format": "pt"})
    out.write("tokens", t["tokens"])
    out.write("router", t["router"])
    out.write("logprobs", t["logprobs"][0])
    with pytest.raises(ValueError, match="router: more data"):
        out.write("router", t["router"][:1])  # more than declared
    with pytest.raises(ValueError, match="incomplete: logprobs"):
        out.close()
