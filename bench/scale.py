"""`make bench`, scale part: the pipeline on model families users really merge.

For each synthetic family (bench/synthetic.py: "7b" = Mistral-7B's shapes, "1b" =
about 1 B parameters per expert):
- the physical reference, in the same run: reading the bytes the merge reads
  once (`cat` to /dev/null) and writing the bytes it writes once (`dd`);
- `frankenmoe build --until merge` (lock, resolve, merge): wall time and peak
  RSS of the process and its children; then a no-op rebuild;
- the structural and forced-routing parts of `verify`, streamed, in their own
  process (bench/scale_checks.py); on the smaller family also the 16-bit
  reference pass that `evaluate` and `verify` make, in tokens per second.
The page cache is dropped before each timed step where the machine allows it, so
no step reads what an earlier one left in memory. A family that does not fit on
the disk is skipped with a message; everything made is removed afterwards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.measure import BIN, REPO, build_env, measure
from bench.synthetic import SHAPES, family_bytes, make_family
from frankenmoe.measure.documents import Reference

GiB = 2**30
MARGIN = 2 * GiB
# Per family: the check windows (count x tokens), whether to time the reference
# pass, and whether it may be quantized (with --quantize-synthetic: GPTQModel's
# AWQ of the 2x1B took 61 min on 2 CPU cores, about 2.5 min per layer of 22).
CHECKS = {"7b": (1, 64, False, False), "1b": (4, 256, True, True)}
CALIBRATION = {"samples": 4, "seq_len": 128}
QUANTIZE_TIMEOUT_S = 3 * 3600


def drop_caches() -> bool:
    """Empty the page cache (root only); False where the machine does not allow it."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def byte_copy(inputs: list[Path], out_bytes: int, scratch: Path) -> dict:
    """Seconds to read `inputs` once (each inode once) and to write `out_bytes`."""
    seen, files = set(), []
    for f in inputs:
        st = f.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(f)
    t0 = time.monotonic()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    read_s = time.monotonic() - t0
    block = 64 << 20
    t0 = time.monotonic()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={scratch}", f"bs={block}", f"count={math.ceil(out_bytes / block)}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    write_s = time.monotonic() - t0
    scratch.unlink()
    return {
        "read_s": round(read_s, 1),
        "write_s": round(write_s, 1),
        "total_s": round(read_s + write_s, 1),
        "read_bytes": sum(f.stat().st_size for f in files),
        "write_bytes": out_bytes,
    }


def recipe_for(folders: dict[str, Path], name: str, at: Path, verify: dict | None = None) -> Path:
    """A plain recipe over the family; `cheap_embed` gates read only the embeddings
    (mergekit's `hidden` mode loads the whole base model, whatever the pipeline does)."""
    experts = [k for k in folders if k.startswith("expert-")]
    data = {
        "name": name,
        "base_model": str(folders["base"]),
        "gate_mode": "cheap_embed",
        "dtype": "float16",
        "experts_per_token": 2,
        "experts": [
            {"source_model": str(folders[e]), "positive_prompts": [f"prompt for {e}", f"another prompt for {e}"]}
            for e in experts
        ],
        "merge": {"seed": 0, "shard_size": "2GB"},
        "quantize": {"group_size": 128, "calibration": CALIBRATION, "shard_size": "2GB"},
        **({"verify": verify} if verify else {}),
    }
    at.write_text(yaml.safe_dump(data, sort_keys=False))
    return at


