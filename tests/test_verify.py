"""verify: the example passes with every number reported, and each check catches
the broken candidate it exists for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.measure.evaluation import forced_routing_parity, merge_structure
from frankenmoe.measure.report import routing_matrix
from tests.conftest import EXAMPLE, example_data, run_cli
from tests.test_example_build import eval_ids

pytestmark = pytest.mark.slow


def test_example_passes_with_every_number(example):
    report = json.loads((example["awq"] / "verify.json").read_text())
    assert report["passed"] is True and report["enforced"] is True and report["failures"] == []
    assert report["verdict"] == "passed" and sum(report["counts"].values()) == 6
    checks = {c["name"]: c for c in report["checks"]}
    # Top-2 of 2: which experts run cannot change; the recipe's router-weight limit is what is judged.
    assert checks["routing_parity"]["state"] == "pass" and "(max 0.015)" in checks["routing_parity"]["summary"]
    assert report["headline"] == "passed (6 passed, 0 warnings, 0 not applicable, 0 failed)"
    assert set(checks) == {
        "merge_structure",
        "forced_routing",
        "consumer_load",
        "quantization_parity",
        "dead_experts",
        "routing_parity",
    }
    q = checks["quantization_parity"]
    for key in (
        "kl_mean",
        "kl_p99",
        "top1_agreement",
        "perplexity_16bit",
        "perplexity_4bit",
        "perplexity_ratio",
        "tokens",
    ):
        assert key in q
    assert q["tokens"] >= 8000 and q["kl_mean"] < report["thresholds"]["max_mean_kl"]
    assert len(checks["routing_parity"]["router_weight_mae"]) == 4
    assert all(e["max_abs"] == 0.0 and e["applies"] for e in checks["forced_routing"]["experts"])
    rr = report["routing_report"]
    assert rr["domains"] == ["code", "prose"] and set(rr["perplexity"]) == {"moe", "base", "experts[0]", "experts[1]"}
    # The code expert is better on code than the prose expert, and vice versa: the report can tell them apart.
    assert rr["perplexity"]["experts[0]"]["code"] < rr["perplexity"]["experts[1]"]["code"]
    assert rr["perplexity"]["experts[1]"]["prose"] < rr["perplexity"]["experts[0]"]["prose"]
    for d in rr["domains"]:
        for layer in rr["routing_16bit"][d]["mean_gate_weight"]:
            assert abs(sum(layer) - 1.0) < 1e-4  # gate weights of the chosen experts sum to one
    png = example["awq"] / "routing.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (example["awq"] / "verify.md").read_text()
    assert "## Verification: passed (6 passed, 0 warnings, 0 not applicable, 0 failed)" in md and "(routing.png)" in md
    rows, _ = routing_matrix(rr)
    assert f"{rows[0][0]:.2f}" and rows[0][0] == rr["routing_16bit"]["code"]["mean_gate_weight"][0][0]


def corrupt(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    for f in sorted(dst.glob("*.safetensors")):
        t = load_file(f)
        if edit(t):
            save_file(t, f, metadata={"format": "pt"})
    return dst


def run_verify(example, candidate: Path, out: Path):
    return run_cli(
        "verify",
        str(EXAMPLE),
        "--candidate",
        str(candidate),
        "--out",
        str(out),
        build=example["root"] / "build",
        dist=example["root"] / "dist",
    )


def swap_experts(t):
    hit = False
    for name in list(t):
        if ".experts.0." in name:
            other = name.replace(".experts.0.", ".experts.1.")
            if other in t:
                t[name], t[other] = t[other], t[name]
                hit = True
    return hit


def perturb_expert(t):
    hit = False
    for name in list(t):
        if ".experts.1." in name and name.endswith(".scales"):
            t[name] = (t[name].float() * 1.3).half()
            hit = True
    return hit


def drop_tensor(t):
    names = [n for n in t if n.endswith(".qzeros")]
    if names:
        t.pop(names[0])
    return bool(names)


def quantize_router(t):
    hit = False
    for name in list(t):
        if name.endswith("block_sparse_moe.gate.weight"):
            w = t[name].float()
            step = w.abs().max() / 7
            t[name] = (torch.round(w / step) * step).half()  # 4-bit-like router
            hit = True
    return hit


@pytest.mark.parametrize(
    "edit, failing, message",
    [
        (swap_experts, "quantization_parity", "quantization_parity: mean KL"),
        (perturb_expert, "quantization_parity", "quantization_parity: mean KL"),
        (
            quantize_router,
            "routing_parity",
            "routing_parity: every expert sees every token (top-2 of 2), so which experts run cannot change; "
            "router weights differ",
        ),
    ],
)
def test_broken_awq_candidates_fail_the_right_check(example, tmp_path, edit, failing, message):
    candidate = corrupt(example["awq"], tmp_path / "candidate", edit)
    proc = run_verify(example, candidate, tmp_path / "report")
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert f"error: verify failed: {message}" in proc.stderr
    report = json.loads((tmp_path / "report" / "verify.json").read_text())
    failed = {c["name"] for c in report["checks"] if c["state"] == "fail"}
    assert failing in failed and "merge_structure" not in failed


def test_a_candidate_gets_no_pass_for_checks_of_the_builds_own_merge(example, tmp_path):
    """`verify --candidate` on a plain copy of the build's AWQ folder: what needs the
    build's own 16-bit merge is not measured on it; what it ran on the copy passes."""
    candidate = tmp_path / "copy"
    shutil.copytree(example["awq"], candidate)
    proc = run_verify(example, candidate, tmp_path / "report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "verify.json").read_text())
    states = {c["name"]: c["state"] for c in report["checks"]}
    assert states["merge_structure"] == states["forced_routing"] == "not_measured"
    assert states["consumer_load"] == states["quantization_parity"] == states["routing_parity"] == "pass"
    assert states["dead_experts"] == "pass" and "the candidate's routing" in next(
        c["summary"] for c in report["checks"] if c["name"] == "dead_experts"
    )
    assert report["headline"] == "passed (4 passed, 0 warnings, 0 not applicable, 2 not measured, 0 failed)"
    assert proc.stdout.count(" not_measured ") == 2


def sixteen_bit_linear(t):
    name = next((n for n in t if n.endswith("layers.0.self_attn.q_proj.qweight")), None)
    if name is None:  # another shard
        return False
    module = name[: -len(".qweight")]
    for part in ("qweight", "qzeros", "scales"):
        t.pop(f"{module}.{part}")
    t[f"{module}.weight"] = torch.zeros(8, 8, dtype=torch.float16)
    return True


def wrong_scales_shape(t):
    name = next((n for n in t if n.endswith("layers.0.self_attn.q_proj.scales")), None)
    if name is None:  # another shard
        return False
    t[name] = t[name][:-1].clone()
    return True


def edit_config(**changes):
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


@pytest.mark.parametrize(
    "tensors, config, message",
    [
        (drop_tensor, None, "quantized tensors missing: model.layers."),
        (sixteen_bit_linear, None, "1 linears left in 16-bit"),
        (wrong_scales_shape, None, "1 quantized tensors with the wrong shape"),
        (None, edit_config(quantization_config=None), "no quantization_config; this is not an AWQ checkpoint"),
        (None, edit_config(vocab_size=4096), "config.json: vocab_size is 4096, the merged model's is 2048"),
        (None, edit_config(num_local_experts=3), "config.json: num_local_experts is 3, the merged model's is 2"),
    ],
)
def test_candidates_not_in_the_exact_awq_form_are_refused_in_one_line(example, tmp_path, tensors, config, message):
    candidate = corrupt(example["awq"], tmp_path / "candidate", tensors or (lambda t: False))
    if config:
        config(candidate)
    proc = run_verify(example, candidate, tmp_path / "report")
    assert proc.returncode == 6, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: verify failed: {candidate}: "), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "report").exists()


def test_uncompensated_router_fails_routing_parity(example, tmp_path):
    merged = {}
    for f in example["merged"].glob("*.safetensors"):
        merged.update(load_file(f))

    def uncompensate(t):
        hit = [n for n in t if n.endswith("block_sparse_moe.gate.weight")]
        for n in hit:
            t[n] = merged[n].clone()
        return bool(hit)

    candidate = corrupt(example["awq"], tmp_path / "candidate", uncompensate)
    proc = run_verify(example, candidate, tmp_path / "report")
    assert proc.returncode == 6 and "verify failed: routing_parity" in proc.stderr, proc.stdout + proc.stderr


def test_verify_without_candidate_checks_the_build(example):
    proc = run_cli("verify", str(EXAMPLE), build=example["root"] / "build", dist=example["root"] / "dist")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" pass ") == 6
    assert "verify    passed (6 passed, 0 warnings, 0 not applicable, 0 failed)" in proc.stdout


