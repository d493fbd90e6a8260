"""Fitted routers (the `gates` stage) on the example: only the routers change, the
MoE comes close to its best expert on every domain, and fitting is deterministic."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, example_data, read_json, run_cli
from tests.test_example_build import tensors

pytestmark = pytest.mark.slow

FITTED = REPO / "recipes" / "tiny-2x-fitted.yaml"


@pytest.fixture(scope="module")
def fitted(example, tmp_path_factory) -> dict:
    """The fitted variant up to `evaluate` (what follows is the same code as for
    any recipe), built on a hard-linked copy of the example's cache: its merge is
    the example's (same key), so only gates and evaluate run."""
    root = tmp_path_factory.mktemp("fitted")
    (root / "build").mkdir()
    subprocess.run(
        ["cp", "-al", str(example["root"] / "build" / "tiny-2x"), str(root / "build" / "tiny-2x-fitted")], check=True
    )
    (root / "build" / "tiny-2x-fitted" / "published.json").unlink()
    proc = run_cli("build", str(FITTED), "--until", "evaluate", build=root / "build", dist=root / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "merge     cached" in proc.stdout and "gates     ran" in proc.stdout
    output = {
        line.split()[0]: Path(line.split()[-1]) for line in proc.stdout.splitlines() if line.split()[1:2] == ["ran"]
    }
    return {
        "root": root,
        "merged": root / "dist" / "tiny-2x-fitted" / "merged",
        "gates": read_json(output["gates"] / "record.json"),
        "reference": read_json(output["evaluate"] / "reference.json"),
    }


def test_only_the_routers_change(fitted, example):
    mine, plain = tensors(fitted["merged"]), tensors(example["merged"])
    assert mine.keys() == plain.keys()
    routers = [n for n in mine if n.endswith("block_sparse_moe.gate.weight")]
    assert len(routers) == 4
    for name, t in mine.items():
        if name in routers:
            assert t.dtype == plain[name].dtype and not torch.equal(t, plain[name]), name
        else:
            assert t.dtype == plain[name].dtype and t.numpy().tobytes() == plain[name].numpy().tobytes(), name


def test_fitted_routers_beat_the_hidden_state_ones_on_every_domain(fitted):
    ppl = fitted["reference"]["perplexity"]
    assert set(ppl) == {"moe", "moe (hidden-state routers)", "base", "experts[0]", "experts[1]"}
    for domain in ("code", "prose"):
        assert ppl["moe"][domain] < ppl["moe (hidden-state routers)"][domain], (domain, ppl)
    # and the report shows both, next to each source expert
    from frankenmoe.measure.report import render_markdown
    from frankenmoe.measure.verdict import build_report

    report = {
        **build_report([], enforced=True),
        "warnings": [],
        "routing_report": {
            "domains": ["code", "prose"],
            "experts": ["expert-code", "expert-prose"],
            "perplexity": ppl,
            "routing_16bit": fitted["reference"]["routing_16bit"],
            "routing_16bit_hidden": fitted["reference"]["routing_16bit_hidden"],
        },
    }
    md = render_markdown(report)
    for row in (
        "| moe (hidden-state routers) |",
        "| moe (fitted routers) |",
        "| expert 1 (expert-prose) |",
        "| hidden-state |",
        "| fitted |",
    ):
        assert row in md


def test_record_and_card_say_how_the_routers_were_fitted(fitted):
    from frankenmoe.recipe import load_recipe
    from frankenmoe.stages.base import StageResult
    from frankenmoe.stages.card import _fitted

    gates = fitted["gates"]["result"]
    steps = len(gates["loss"])
    assert gates["fitted"] and 0 < steps <= 40
    # the start: each file sent to the expert with the lowest held-out loss on it, which the routers then learned
    start = gates["start"]
    assert start["from"] == "best_expert" and start["experts"] == [0, 1], start
    for f, losses in enumerate(start["expert_loss"]):
        assert losses[start["experts"][f]] == min(losses)
    assert len(start["accuracy"]) == 4 and all(0.6 < a <= 1 for a in start["accuracy"]), start["accuracy"]
    # on windows the classifier never saw: the generalization the Adam steps cannot see
    assert len(start["heldout_accuracy"]) == 4 and all(0.5 < a <= 1 for a in start["heldout_accuracy"]), start
    held = gates["heldout_loss"]
    assert held[0]["step"] == 0 and held[-1]["step"] == steps and all(c["step"] % 5 == 0 for c in held[:-1])
    assert held[0]["loss"] < start["heldout_before"], (held[0], start["heldout_before"])
    best = min(held, key=lambda c: c["loss"])
    assert gates["best_step"] == best["step"], held
    assert gates["stopped"] in ("reached gates.steps (40)",) or gates["stopped"].startswith("held-out loss not below")
    assert gates["heldout_windows"] and all(0 < n <= 8 for n in gates["heldout_windows"].values())
    assert gates["seconds_per_step"] > 0 and gates["seconds"] > start["seconds"]
    entropy = gates["expert_usage_entropy_bits"]
    assert len(entropy["hidden"]) == len(entropy["fitted"]) == 4 and all(0 <= e <= 1 for e in entropy["fitted"])
    low, high = (f"{100 * f(start['heldout_accuracy']):.0f}" for f in (min, max))
    top1 = f"{low}%" if low == high else f"{low}-{high}%"
    line = _fitted(load_recipe(FITTED), StageResult("gates", "k", fitted["root"], fitted["gates"]))
    assert line.startswith(
        "routers fitted on shipped:code/calibration.jsonl, shipped:prose/calibration.jsonl: first each layer's "
        "router trained to send each file's tokens to the expert best on it (shipped:code/calibration.jsonl: "
        f"expert 0, shipped:prose/calibration.jsonl: expert 1; top-1 on held-out windows {top1} over the layers), "
        f"then {steps} steps of Adam (lr 0.02, batch 4 x 128 "
        "tokens, seed 0)"
    ), line
    assert f"{start['heldout_before']:.3f} -> {best['loss']:.3f}" in line
    assert f"routers of step {gates['best_step']} kept ({gates['stopped']})" in line
    assert (
        _fitted(
            load_recipe(REPO / "recipes" / "tiny-2x.yaml"),
            StageResult("gates", "k", fitted["root"], {"result": {"fitted": False}}),
        )
        is None
    )


def test_two_fits_give_identical_routers(fitted):
    def digests() -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(fitted["merged"].glob("*.safetensors"))
        }

    first = digests()
    proc = run_cli(
        "build",
        str(FITTED),
        "--force",
        "gates",
        "--until",
        "gates",
        build=fitted["root"] / "build",
        dist=fitted["root"] / "dist",
    )
    assert proc.returncode == 0, proc.stderr
    assert "gates     ran" in proc.stdout
    assert digests() == first
    # dist/ holds what the rerun itself recorded, not whatever was there before (the
    # build folder also holds the copied example's unfitted gates output: the rerun's
    # is the one its "ran" line names)
    ran = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("gates     ran"))
    rerun = read_json(REPO / ran / "record.json")
    assert rerun["result"]["fitted"] is True
    recorded = {
        rel.split("/", 1)[1]: meta["sha256"]
        for rel, meta in rerun["files"].items()
        if rel.startswith("model/") and rel.endswith(".safetensors")
    }
    assert digests() == recorded


