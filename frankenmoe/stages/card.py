"""card: the model cards (README.md) for dist/<name>/merged/ and dist/<name>/awq/.

YAML metadata goes through huggingface_hub's `ModelCardData` so the Hub parses
it; the body comes from a Jinja template (`frankenmoe/templates/model_card.md`, or
the recipe's `card.template`) filled with the experts, the recipe, the
quantization settings, the verify summary and routing heatmap, how to run the
model, and provenance (tool versions, source revisions, sha256 of every weight
file, the build id: a hash of the recipe and its lock).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from frankenmoe import __version__
from frankenmoe.errors import RecipeError
from frankenmoe.measure.benchmark_report import evals_markdown, model_index
from frankenmoe.measure.sweep_report import read_study, render_for_card, without_timings
from frankenmoe.measure.verdict import named
from frankenmoe.provenance.lockfile import published_recipe
from frankenmoe.provenance.manifest_format import failed_checks
from frankenmoe.quantization import readers
from frankenmoe.quantization.llama_cpp import VERSION
from frankenmoe.recipe import Recipe
from frankenmoe.stages.base import Facts, Stage, StageContext, StageResult
from frankenmoe.stages.compressed import FOLDER, compressed_dir, compressed_result
from frankenmoe.stages.evals import MEASURED_ON, evals_result
from frankenmoe.stages.gates import gates_result
from frankenmoe.stages.gguf import gguf_report, gguf_result, parity_name
from frankenmoe.stages.gguf import render as render_gguf_report
from frankenmoe.stages.lock import build_id
from frankenmoe.stages.quantize import QuantizeResult, quantize_result
from frankenmoe.stages.resolve import ResolvedModel, resolve_license, resolved_models, source_licenses
from frankenmoe.stages.verify import report_dir
from frankenmoe.support.hashing import HashState, sha256_json
from frankenmoe.support.paths import portable
from frankenmoe.support.versions import tool_versions

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "model_card.md"
GGUF_TEMPLATE = TEMPLATE.with_name("gguf_card.md")
CARD_TOOLS = ["mergekit", "gptqmodel", "transformers", "torch", "safetensors", "huggingface-hub"]


def failed_banner(recipe: Recipe, failures: list[str]) -> str | None:
    """The first line of a card whose folder failed checks and may still be pushed."""
    if not failures or not recipe.publish.allow_failed:
        return None
    names = ", ".join(dict.fromkeys(f.split(":")[0] for f in failures))
    return (
        f"> **Warning: this model failed verification ({names}) and was published anyway "
        "(`publish.allow_failed: true`).** Read the verification section before using it."
    )


class CardResult(Facts):
    build_id: str
    license: str  # the license the cards state (recipe or sources)


class CardStage(Stage):
    name = "card"
    # 2: five check states; the GGUF card; the failed-checks banner. 3: the AWQ card's readers. 4: evals.
    # 5: evals in the GGUF card. 6: evals rows in a fixed order, not the order of a record.
    # 7: the study's rows in the order it ran its modes (not study.json's sorted keys); its paired table.
    version = 7
    depends = ("lock", "resolve", "gates", "quantize", "verify")
    optional_depends = ("gguf", FOLDER, "evals")
    packages = ("huggingface-hub", "jinja2")  # the cards are Jinja templates
    publishes = {"merged": "merged", "awq": "awq", "gguf": "gguf", FOLDER: FOLDER}

    def config(self, recipe: Recipe) -> dict[str, Any]:
        return {
            "card": recipe.card.model_dump(),
            "repos": recipe.publish.targets(),
            "allow_failed": recipe.publish.allow_failed,
            "recipe": _recipe_yaml(recipe),
            "frankenmoe": __version__,
        }

    def preflight(self, recipe: Recipe) -> None:
        if recipe.card.study:
            read_study(recipe.path(recipe.card.study), recipe.name, "card.study")
        if not recipe.card.license and (licenses := source_licenses(recipe)) is not None:
            resolve_license(recipe, licenses)  # the cards alone decide it: found before merge, not after verify

    def fingerprint(
        self, recipe: Recipe, state: HashState, inputs: dict[str, StageResult], offline: bool = False
    ) -> dict[str, Any] | None:
        out = {"template": state.sha256(_template_path(recipe))}
        if recipe.card.study:
            # What the study measured, not its wall times: a rerun study changes the key only if a number changed.
            study = read_study(recipe.path(recipe.card.study), recipe.name, "card.study")
            out["study"] = sha256_json(without_timings(study))
        return out

    def run(self, ctx: StageContext) -> CardResult:
        from huggingface_hub import ModelCard, ModelCardData

        recipe = ctx.recipe
        models = resolved_models(ctx.inputs["resolve"])
        license_id = resolve_license(recipe, {m.role: m.license for m in models})
        bid = build_id(ctx.inputs["lock"])
        verify_dir = report_dir(ctx.inputs["verify"])
        verify_md = (verify_dir / "verify.md").read_text(encoding="utf-8")
        q = recipe.quantize
        quant_result = quantize_result(ctx.inputs["quantize"])
        common = {
            "experts": [_expert_row(i, e, models[i + 1]) for i, e in enumerate(recipe.experts)],
            "base": _model_row(models[0]),
            "gate_mode": recipe.gate_mode,
            "experts_per_token": recipe.experts_per_token,
            "fitted_routers": _fitted(recipe, ctx.inputs["gates"]),
            "recipe_yaml": _recipe_yaml(recipe),
            "versions": {"frankenmoe": __version__, **tool_versions(CARD_TOOLS)},
            "build_id": bid,
            "verify_md": verify_md,
            "study_md": _study_md(recipe, ctx.inputs["gates"].key),
            "readers": {
                "failing": readers.FAILING,
                "untested": readers.UNTESTED,
                "transformers": readers.transformers_name(),
            },
        }
        scores = evals_result(ctx.inputs["evals"]) if "evals" in ctx.inputs else None
        if scores:
            # in the table's order: base, experts, the MoE, its 4-bit form, its GGUF files as the recipe lists them
            names = {"base": f"base ({common['base']['source']})"}
            names |= {f"experts[{e['index']}]": f"expert {e['index']} ({e['source']})" for e in common["experts"]}
            names |= {"moe": "MoE, 16-bit", "4-bit": "MoE, 4-bit"}
            names |= {f"gguf {t}": f"MoE, GGUF {t} (llama.cpp)" for t in recipe.gguf.types}
            common["evals_md"] = evals_markdown(scores.record(), names)
        hub_sources = [m.hub_id for m in models if m.hub_id]
        merged_repo = recipe.publish.merged.repo_id if recipe.publish.merged else f"{recipe.name}"
        awq_repo = recipe.publish.awq.repo_id if recipe.publish.awq else f"{recipe.name}-AWQ"
        w4a16_repo = recipe.publish.w4a16.repo_id if recipe.publish.w4a16 else f"{recipe.name}-W4A16"
        quantization = {
            "bits": q.bits,
            "group_size": quant_result.group_size,
            "zero_point": q.zero_point,
            "calibrate_all_experts": quant_result.calibrate_all_experts,
            "compute_dtype": quant_result.compute_dtype,
            "samples": q.calibration.samples,
            "seq_len": q.calibration.seq_len,
            "source": _calibration_source(q),
            "tokens": _expert_tokens(quant_result),
            "sha256": quant_result.calibration["sha256"],
        }
        tags = ["moe", "frankenmoe", "mergekit", "mixtral"]

        def quantized_data(extra_tags: list[str]):
            """The metadata of a 4-bit card: a quantization of the merged repo, when it is pushed."""
            return ModelCardData(
                license=license_id,
                library_name="transformers",
                pipeline_tag="text-generation",
                tags=tags + extra_tags,
                language=recipe.card.language,
                base_model=merged_repo if recipe.publish.merged else None,
                base_model_relation="quantized" if recipe.publish.merged else None,
                quantized_by=recipe.card.quantized_by,
            )

        cards = {
            "merged": (
                ModelCardData(
                    license=license_id,
                    library_name="transformers",
                    pipeline_tag="text-generation",
                    tags=tags,
                    language=recipe.card.language,
                    base_model=hub_sources or None,
                    base_model_relation="merge" if hub_sources else None,
                ),
                {
                    "title": recipe.name,
                    "repo_id": merged_repo,
                    "quantization": None,
                    "summary": f"A Mixture-of-Experts model with {len(recipe.experts)} experts, made with "
                    "mergekit-moe and frankenmoe: "
                    "attention, embeddings and norms come from the base model, each expert's MLP from its source "
                    "model.",
                    "weights": _weights(ctx.inputs["gates"], "model/"),
                },
            ),
            "awq": (
                quantized_data(["awq", "4-bit"]),
                {
                    "title": f"{recipe.name} (AWQ 4-bit)",
                    "repo_id": awq_repo,
                    "quantization": quantization,
                    "summary": f"4-bit AWQ quantization of the {recipe.name} Mixture-of-Experts model, verified "
                    "against the 16-bit model.",
                    "weights": _weights(ctx.inputs["quantize"], "model/"),
                    "w4a16_repo": w4a16_repo if FOLDER in ctx.inputs else None,
                },
            ),
        }
        if FOLDER in ctx.inputs:
            cards[FOLDER] = (
                quantized_data(["compressed-tensors", "w4a16", "awq", "4-bit"]),
                {
                    "title": f"{recipe.name} (W4A16, compressed-tensors)",
                    "repo_id": w4a16_repo,
                    "quantization": {
                        **quantization,
                        "converted_by": compressed_result(ctx.inputs[FOLDER]).converter,
                    },
                    "summary": f"The 4-bit AWQ quantization of the {recipe.name} Mixture-of-Experts model in "
                    "compressed-tensors' format, which transformers loads with `from_pretrained`; verified through "
                    "transformers against the 16-bit model.",
                    "weights": _weights(ctx.inputs[FOLDER], f"{FOLDER}/"),
                    "verify_md": (compressed_dir(ctx.inputs[FOLDER]) / "verify.md").read_text(encoding="utf-8"),
                },
            )
        failed = failed_checks({name: result.result for name, result in ctx.inputs.items()})
        for folder, (data, extra) in cards.items():
            label, reader = MEASURED_ON[folder]
            if scores and label in scores.models and scores.models[label].reader == reader:
                data.eval_results = model_index(scores.record(), label) or None
                data.model_name = extra["repo_id"] if data.eval_results else None
            out = ctx.out / folder
            out.mkdir()
            banner = failed_banner(recipe, failed.get(folder, []))
            card = ModelCard.from_template(
                data, template_str=_template_text(recipe), banner=banner, **{**common, **extra}
            )
            (out / "README.md").write_text(str(card), encoding="utf-8")
            ModelCard((out / "README.md").read_text(encoding="utf-8"))  # the header must parse
        for page in ("routing.png", "routing.html"):
            shutil.copy2(verify_dir / page, ctx.out / "merged" / page)
        if "gguf" in ctx.inputs:
            (ctx.out / "gguf").mkdir()
            files, report = gguf_result(ctx.inputs["gguf"]).files, gguf_report(ctx.inputs["gguf"])
            card = gguf_card(recipe, license_id, bid, files, report, common.get("evals_md"))
            (ctx.out / "gguf" / "README.md").write_text(card, encoding="utf-8")
        ctx.log(f"card      license {license_id}, build id {bid}")
        return CardResult(build_id=bid, license=license_id)


def _study_md(recipe: Recipe, gates_key: str) -> str | None:
    if not recipe.card.study:
        return None
    return render_for_card(read_study(recipe.path(recipe.card.study), recipe.name, "card.study"), gates_key)


def _fitted(recipe: Recipe, gates: StageResult) -> str | None:
    """How the routers were fitted, for the card; None for mergekit's own routers."""
    g, r = recipe.gates, gates_result(gates)
    if not r.fitted:
        return None
    held = r.heldout_loss
    kept = next(c["loss"] for c in held if c["step"] == r.best_step)
    start, first = r.start, held[0]["loss"]
    line = f"routers fitted on {', '.join(portable(f) for f in g.files)}: "
    if start.get("from") == "best_expert":
        first = start["heldout_before"]
        line += (
            "first each layer's router trained to send each file's tokens to the expert best on it ("
            + ", ".join(f"{portable(f)}: expert {e}" for f, e in zip(g.files, start["experts"]))
            + f"; top-1 on held-out windows {_share_range(start['heldout_accuracy'])} over the layers), then "
        )
    return line + (
        f"{len(r.loss)} steps of Adam (lr {g.lr}{f', warm-up {g.warmup} steps' if g.warmup else ''}, "
        f"batch {g.batch_size} x {g.seq_len} tokens, seed {g.seed}"
        f"{f', balance {g.balance}' if g.balance else ''}), only `block_sparse_moe.gate.weight` trained; loss on "
        f"held-out windows of the same files {first:.3f} -> {kept:.3f}, routers of step {r.best_step} kept "
        f"({r.stopped})"
    )