def test_structure_and_forced_routing_catch_a_bad_merge(example, fixture_models, tmp_path):
    swapped = corrupt(example["merged"], tmp_path / "swapped", swap_experts)
    experts = [fixture_models / "expert-code", fixture_models / "expert-prose"]
    s = merge_structure(swapped, fixture_models / "base", experts)
    assert s.mismatches and "differs from expert" in s.mismatches[0]
    assert s.expert_non_mlp_relative_diff[0]["attention"] == 0.0  # the fixtures share the base's attention
    windows = [("code", eval_ids(example["merged"], "code", 65)[0].tolist())]
    parity = forced_routing_parity(StreamingLM(swapped), [StreamingLM(e) for e in experts], windows)
    assert all(p.max_abs > 0.1 for p in parity)


def test_fully_finetuned_expert_is_reported(example, fixture_models, tmp_path):
    expert = tmp_path / "expert"
    shutil.copytree(fixture_models / "expert-code", expert)
    t = load_file(expert / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    t[name] = (t[name].float() * 1.1).half()
    save_file(t, expert / "model.safetensors", metadata={"format": "pt"})
    s = merge_structure(example["merged"], fixture_models / "base", [expert, fixture_models / "expert-prose"])
    assert 0.001 < s.expert_non_mlp_relative_diff[0]["attention"] < 0.2
    assert s.expert_non_mlp_relative_diff[1]["attention"] == 0.0


def test_failed_gate_stops_the_build_unless_overridden(example, tmp_path):
    data = example_data()
    data["name"] = "tiny-2x"
    data["verify"]["max_mean_kl"] = 1e-9
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(strict), build=example["root"] / "build", dist=tmp_path / "dist")
    assert proc.returncode == 6
    assert "error: verify failed: quantization_parity: mean KL" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads((tmp_path / "dist" / "tiny-2x" / "awq" / "verify.json").read_text())
    assert report["passed"] is False and report["enforced"] is True
    data["verify"]["fail_on_mismatch"] = False
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(lenient), build=example["root"] / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "dist" / "tiny-2x" / "awq" / "verify.json").read_text())
    assert report["passed"] is False and report["enforced"] is False
    md = (tmp_path / "dist" / "tiny-2x" / "awq" / "verify.md").read_text()
    assert "continue past failed checks (`verify.fail_on_mismatch: false`)" in md
    assert "## Verification: failed (" in md
