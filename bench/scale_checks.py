"""The structural and forced-routing checks of `verify`, and its 16-bit reference
pass, on a merged MoE in one process, so `make bench` gets their peak RSS.

Everything streams (frankenmoe/checkpoints/streaming.py): one tensor, or one decoder layer, in
memory at a time. Prints one JSON line.
Usage: scale_checks.py MERGED BASE EXPERT [EXPERT ...] --windows N --seq T [--reference]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.measure.evaluation import forced_routing_parity, merge_structure


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("merged", type=Path)
    p.add_argument("base", type=Path)
    p.add_argument("experts", type=Path, nargs="+")
    p.add_argument("--windows", type=int, default=1)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--reference", action="store_true", help="also time the 16-bit reference pass")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = {}
    t0 = time.monotonic()
    s = merge_structure(args.merged, args.base, args.experts)
    out["structure"] = {
        "tensors_checked": s["tensors_checked"],
        "mismatches": len(s["mismatches"]),
        "seconds": round(time.monotonic() - t0, 1),
    }
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 2000, (args.windows, args.seq + 1), generator=g).tolist()
    windows = [("synthetic", w) for w in ids]
    t0 = time.monotonic()
    moe = StreamingLM(args.merged)
    forced = forced_routing_parity(moe, [StreamingLM(e) for e in args.experts], windows)
    out["forced_routing"] = {
        "max_abs": [f["max_abs"] for f in forced],
        "tokens": args.windows * args.seq,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if args.reference:
        t0 = time.monotonic()
        n = sum(1 for _ in moe.run([w[:-1] for _, w in windows], desc="bench: 16-bit reference pass"))
        seconds = time.monotonic() - t0
        out["reference_pass"] = {
            "windows": n,
            "tokens": args.windows * args.seq,
            "seconds": round(seconds, 1),
            "tokens_per_s": round(args.windows * args.seq / seconds, 1),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