def leaked_copy(how: str, held_out: Path, folder: Path) -> tuple[str, int, int]:
    """The evaluation text written as a new file one way; (its name, shared documents, first line)."""
    import json

    docs = [json.loads(line) for line in held_out.read_text().splitlines() if line.strip()]
    folder.mkdir()
    if how == "re-serialized":  # the same documents, another key order and spacing
        rows = [
            json.dumps(
                {"domain": d.get("domain"), "text": "  " + d["text"].replace(" ", "  ")},
                indent=None,
                separators=(", ", " : "),
            )
            for d in docs
        ]
        (folder / "mine.jsonl").write_text("\n\n".join(rows) + "\n")
        return "texts/mine.jsonl", len(docs), 1
    if how == "a .txt copy":  # the documents' texts, one after another
        (folder / "mine.txt").write_text("\n\n".join(d["text"] for d in docs))
        return "texts/mine.txt", 1, 1
    assert how == "one shared document"
    rows = [json.dumps({"text": f"An unrelated note number {i}, written for this test alone."}) for i in range(5)]
    rows.insert(3, json.dumps({"text": docs[1]["text"]}))
    (folder / "mine.jsonl").write_text("\n".join(rows) + "\n")
    return "texts/mine.jsonl", 1, 4


@pytest.mark.parametrize(
    "how",
    ["same name", "relative path", "absolute path", "a copy", "re-serialized", "a .txt copy", "one shared document"],
)
@pytest.mark.parametrize("section", ["gates.files", "quantize.calibration.files"])
def test_no_stage_may_learn_from_the_evaluation_text(tmp_path, how, section):
    """Compared per document by content: another spelling of the path, a copy, the
    same documents re-serialized or as plain text, or one of them in a new file."""
    from frankenmoe.support.paths import shipped_dir

    held_out = shipped_dir() / "prose" / "eval.jsonl"
    documents = sum(1 for line in held_out.read_text().splitlines() if line.strip())
    if how in ("re-serialized", "a .txt copy", "one shared document"):
        name, count, line = leaked_copy(how, held_out, tmp_path / "texts")
    else:
        copy = tmp_path / "texts" / "mine.jsonl"
        copy.parent.mkdir()
        copy.write_bytes(held_out.read_bytes())
        name = {
            "same name": "shipped:prose/eval.jsonl",
            "relative path": "./texts/mine.jsonl",
            "absolute path": str(held_out),
            "a copy": "texts/mine.jsonl",
        }[how]
        count, line = documents, 1
    total = {"a .txt copy": 1, "one shared document": 6}.get(how, documents)
    data = example_data(FITTED)
    if section == "gates.files":
        data["gates"]["files"] = ["shipped:code/calibration.jsonl", name]
    else:
        data["quantize"]["calibration"]["files"] = ["shipped:code/calibration.jsonl", name]
    recipe = tmp_path / "leak.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: {section}: {name} shares {count} of its {total} documents with verify.files "
        f"shipped:prose/eval.jsonl (the first at {name}:{line})"
    ), lines[0]
    assert not any((tmp_path / "build").rglob("record.json"))


