"""Rewrite a checkpoint's tensors under new names into size-bounded shards.

The quantize stage renames GPTQModel's output to the published AWQ Mixtral names
(frankenmoe/quantization/awq_layout.py) this way. Tensors are read one at a time and written
shard by shard, so memory stays near one shard whatever the model size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from frankenmoe.support.jsonio import write_json
from frankenmoe.support.progress import progress

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8, "F64": 8, "I8": 1, "U8": 1, "I16": 2}


@dataclass(frozen=True)
class Piece:
    """One output tensor: where it comes from and how to cut it out."""

    name: str
    source_file: Path
    source_name: str
    index: tuple  # slice of the source tensor; () for the whole tensor
    nbytes: int


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def renamed_pieces(files: list[Path], rename: Callable[[str], str]) -> list[Piece]:
    """Every tensor of `files`, whole, under `rename(name)`."""
    from safetensors import safe_open

    pieces = []
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                pieces.append(Piece(rename(name), file, name, (), _numel(sl.get_shape()) * DTYPE_BYTES[sl.get_dtype()]))
    return sorted(pieces, key=lambda p: natural_key(p.name))


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_shards(pieces: list[Piece], max_bytes: int) -> list[list[Piece]]:
    """Greedy packing in name order; a tensor larger than the limit gets its own shard."""
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for p in pieces:
        if current and size + p.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(p)
        size += p.nbytes
    if current:
        shards.append(current)
    return shards


def write_sharded(
    pieces: list[Piece], out: Path, max_bytes: int, desc: str = "writing shards", transform: Callable | None = None
) -> list[str]:
    """Write `pieces` as safetensors shards (+ index when more than one) into `out`.

    Shard files carry one metadata key (format: pt) and nothing that depends on the
    time or the machine, so the same pieces give the same bytes."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = plan_shards(pieces, max_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    total = 0
    for shard, fname in progress(list(zip(shards, names)), desc=desc):
        tensors: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[Piece]] = {}
        for p in shard:
            by_file.setdefault(p.source_file, []).append(p)
        for file, ps in by_file.items():
            with safe_open(file, framework="pt") as f:
                for p in ps:
                    t = f.get_slice(p.source_name)[p.index] if p.index else f.get_tensor(p.source_name)
                    t = t.contiguous().clone()
                    tensors[p.name] = transform(p.name, t) if transform else t
        save_file(tensors, out / fname, metadata={"format": "pt"})
        os.chmod(out / fname, 0o644)  # safetensors writes 0600; published files are world-readable
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        del tensors
    if len(names) > 1:
        write_json(
            out / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
    return names
