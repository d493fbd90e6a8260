"""bench/results.md from the results `bench/run.py` measured: the tables and the
sentences of each part, with the ratios the report states computed here from the
figures beside them."""

from __future__ import annotations

import statistics

from bench.evals import report as evals_report
from frankenmoe.stages import STAGES

FIGURES = (
    ("kl_mean", "mean KL", "{:.4f}", -1),
    ("top1_agreement", "top-1", "{:.1%}", 1),
    ("perplexity_ratio", "perplexity ratio", "{:.3f}", -1),
)  # key, label, format, sign of better


def quality_lines(qr: dict) -> list[str]:
    """The fast path next to GPTQModel's float16 path (bench.run.quality's result)."""
    fast, own = qr["paths"]["fast"], qr["paths"]["gptqmodel_fp16"]
    d, pd = qr["dense"], qr.get("fast_minus_fp16")
    return [
        "",
        "| quantize path | compute | quantize stage (s) | mean KL | top-1 | perplexity ratio |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {p['compute']['device']} {p['compute']['dtype']} | {p['quantize_s']:.1f} | "
            f"{p['kl_mean']:.4f} | {p['top1_agreement']:.1%} | {p['perplexity_ratio']:.3f} |"
            for label, p in (("frankenmoe (fast CPU path)", fast), ("GPTQModel's own float16", own))
        ),
        "",
        f"- quantize: the fast path is **{qr['speedup']}x** faster than GPTQModel's float16 path on the same windows",
        *(
            [
                f"- fast minus float16, paired over the {pd['windows']} held-out windows: mean KL "
                f"{pd['kl_mean']['difference']:+.4f} (95% bootstrap interval {pd['kl_mean']['ci95'][0]:+.4f} "
                f"to {pd['kl_mean']['ci95'][1]:+.4f}), top-1 {pd['top1_agreement']['difference']:+.2%} "
                f"({pd['top1_agreement']['ci95'][0]:+.2%} to {pd['top1_agreement']['ci95'][1]:+.2%})"
            ]
            if pd
            else []
        ),
        f"- dense base quantized the same way: mean KL {d['dense_base']['kl_mean']:.4f}, top-1 "
        f"{d['dense_base']['top1_agreement']:.1%}, perplexity x{d['dense_base']['perplexity_ratio']:.3f}; "
        f"MoE / dense mean KL: **{d['kl_ratio_moe_over_dense']:.2f}** (target at most 1.0)",
    ]


def draws_lines(first: dict, draws: dict) -> list[str]:
    """Every calibration draw of the fast-vs-float16 comparison (seed 0 is the recipe's own), and their means."""
    rows = {"0": first, **draws}
    out = [
        "",
        f"The same comparison over {len(rows)} calibration draws (`--quality-seeds`: the recipe with other "
        "`quantize.calibration.seed`s, so other windows and other AWQ choices on both paths):",
        "",
        "| seed | speed-up | mean KL fast / float16 | top-1 fast / float16 | perplexity ratio fast / float16 |",
        "|---|---|---|---|---|",
    ]
    for seed, qr in rows.items():
        fast, own = qr["paths"]["fast"], qr["paths"]["gptqmodel_fp16"]
        cells = [f"{fmt.format(fast[k])} / {fmt.format(own[k])}" for k, _, fmt, _ in FIGURES]
        out.append(f"| {seed} | {qr['speedup']}x | " + " | ".join(cells) + " |")
    out.append("")
    for k, label, fmt, better in FIGURES:
        fast = [qr["paths"]["fast"][k] for qr in rows.values()]
        own = [qr["paths"]["gptqmodel_fp16"][k] for qr in rows.values()]
        wins = sum((f - o) * better >= 0 for f, o in zip(fast, own))
        out.append(
            f"- {label}, mean over the draws: fast {fmt.format(statistics.mean(fast))}, float16 "
            f"{fmt.format(statistics.mean(own))}; the fast path is as good or better in {wins} of {len(rows)}"
        )
    return out


