"""GGUF: the stage's time next to llama.cpp's tools run by hand, and what the same
path does to the dense base (the ground for the gguf limits' small tier).

By hand means what a user types: the converter on the merged folder, then the
quantizer once per type, nothing else. The stage also has llama.cpp evaluate every
file on the held-out windows; that part is reported separately.

Usage (after a build of the recipe): python -m bench.gguf RECIPE [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from frankenmoe.engine.build import default_layout, finished_results
from frankenmoe.measure.documents import HeldOutWindows
from frankenmoe.measure.verdict import named
from frankenmoe.quantization.llama_cpp import convert, parity, quantize
from frankenmoe.recipe import load_recipe
from frankenmoe.stages import STAGES
from frankenmoe.stages.evaluate import reference_dir
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.gguf import parity_name
from frankenmoe.stages.resolve import model_paths
from frankenmoe.support.determinism import THREADS


def by_hand(model: Path, name: str, types: list[str], work: Path) -> tuple[dict[str, Path], dict[str, float]]:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    full = work / f"{name}-F16.gguf"
    convert(model, full, work / "convert.log", "f16", name)
    times = {"convert_s": round(time.monotonic() - t0, 1)}
    files = {}
    for t in types:
        t1 = time.monotonic()
        files[t] = work / f"{name}-{t}.gguf"
        quantize(full, files[t], t, THREADS, work / f"quantize-{t}.log")
        times[f"quantize_{t}_s"] = round(time.monotonic() - t1, 1)
    times["total_s"] = round(time.monotonic() - t0, 1)
    return files, times


def dense_reference(base: Path, evaluate: Path, out: Path) -> Path:
    """The 16-bit dense base's log-probs on evaluate's windows, in evaluate's format."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from frankenmoe.checkpoints.streaming import StreamingLM

    ref = HeldOutWindows.read(evaluate / "reference.json")
    with safe_open(evaluate / "reference.safetensors", framework="pt") as st:
        tokens = st.get_tensor("tokens")
    lm = StreamingLM(base)
    logprobs = [lp for lp, _ in lm.run([ids[:-1] for ids in tokens.tolist()], desc="bench: 16-bit dense base")]
    out.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": tokens, "logprobs": torch.stack(logprobs).contiguous()}, out / "reference.safetensors")
    HeldOutWindows(domains=ref.domains, seq_len=ref.seq_len).write(out / "reference.json")
    return out


def gguf_bench(recipe_file: Path, work: Path, build_root: Path | None = None, log=print) -> dict:
    recipe = load_recipe(recipe_file)
    done = finished_results(recipe, default_layout(recipe, build_root=build_root), STAGES, ["gguf"])
    stage = done["gguf"].record
    shutil.rmtree(work, ignore_errors=True)
    types = recipe.gguf.types
    log("bench: llama.cpp's converter and quantizer by hand on the merged model")
    _, hand = by_hand(routed_model(done["gates"]), recipe.name, types, work / "moe")
    log("bench: the same path on the dense base, against the 16-bit base")
    base = model_paths(done["resolve"])["base"]
    files, _ = by_hand(base, "base", types, work / "base")
    reference = dense_reference(base, reference_dir(done["evaluate"]), work / "base-reference")
    dense = {}
    for t, f in files.items():
        p = parity(f, reference, base, THREADS, work / f"parity-base-{t}.log")["parity"]
        dense[t] = {k: p[k] for k in ("kl_mean", "kl_p99", "top1_agreement", "perplexity_ratio")}
    moe_report = json.loads((done["gguf"].path / "gguf" / "verify.json").read_text())
    keys = ("kl_mean", "kl_p99", "top1_agreement", "perplexity_ratio")
    moe = {t: {k: named(moe_report, parity_name(t))[k] for k in keys} for t in types}
    parts = stage["result"]["wall_s"]
    made = parts["convert"] + parts["quantize"]
    result = {
        "stage_s": stage["wall_s"],
        "stage_parts_s": parts,
        "by_hand": hand,
        "files_vs_by_hand": round(made / hand["total_s"], 2),
        "stage_vs_by_hand": round(stage["wall_s"] / hand["total_s"], 2),
        "moe": moe,
        "dense_base": dense,
        "moe_vs_dense_kl": {t: round(moe[t]["kl_mean"] / dense[t]["kl_mean"], 2) for t in types},
    }
    (work / "gguf-bench.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--work", type=Path, default=Path("build/.bench-gguf"))
    ap.add_argument("--build-root", type=Path)
    args = ap.parse_args()
    print(json.dumps(gguf_bench(args.recipe, args.work, args.build_root), indent=2))


if __name__ == "__main__":
    main()