def test_the_fit_keeps_its_best_held_out_routers_and_stops_without_progress(example):
    """lr 0 never improves: the fit stops after `patience` checks with the routers it
    was given. At lr 1 the held-out loss is lowest at step 10 and higher at 12: the
    routers returned are those of step 10, not the last ones."""
    import torch

    from frankenmoe.checkpoints.loading import load_merged
    from frankenmoe.checkpoints.moe_blocks import moe_blocks
    from frankenmoe.routing.fit_losses import heldout_loss
    from frankenmoe.routing.router_fit import Schedule, fit_routers, split_heldout

    g = torch.Generator().manual_seed(0)
    model = load_merged(example["merged"], dtype="float32")
    groups = [torch.randint(model.config.vocab_size, (6, 32), generator=g).tolist() for _ in range(2)]
    train, heldout = split_heldout(groups, 0.2)
    assert [len(h) for h in heldout] == [1, 1] and [len(t) for t in train] == [5, 5]
    with pytest.raises(ValueError) as one:  # a file of one window cannot lend one to the held-out split
        split_heldout([groups[0], groups[1][:1]], 0.2)
    assert one.value.args == (1,)
    compute = {"device": "cpu", "dtype": "float32"}
    start = [b.gate.weight.detach().clone() for b in moe_blocks(model)]
    still = fit_routers(model, train, heldout, Schedule(30, 2, 2), 0.0, 2, 0, 0.0, compute)
    assert still.best_step == 0 and len(still.loss) == 4 and still.stopped.startswith("held-out loss not below")
    assert all(torch.equal(still.routers[i], w.float()) for i, w in enumerate(start))

    jumpy = fit_routers(model, train, heldout, Schedule(12, 2, 2), 1.0, 2, 0, 0.0, compute)
    lowest = min(jumpy.heldout, key=lambda c: c["loss"])
    assert jumpy.best_step == lowest["step"] < len(jumpy.loss), jumpy.heldout  # the kept routers are not the last
    with torch.no_grad():
        for i, b in enumerate(moe_blocks(model)):
            b.gate.weight.copy_(jumpy.routers[i])
    assert heldout_loss(model, [torch.tensor(h) for h in heldout], 2) == lowest["loss"]