def run_family(shape: str, work: Path, quantize: bool = False, log=print) -> dict:
    sizes = family_bytes(shape)
    free = shutil.disk_usage(work).free
    need = sizes["inputs"] + sizes["moe"] + MARGIN
    row = {
        "shape": shape,
        "params_per_expert_b": round(sizes["params_per_expert"] / 1e9, 2),
        "moe_gb": round(sizes["moe"] / 1e9, 1),
        **{k: v for k, v in SHAPES[shape].items()},
    }
    if free < need:
        row["skipped"] = (
            f"needs {need / GiB:.0f} GiB free in {work} (inputs {sizes['inputs'] / GiB:.0f} + "
            f"merged {sizes['moe'] / GiB:.0f} + margin), has {free / GiB:.0f} GiB"
        )
        log(f"bench: {shape}: skipped, {row['skipped']}")
        return row
    root = _fresh(work / f"scale-{shape}")
    try:
        t0 = time.monotonic()
        folders = make_family(root / "models", shape, REPO / "fixtures" / "tiny" / "base", log=log)
        row["generate_s"] = round(time.monotonic() - t0, 1)
        inputs = sorted(p for f in folders.values() for p in f.glob("*.safetensors"))
        row["page_cache_dropped"] = drop_caches()
        row["byte_copy"] = byte_copy(inputs, sizes["moe"], root / "byte-copy.bin")
        recipe = recipe_for(folders, f"synthetic-{shape}", root / f"synthetic-{shape}.yaml")
        env = build_env(root)
        drop_caches()
        log(f"bench: {shape}: frankenmoe build --until merge")
        m = measure([str(BIN / "frankenmoe"), "build", str(recipe), "--until", "merge"], env)
        row["build_until_merge"] = {
            "wall_s": m["wall_s"],
            "peak_rss_mb": m["peak_rss_mb"],
            "stages_s": _stage_times(m["out"]),
        }
        row["merge_vs_byte_copy"] = round(
            row["build_until_merge"]["stages_s"]["merge"] / row["byte_copy"]["total_s"], 2
        )
        row["build_until_merge_vs_byte_copy"] = round(m["wall_s"] / row["byte_copy"]["total_s"], 2)
        row["noop_rebuild_s"] = measure([str(BIN / "frankenmoe"), "build", str(recipe), "--until", "merge"], env)[
            "wall_s"
        ]
        merged = Path(_ran_path("merge", m["out"])) / "model"
        windows, seq, reference, may_quantize = CHECKS[shape]
        drop_caches()
        log(f"bench: {shape}: streamed checks")
        c = measure(
            [
                sys.executable,
                "-m",
                "bench.scale_checks",
                str(merged),
                str(folders["base"]),
                *(str(folders[e]) for e in folders if e.startswith("expert-")),
                "--windows",
                str(windows),
                "--seq",
                str(seq),
                *(["--reference"] if reference else []),
            ]
        )
        row["checks"] = {
            **json.loads(c["out"].strip().splitlines()[-1]),
            "wall_s": c["wall_s"],
            "peak_rss_mb": c["peak_rss_mb"],
        }
        if quantize and may_quantize:
            log(
                f"bench: {shape}: frankenmoe build --until quantize ({CALIBRATION['samples']} x "
                f"{CALIBRATION['seq_len']} tokens)"
            )
            q = measure(
                [str(BIN / "frankenmoe"), "build", str(recipe), "--until", "quantize"], env, timeout=QUANTIZE_TIMEOUT_S
            )
            row["quantize"] = (
                {"timed_out_s": QUANTIZE_TIMEOUT_S}
                if q.get("timed_out")
                else {
                    "stage_s": _stage_times(q["out"])["quantize"],
                    "wall_s": q["wall_s"],
                    "peak_rss_mb": q["peak_rss_mb"],
                    "calibration": CALIBRATION,
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return row


# Random weights give no meaningful quality figures: the thresholds are opened so
# verify measures and reports without failing the build.
OPEN_THRESHOLDS = {
    "max_mean_kl": 1000.0,
    "min_top1_agreement": 0.0,
    "max_ppl_ratio": 1000.0,
    "min_routing_agreement": 0.0,
    "max_router_weight_mae": 10.0,
}


def run_verify_memory(work: Path, log=print) -> dict:
    """`baseline`, `evaluate` and `verify` at their defaults (8,192 held-out tokens)
    on a 2x7B's layers (Mistral-7B shapes, 32k vocabulary), two deep: wall time and
    peak RSS of that one process, quantize done before in its own. Every pass streams
    one decoder layer and the log-probs go to disk window by window, so the peak is
    a 32-layer 2x7B's too (its router weights add layers x tokens x experts floats)."""
    shape = "7b-2l"
    sizes = family_bytes(shape)
    row: dict = {"shape": shape, "layers": SHAPES[shape]["num_hidden_layers"], "vocab": SHAPES[shape]["vocab_size"]}
    need = sizes["inputs"] + 2 * sizes["moe"] + MARGIN
    if shutil.disk_usage(work).free < need:
        row["skipped"] = f"needs {need / GiB:.0f} GiB free in {work}"
        log(f"bench: {shape}: skipped, {row['skipped']}")
        return row
    root = _fresh(work / f"verify-{shape}")
    try:
        folders = make_family(root / "models", shape, REPO / "fixtures" / "tiny" / "base", log=log)
        recipe = recipe_for(folders, f"synthetic-{shape}", root / f"synthetic-{shape}.yaml", verify=OPEN_THRESHOLDS)
        env = build_env(root)
        log(f"bench: {shape}: frankenmoe build --until quantize")
        q = measure([str(BIN / "frankenmoe"), "build", str(recipe), "--until", "quantize"], env)
        row["quantize"] = {"stage_s": _stage_times(q["out"]).get("quantize"), "peak_rss_mb": q["peak_rss_mb"]}
        drop_caches()
        log(f"bench: {shape}: frankenmoe build --until verify")
        m = measure([str(BIN / "frankenmoe"), "build", str(recipe), "--until", "verify"], env)
        reference = Reference.read(next((root / "build" / f"synthetic-{shape}" / "evaluate").glob("*/reference.json")))
        tokens = len(reference.domains) * reference.seq_len
        row.update(
            tokens=tokens,
            logprobs_mb=round(tokens * row["vocab"] * 4 / 2**20),
            wall_s=m["wall_s"],
            peak_rss_mb=m["peak_rss_mb"],
            stages_s={k: v for k, v in _stage_times(m["out"]).items() if k in ("baseline", "evaluate", "verify")},
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return row


def verify_memory_report(row: dict) -> list[str]:
    if "skipped" in row:
        return ["", f"- evaluate and verify at 2x7B shapes: skipped, {row['skipped']}"]
    stages = ", ".join(f"{k} {v} s" for k, v in row["stages_s"].items())
    return [
        "",
        f"Evaluate and verify at the defaults on a 2x7B's layers (Mistral-7B shapes, {row['vocab']} vocabulary, "
        f"{row['layers']} layers deep; every pass streams one layer, so depth adds time, not memory)"
        + (f", measured {row['date']}:" if "date" in row else ":"),
        "",
        f"- {row['tokens']} held-out tokens: `build --until verify` after quantize {row['wall_s']} s ({stages}), "
        f"peak RSS {row['peak_rss_mb']} MB; the log-probs, written and read window by window, would be "
        f"{row['logprobs_mb']} MB whole",
    ]


def _fresh(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def _stage_times(out: str) -> dict:
    return {
        line.split()[0]: float(line.split()[2].rstrip("s")) for line in out.splitlines() if line.split()[1:2] == ["ran"]
    }


def _ran_path(stage: str, out: str) -> str:
    return next(line.split()[-1] for line in out.splitlines() if line.split()[:2] == [stage, "ran"])


def report(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "Scale (synthetic families, random FP16 weights with real shapes; bench/scale.py):",
        "",
        "| family | merged MoE | byte-copy reference (s) | build --until merge (s) | merge stage (s) | merge / "
        "reference | "
        "peak RSS (MB) | no-op rebuild (s) | streamed checks (s) | checks peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        label = f"2x{r['shape'].upper()} ({r['params_per_expert_b']} B per expert)" + (
            f", measured {r['date']}" if "date" in r else ""
        )
        if "skipped" in r:
            notes.append(f"- {label}: skipped, {r['skipped']}")
            continue
        b, c = r["build_until_merge"], r["checks"]
        lines.append(
            f"| {label} | {r['moe_gb']} GB | {r['byte_copy']['total_s']} | {b['wall_s']} | {b['stages_s']['merge']} | "
            f"{r['merge_vs_byte_copy']}x | {b['peak_rss_mb']} | {r['noop_rebuild_s']} | {c['wall_s']} | "
            f"{c['peak_rss_mb']} |"
        )
        notes.append(
            f"- {label}: structure {c['structure']['tensors_checked']} tensors, {c['structure']['mismatches']} "
            "mismatches "
            f"({c['structure']['seconds']} s); forced routing on {c['forced_routing']['tokens']} tokens, largest "
            "difference "
            f"{max(c['forced_routing']['max_abs']):.1e} ({c['forced_routing']['seconds']} s)"
            + (
                f"; 16-bit reference pass {c['reference_pass']['tokens_per_s']} tokens/s over "
                f"{c['reference_pass']['tokens']} tokens"
                if "reference_pass" in c
                else ""
            )
            + (
                f"; quantize stage {r['quantize']['stage_s']} s, peak RSS {r['quantize']['peak_rss_mb']} MB for "
                f"{r['quantize']['calibration']['samples']} windows of {r['quantize']['calibration']['seq_len']} tokens"
                if "stage_s" in r.get("quantize", {})
                else ""
            )
            + (
                f"; quantize did not finish within {r['quantize']['timed_out_s']} s"
                if "timed_out_s" in r.get("quantize", {})
                else ""
            )
            + ("" if r["page_cache_dropped"] else "; page cache not dropped (not root)")
        )
    return lines + [""] + notes
