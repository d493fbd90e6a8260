"""4-bit quality against the right reference: the recipe's dense base, quantized the
same way, on the same windows.

A 4-bit MoE is judged by how much it loses against its 16-bit self (verify's mean
KL, top-1 agreement, perplexity ratio). Whether that loss is good or bad depends
on the model: the fair reference is what the same quantization does to the dense
model the MoE is made of. This quantizes the recipe's base with the quantize
stage's engine, settings, compute path and calibration windows, measures it
against the 16-bit base on verify's held-out windows, and gives the MoE's mean KL
divided by the dense base's (target: at most 1.0, the MoE loses no more than its
base).

Usage (after a build of the recipe): python -m bench.quality RECIPE [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from frankenmoe.engine.build import default_layout, finished_results
from frankenmoe.measure.checks import QUANTIZATION_PARITY
from frankenmoe.measure.metrics import perplexity, target_nll, token_kl, top1_agreement
from frankenmoe.measure.verdict import named
from frankenmoe.quantization.awq_engine import run_engine
from frankenmoe.quantization.awq_layout import quantization_config
from frankenmoe.recipe import load_recipe
from frankenmoe.stages import STAGES
from frankenmoe.stages.evaluate import reference_dir
from frankenmoe.stages.resolve import model_paths
from frankenmoe.stages.verify import report_dir


def dense_reference(recipe_file: Path, work: Path, build_root: Path | None = None, log=print) -> dict:
    """Needs a finished build of the recipe (under `build_root`, default build/)."""
    recipe = load_recipe(recipe_file)
    done = finished_results(recipe, default_layout(recipe, build_root=build_root), STAGES, ["verify"])
    quantize, evaluate, verify = done["quantize"], done["evaluate"], done["verify"]
    base = model_paths(done["resolve"])["base"]
    spec_used = json.loads((quantize.path / "engine-spec.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = {
        **spec_used,
        "model": str(base.resolve()),
        "out": str((work / "engine").resolve()),
        "windows": str((quantize.path / "calibration-windows.json").resolve()),
        "calibrate_all_experts": False,
    }
    log(
        f"bench: quantizing the dense base {base.name} as the quantize stage did "
        f"(group size {spec['group_size']}, {spec.get('compute_dtype')})"
    )
    run_engine(spec, work / "engine-spec.json", work / "engine.log")
    dense4 = _to_contract(work / "engine", work / "dense-awq", spec)
    moe = named(json.loads((report_dir(verify) / "verify.json").read_text()), QUANTIZATION_PARITY)
    dense = _parity(base, dense4, reference_dir(evaluate) / "reference.safetensors")
    out = {
        "moe": {k: moe[k] for k in ("kl_mean", "top1_agreement", "perplexity_ratio")},
        "dense_base": dense,
        "kl_ratio_moe_over_dense": moe["kl_mean"] / dense["kl_mean"],
        "settings": {k: spec[k] for k in ("bits", "group_size", "zero_point", "compute_dtype") if k in spec},
    }
    log(
        f"bench: mean KL MoE {moe['kl_mean']:.4f} / dense base {dense['kl_mean']:.4f} = "
        f"{out['kl_ratio_moe_over_dense']:.2f}"
    )
    return out


def _to_contract(engine_out: Path, folder: Path, spec: dict) -> Path:
    """GPTQModel's output with the published layout's config and float16 tensors
    (a dense Llama's AWQ names are already AutoAWQ's)."""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir()
    for f in sorted(engine_out.glob("*.safetensors")):
        tensors = {k: (t.to(torch.float16) if t.is_floating_point() else t) for k, t in load_file(f).items()}
        save_file(tensors, folder / f.name, metadata={"format": "pt"})
    index = engine_out / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, folder / index.name)
    config = json.loads((engine_out / "config.json").read_text())
    config["quantization_config"] = quantization_config(spec["bits"], spec["group_size"], spec["zero_point"])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _parity(base: Path, candidate: Path, reference: Path) -> dict:
    """Mean KL(16-bit || 4-bit), top-1 agreement and perplexity ratio on the windows verify used."""
    import torch
    from safetensors import safe_open

    from frankenmoe.checkpoints.streaming import StreamingLM

    with safe_open(reference, framework="pt") as st:
        tokens = st.get_tensor("tokens").tolist()
    inputs = [ids[:-1] for ids in tokens]
    kls, agree, nll16, nll4, n = [], [], 0.0, 0.0, 0
    pairs = zip(
        StreamingLM(base).run(inputs, desc="bench: dense 16-bit"),
        StreamingLM(candidate).run(inputs, desc="bench: dense 4-bit"),
        tokens,
    )
    for (lp16, _), (lp4, _), ids in pairs:
        kls.append(token_kl(lp16, lp4))
        agree.append(top1_agreement(lp16, lp4))
        nll16 += target_nll(lp16, ids)
        nll4 += target_nll(lp4, ids)
        n += len(ids) - 1
    return {
        "kl_mean": float(torch.cat(kls).mean()),
        "top1_agreement": float(torch.cat(agree).float().mean()),
        "perplexity_ratio": perplexity(nll4, n) / perplexity(nll16, n),
        "tokens": n,
    }


def paired_difference(reference: Path, a: Path, b: Path, resamples: int = 10000) -> dict:
    """Two 4-bit folders on the same held-out windows: per window, each one's mean
    KL(16-bit || 4-bit) and top-1 agreement; the mean difference a - b with a 95%
    bootstrap interval over windows (paired, both on the same windows), so a
    difference can be told from the noise of 16 windows."""
    import torch
    from safetensors import safe_open

    from frankenmoe.checkpoints.streaming import StreamingLM
    from frankenmoe.checkpoints.tensor_file import Rows

    per: dict[str, tuple] = {}
    with safe_open(reference, framework="pt") as st:
        inputs = [ids[:-1] for ids in st.get_tensor("tokens").tolist()]
        ref = Rows(st, "logprobs")
        for label, folder in (("a", a), ("b", b)):
            kl, top = [], []
            for w, (lp4, _) in enumerate(StreamingLM(folder).run(inputs, desc=f"bench: 4-bit {folder.name}")):
                lp16 = ref[w].float()
                kl.append(float(token_kl(lp16, lp4).mean()))
                top.append(float(top1_agreement(lp16, lp4).float().mean()))
            per[label] = (torch.tensor(kl, dtype=torch.float64), torch.tensor(top, dtype=torch.float64))
    n = len(inputs)
    draws = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(0))
    out: dict = {"windows": n}
    for i, metric in enumerate(("kl_mean", "top1_agreement")):
        d = per["a"][i] - per["b"][i]
        boot = d[draws].mean(1)
        low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        out[metric] = {"a": float(per["a"][i].mean()), "b": float(per["b"][i].mean()), "difference": float(d.mean())}
        out[metric]["ci95"] = [low, high]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("--work", type=Path, default=Path("build/.bench-dense"))
    args = p.parse_args()
    print(json.dumps(dense_reference(args.recipe, args.work), indent=2))


if __name__ == "__main__":
    main()