def _share_range(shares: list[float]) -> str:
    low, high = f"{100 * min(shares):.0f}", f"{100 * max(shares):.0f}"
    return f"{low}%" if low == high else f"{low}-{high}%"


def _template_path(recipe: Recipe) -> Path:
    if not recipe.card.template:
        return TEMPLATE
    path = recipe.path(recipe.card.template)
    if not path.is_file():
        raise RecipeError([f"card.template: {recipe.card.template}: file not found"])
    return path


def _template_text(recipe: Recipe) -> str:
    return _template_path(recipe).read_text(encoding="utf-8")


def _recipe_yaml(recipe: Recipe) -> str:
    """The recipe as built (every setting, portable paths), without the Hub targets."""
    data = published_recipe(recipe)
    del data["publish"]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _model_row(m: ResolvedModel) -> dict:
    return {
        "source": m.hub_id or Path(m.ref).name,
        "revision": m.commit or "local folder",
        "derived_from": m.derived_from,
        "about": m.about,
    }


def _expert_row(i: int, expert, m: ResolvedModel) -> dict:
    fmt = lambda ps: "; ".join(p.replace("\n", " ").replace("|", "\\|")[:60] for p in ps or []) or "-"
    return {
        "index": i,
        **_model_row(m),
        "positive": fmt(expert.positive_prompts),
        "negative": fmt(expert.negative_prompts),
    }