def test_the_best_expert_start_alone_sends_each_file_to_its_best_expert(example):
    """`gates.steps: 0` keeps the start alone: no Adam step, and routers that send
    each file's tokens to the expert with the lowest held-out loss on it."""
    import torch
    from transformers import AutoTokenizer

    from frankenmoe.checkpoints.loading import load_merged
    from frankenmoe.checkpoints.moe_blocks import moe_blocks
    from frankenmoe.routing.router_fit import Schedule, fit_routers, split_heldout
    from frankenmoe.support.paths import shipped_dir
    from frankenmoe.text.calibration import token_windows

    model = load_merged(example["merged"], dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(example["merged"])
    files = [shipped_dir() / d / "calibration.jsonl" for d in ("code", "prose")]
    groups = [token_windows([f], tokenizer, 64, "test")[:20] for f in files]
    train, heldout = split_heldout(groups, 0.2)
    compute = {"device": "cpu", "dtype": "float32"}
    fit = fit_routers(model, train, heldout, Schedule(0, 5, 3), 0.05, 4, 0, 0.0, compute, start="best_expert")
    assert fit.loss == [] and fit.best_step == 0 and fit.stopped == "gates.steps is 0: the start alone"
    start = fit.start
    assert start.experts == [0, 1] and [min(losses) for losses in start.expert_loss] == [
        losses[e] for losses, e in zip(start.expert_loss, start.experts)
    ]
    assert fit.heldout[0]["loss"] < start.heldout_before and start.windows == 16
    # the kept routers send most of each file's tokens to its expert, at every layer
    with torch.no_grad():
        for i, b in enumerate(moe_blocks(model)):
            b.gate.weight.copy_(fit.routers[i])
        for f, expert in enumerate(start.experts):
            chosen = []
            hooks = [b.gate.register_forward_hook(lambda m, i, o: chosen.append(o[2][:, 0])) for b in moe_blocks(model)]
            model(torch.tensor(train[f]))
            for h in hooks:
                h.remove()
            assert all(float((c == expert).float().mean()) > 0.7 for c in chosen), (f, chosen)


def test_a_distilled_fit_moves_the_moe_toward_each_files_forced_expert(example):
    """`distill_from`: the routers are fitted toward each file's forced expert (KL
    from its output), after a warm-up. Starting from the merge's routers, the kept
    routers bring the MoE closer to those experts on the held-out windows."""
    import torch
    from transformers import AutoTokenizer

    from frankenmoe.checkpoints.loading import load_merged
    from frankenmoe.checkpoints.moe_blocks import moe_blocks
    from frankenmoe.routing.fit_losses import forced_logprobs, kl_from
    from frankenmoe.routing.router_fit import Schedule, fit_routers, split_heldout
    from frankenmoe.support.paths import shipped_dir
    from frankenmoe.text.calibration import token_windows

    assert [Schedule(9, 1, 1, warmup=4).lr_factor(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert Schedule(9, 1, 1).lr_factor(0) == 1.0
    model = load_merged(example["merged"], dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(example["merged"])
    files = [shipped_dir() / d / "calibration.jsonl" for d in ("code", "prose")]
    train, heldout = split_heldout([token_windows([f], tokenizer, 64, "test")[:20] for f in files], 0.2)
    held = torch.tensor([w for h in heldout for w in h])
    experts = [i for i, h in enumerate(heldout) for _ in h]  # file i toward expert i

    def kl() -> float:
        with torch.no_grad():
            return float(kl_from(forced_logprobs(model, held, experts), model(held).logits))

    before = kl()
    compute = {"device": "cpu", "dtype": "float32"}
    fit = fit_routers(
        model, train, heldout, Schedule(20, 5, 4, warmup=5), 0.05, 4, 0, 0.0, compute, distill_from=[0, 1]
    )
    assert fit.best_step > 0, fit.heldout
    with torch.no_grad():
        for i, b in enumerate(moe_blocks(model)):
            b.gate.weight.copy_(fit.routers[i])
    assert kl() < 0.8 * before, (before, kl())
