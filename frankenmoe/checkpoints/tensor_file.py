"""A safetensors file written one slice at a time and read back one slice at a time.

evaluate's held-out log-probs are windows x tokens x vocabulary floats: 1 GB at
8,192 tokens and a 32k vocabulary. Written as each window is computed and read back
window by window (memory-mapped), they are never held whole, so verifying a 2x7B
needs one window of them (64 MB), not all. The file is the one safetensors'
`save_file` writes for the same tensors (same header, same order, same bytes), so
any safetensors reader opens it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

DTYPES = {"F32": 4, "I64": 8}


class TensorFileWriter:
    """Declare every tensor's dtype and shape up front; `write(name, part)` then
    appends the next rows of that tensor, in any interleaving. `close` refuses a
    file with a tensor not fully written (the caller writes into a stage's temporary
    folder, so a refused file is never published)."""

    def __init__(self, path: Path, specs: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str]):
        # safetensors' own order: larger dtypes first, then by name
        order = sorted(specs, key=lambda n: (-DTYPES[specs[n][0]], n))
        header: dict = {"__metadata__": metadata}
        self._start, self._end, offset = {}, {}, 0
        for name in order:
            dtype, shape = specs[name]
            size = DTYPES[dtype]
            for dim in shape:
                size *= dim
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._start[name], self._end[name] = offset, offset + size
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._base = 8 + len(raw)
        self._written = dict.fromkeys(order, 0)
        self._file: BinaryIO = open(path, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._file.truncate(self._base + offset)

    def write(self, name: str, part) -> None:
        data = part.contiguous().numpy().tobytes()
        at = self._start[name] + self._written[name]
        if at + len(data) > self._end[name]:
            raise ValueError(f"{name}: more data than its declared shape")
        self._file.seek(self._base + at)
        self._file.write(data)
        self._written[name] += len(data)

    def close(self) -> None:
        self._file.close()
        short = [n for n, w in self._written.items() if w != self._end[n] - self._start[n]]
        if short:
            raise ValueError(f"tensor file incomplete: {', '.join(short)} not fully written")

    def __enter__(self) -> TensorFileWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()


class Rows:
    """A stored tensor's rows, read one at a time from the memory-mapped file:
    `rows[i]` is the tensor's i-th slice along its first dimension."""

    def __init__(self, handle, name: str):
        self._slice = handle.get_slice(name)

    def __len__(self) -> int:
        return self._slice.get_shape()[0]

    def __getitem__(self, i: int):
        return self._slice[i]