def _expert_tokens(result: QuantizeResult) -> str:
    """What the engine counted at the experts' inputs, for the card; never a formula."""
    seen, kept = result.expert_tokens_seen, result.expert_tokens_in_statistics
    if not seen:
        return "not measured (the engine's counters could not be read)"
    span = lambda rows: (min(min(r) for r in rows), max(max(r) for r in rows))
    low, high = span(seen)
    text = f"each expert's input received {low}" + (f" to {high}" if high != low else "") + " tokens per layer"
    if kept:
        klow, khigh = span(kept)
        text += (
            f", of which GPTQModel's AWQ kept {klow}"
            + (f" to {khigh}" if khigh != klow else "")
            + " per layer for the expert's scale statistics"
        )
    return text


def _calibration_source(q) -> str:
    if q.calibration.dataset:
        d = q.calibration.dataset
        return f"{d.id} ({d.split}{', ' + d.revision if d.revision else ''})"
    return ", ".join(portable(f) for f in q.calibration.files)


def _weights(result: StageResult, prefix: str) -> dict[str, str]:
    return {
        name[len(prefix) :]: meta["sha256"]
        for name, meta in sorted(result.files.items())
        if name.startswith(prefix) and name.endswith(".safetensors")
    }


def gguf_card(
    recipe: Recipe, license_id: str, bid: str, files: dict[str, str], report: dict, evals_md: str | None = None
) -> str:
    """The GGUF folder's README.md: the files, llama.cpp's checks of each, how to run
    them, and the benchmark tables (each GGUF type's row next to the other models')."""
    from huggingface_hub import ModelCard, ModelCardData

    targets = recipe.publish.targets()
    repo = targets.get("gguf", f"{recipe.name}-GGUF")
    merged_repo = targets.get("merged", recipe.name)  # set publish.merged.repo_id for a link that resolves
    data = ModelCardData(
        license=license_id,
        library_name="gguf",
        pipeline_tag="text-generation",
        tags=["moe", "frankenmoe", "mixtral", "gguf", "llama.cpp"],
        base_model=merged_repo,
        base_model_relation="quantized",
    )
    # In the recipe's order: a cached record reads its keys back sorted, a fresh one
    # in the order they were made, and the card's bytes must not depend on which.
    order = [t for t in recipe.gguf.types if t in files] + sorted(set(files) - set(recipe.gguf.types))
    rows = [
        {
            "file": report["files"][t]["file"],
            "type": t,
            "size": f"{report['files'][t]['bytes'] / 1e6:.1f} MB",
            "summary": named(report, parity_name(t))["summary"],
        }
        for t in order
    ]
    card = ModelCard.from_template(
        data,
        template_str=GGUF_TEMPLATE.read_text(encoding="utf-8"),
        banner=failed_banner(recipe, report["failures"]),
        name=recipe.name,
        experts=len(recipe.experts),
        experts_per_token=recipe.experts_per_token,
        llama_cpp_version=VERSION,
        build_id=bid,
        files=rows,
        headline=report["headline"],
        first=files[order[0]],
        repo_id=repo,
        evals_md=evals_md,
        verification_md=render_gguf_report(report).replace("## GGUF verification by llama.cpp", "## Verification", 1),
    )
    return str(card)
