"""How far the quantize stage is from the matmul limit.

Runs a finished quantize stage's own engine spec (its engine-spec.json and
calibration windows) once more, and profiles one decoder layer of it with torch's
profiler (every thread: GPTQModel works in a thread pool), which counts the
floating-point operations of every matrix product and the time spent in them.
One layer, because the profiler keeps every event (all 30 layers of the real
example took more than 24 GiB), and the layers of a model are alike. It then
measures this machine's matmul rate on one large product in float32 and
bfloat16. The limit is the time a layer's matrix products would take at that
rate; the stage's own time per layer comes from its engine.log (unprofiled).

Usage: python -m bench.matmul_limit QUANTIZE_FOLDER --work DIR [--layer N]   (prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from frankenmoe.quantization.awq_engine import engine_env

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def matmul_rate(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n product in `dtype_name` on this machine (best of `repeats`)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def profile_layer(quantize_folder: Path, work: Path, layer: int) -> dict:
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

    from frankenmoe.quantization import awq_engine

    spec = json.loads((quantize_folder / "engine-spec.json").read_text())
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        **spec,
        "windows": str((quantize_folder / "calibration-windows.json").resolve()),
        "out": str(work / "engine"),
    }
    spec_file = work / "engine-spec.json"
    spec_file.write_text(json.dumps(spec, sort_keys=True))
    os.chdir(work)  # GPTQModel writes its logs/ into the working folder
    prof = profile(
        activities=[ProfilerActivity.CPU],
        with_flops=True,
        experimental_config=_ExperimentalConfig(profile_all_threads=True),
    )
    span: dict[str, float] = {}

    class ProfileOneLayer(awq_engine.LayerProgress):
        """Starts the profiler when layer - 1 is done and stops it when `layer` is."""

        def layer_complete(self, *, layer_idx, submodule_finalized: bool = False):
            first = isinstance(layer_idx, int) and layer_idx not in self.seen and not submodule_finalized
            super().layer_complete(layer_idx=layer_idx, submodule_finalized=submodule_finalized)
            if first and layer_idx == layer - 1:
                prof.start()
                span["start"] = time.monotonic()
            elif first and layer_idx == layer and "start" in span:
                prof.stop()
                span["wall"] = time.monotonic() - span["start"]

    awq_engine.LayerProgress = ProfileOneLayer
    awq_engine.main(str(spec_file))
    events = prof.key_averages()
    matmul = [e for e in events if e.key in MATMULS]
    flops = sum(e.flops for e in matmul)
    rates = {d: matmul_rate(d) for d in ("float32", "bfloat16")}
    done = re.search(r"AWQ done: layers ([0-9.]+) s", (quantize_folder / "engine.log").read_text(errors="replace"))
    layers = json.loads((Path(spec["model"]) / "config.json").read_text())["num_hidden_layers"]
    per_layer = float(done.group(1)) / layers if done else None
    return {
        "compute_dtype": spec.get("compute_dtype") or "float32",
        "layer": layer,
        "layer_profiled_wall_s": round(span["wall"], 2),
        "layer_unprofiled_s": round(per_layer, 2) if per_layer else None,
        "matmul_gflop": round(flops / 1e9, 1),
        "matmul_calls": sum(e.count for e in matmul),
        "matmul_self_s": round(sum(e.self_cpu_time_total for e in matmul) / 1e6, 2),
        "rate_gflops": {d: round(r / 1e9, 1) for d, r in rates.items()},
        "limit_s": {d: round(flops / r, 3) for d, r in rates.items()},
        "times_the_limit": {d: round(per_layer / (flops / r), 1) for d, r in rates.items()} if per_layer else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("quantize_folder", type=Path)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--layer", type=int, default=10)
    args = p.parse_args()
    if "GPTQMODEL_CPU_WORKERS" not in os.environ:  # the engine's environment, set before the process starts
        env = engine_env(dict(os.environ))
        os.execve(sys.executable, [sys.executable, "-m", "bench.matmul_limit", *sys.argv[1:]], env)
    print(json.dumps(profile_layer(args.quantize_folder, args.work, args.layer)))


if __name__ == "__main__":
    main()