def report(results: dict) -> str:
    o, r, w = results["ours"], results["raw"], results["whole"]
    raw_build = r["merge"]["wall_s"] + r["quantize"]["wall_s"]
    raw_tuned = r["merge"]["wall_s"] + r["quantize_same_allocator"]["wall_s"]
    results["ratios"] = {
        "merge_vs_mergekit": round(o["merge"]["command_s"] / r["merge"]["wall_s"], 2),
        "quantize_vs_gptqmodel": round(o["quantize"]["command_s"] / r["quantize"]["wall_s"], 2),
        "whole_build_vs_raw_tools": round(w["whole_s"] / raw_build, 2),
        "build_through_quantize_vs_raw_tools": round(w["through_quantize_s"] / raw_build, 2),
        "whole_build_vs_raw_tools_same_allocator": round(w["whole_s"] / raw_tuned, 2),
    }
    lines = [
        f"Measured {results['date']} on {results['machine']} (`make bench`, recipe `{results['recipe']}`).",
        "",
        "| stage | command wall (s) | stage's own time (s) | peak RSS, process tree (MB) | raw tool (s) | "
        "raw peak RSS (MB) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, row in o.items():
        raw = r.get(stage)
        ratio = f"{row['command_s'] / raw['wall_s']:.2f}x" if raw else ""
        lines.append(
            f"| {stage} | {row['command_s']:.1f} | {row['stage_s']:.1f} | {row['peak_rss_mb']} | "
            f"{raw['wall_s'] if raw else ''} | {raw['peak_rss_mb'] if raw else ''} | {ratio} |"
        )
    c = results["cache"]
    ratios = results["ratios"]
    lines += [
        "",
        f"- whole build, `frankenmoe build` in one command ({', '.join(s.name for s in STAGES if s.name in o)}): "
        f"{w['whole_s']:.1f} s, peak RSS {w['whole_peak_rss_mb']} MB, vs mergekit-moe + GPTQModel alone "
        f"{raw_build:.1f} s: **{ratios['whole_build_vs_raw_tools']}x**; "
        f"through quantize only: {w['through_quantize_s']:.1f} s, {ratios['build_through_quantize_vs_raw_tools']}x",
        "- the quantize stage runs GPTQModel with glibc malloc keeping freed memory "
        "(frankenmoe/quantization/awq_engine.py); GPTQModel "
        f"alone with the same settings: {r['quantize_same_allocator']['wall_s']:.1f} s (vs "
        f"{r['quantize']['wall_s']:.1f} s "
        f"without), and against that the whole build is {ratios['whole_build_vs_raw_tools_same_allocator']}x",
        "- per-stage rows are one `frankenmoe build --until STAGE` each: every row pays a process start-up and the "
        "no-op "
        "checks of the stages before it",
        f"- no-op rebuild: {c['noop_s']:.2f} s (median of {len(c['noop_runs_s'])}); "
        f"after changing only a verify threshold: {c['thresholds_changed_s']:.1f} s, reran "
        f"{', '.join(c['thresholds_changed_ran'])}",
        f"- quantize: {o['quantize']['stage_s']:.1f} s and {o['quantize']['peak_rss_mb']} MB peak for "
        f"{results['calibration']}",
    ]
    if results.get("quality"):
        lines += quality_lines(results["quality"])
    if results.get("matmul_limit"):
        mm = results["matmul_limit"]
        lines += [
            f"- how far from the matmul limit (bench/matmul_limit.py, layer {mm['layer']} profiled): a layer does "
            f"{mm['matmul_gflop']} GFLOP of matrix products, {mm['limit_s']['float32']} s at this CPU's float32 "
            f"rate ({mm['rate_gflops']['float32']} GFLOP/s) and {mm['limit_s']['bfloat16']} s at its bfloat16 rate "
            f"({mm['rate_gflops']['bfloat16']} GFLOP/s); the fast path takes {mm['layer_unprofiled_s']} s a layer: "
            f"**{mm['times_the_limit']['float32']}x** the float32 limit, {mm['times_the_limit']['bfloat16']}x the "
            "bfloat16 one (the rest is GPTQModel's work outside matrix products)"
            + (f"; {mm['note']}" if mm.get("note") else ""),
        ]
    if results.get("quality_draws"):
        lines += draws_lines(results["quality"], results["quality_draws"])
    for name, qr in results.get("quality_more", {}).items():
        lines += ["", f"The same comparison on `{name}`" + (f" ({qr['note']})" if qr.get("note") else "") + ":"]
        lines += quality_lines(qr)
    if results.get("gguf"):
        g = results["gguf"]
        lines += [
            "",
            "GGUF (llama.cpp's own converter and quantizer, checked by llama.cpp's logits on the held-out text):",
            "",
            f"- the stage: {g['stage_s']:.1f} s, of which making the files {g['stage_parts_s']['convert']:.1f} s "
            f"(convert) + {g['stage_parts_s']['quantize']:.1f} s (quantize) and llama.cpp's checks "
            f"{g['stage_parts_s']['check']:.1f} s; the same tools by hand: {g['by_hand']['total_s']:.1f} s; "
            f"files vs by hand **{g['files_vs_by_hand']}x**, whole stage {g['stage_vs_by_hand']}x",
            "",
            "| type | MoE mean KL | top-1 | ppl ratio | dense base mean KL | top-1 | ppl ratio | MoE / dense KL |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {t} | {m['kl_mean']:.4f} | {m['top1_agreement']:.1%} | x{m['perplexity_ratio']:.3f} | "
                f"{g['dense_base'][t]['kl_mean']:.4f} | {g['dense_base'][t]['top1_agreement']:.1%} | "
                f"x{g['dense_base'][t]['perplexity_ratio']:.3f} | {g['moe_vs_dense_kl'][t]} |"
                for t, m in g["moe"].items()
            ),
        ]
    if results.get("evals"):
        lines += evals_report(results["evals"])
    if results.get("scale"):
        from bench.scale import report as scale_report

        lines += scale_report(results["scale"])
    if results.get("verify_memory"):
        from bench.scale import verify_memory_report

        lines += verify_memory_report(results["verify_memory"])
    if results.get("sweep"):
        from bench.sweep import report as sweep_report

        lines += sweep_report(results["sweep"])
    return "\n".join(lines) + "\n"
