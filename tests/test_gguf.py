"""gguf: llama.cpp's own converter and quantizer make the files, llama.cpp itself
checks them, and a model its converter cannot take is refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from frankenmoe.quantization.llama_cpp import FTYPES, converter_refusal, pretokenizer_table, require_converter
from frankenmoe.recipe import GGUF_TYPES
from tests.conftest import EXAMPLE, REPO, example_data, run_cli

SMOLLM2 = REPO / "fixtures" / "smollm2"


def test_the_converters_own_table_decides_which_tokenizers_it_takes(fixture_models):
    text, table = pretokenizer_table(require_converter())
    assert "smollm" in table.values() and len(text) > 100
    assert converter_refusal(fixture_models / "base", "MixtralForCausalLM").startswith(
        "llama.cpp's converter (0.3.36) does not recognise this tokenizer's pre-tokenizer"
    )
    assert "no architecture NopeForCausalLM" in converter_refusal(fixture_models / "base", "NopeForCausalLM")


def test_an_accepted_tokenizer_is_remembered_by_its_files(tmp_path, monkeypatch):
    """A no-op rebuild must not pay transformers' import for the converter check:
    a tokenizer the converter took is remembered; any change to its files checks again."""
    from frankenmoe.quantization import llama_cpp

    monkeypatch.setenv("FRANKENMOE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "base"
    shutil.copytree(SMOLLM2 / "base", model, ignore=shutil.ignore_patterns("*.safetensors", "*.gguf"))
    assert converter_refusal(model, "MixtralForCausalLM") is None
    monkeypatch.setattr(llama_cpp, "_pretokenizer_refusal", lambda *a: pytest.fail("checked again"))
    assert converter_refusal(model, "MixtralForCausalLM") is None
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 7}))
    monkeypatch.setattr(llama_cpp, "_pretokenizer_refusal", lambda *a: "refused")
    assert converter_refusal(model, "MixtralForCausalLM") == "refused"


def test_a_model_the_converter_cannot_take_is_refused_before_any_work(fixture_models, tmp_path):
    data = example_data()
    data["gguf"] = {"enabled": True}
    recipe = tmp_path / "gguf-on.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=tmp_path / "build", dist=tmp_path / "dist")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pre-tokenizer" in lines[0] and "set gguf.enabled: false" in lines[0]
    assert not any((tmp_path / "build").rglob("record.json"))


def test_unknown_gguf_types_are_recipe_errors(tmp_path):
    data = example_data()
    data["gguf"] = {"types": ["Q8_0", "Q3_XL"]}
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("validate", str(recipe))
    assert proc.returncode == 2 and "gguf.types" in proc.stderr and "Q3_XL" in proc.stderr


def test_every_type_a_recipe_may_name_has_its_llama_cpp_number():
    assert list(GGUF_TYPES) == list(FTYPES)


@pytest.mark.slow
def test_real_example_gguf_files_pass_llama_cpps_own_check(real):
    folder = real["dist"] / "gguf"
    names = sorted(p.name for p in folder.glob("*.gguf"))
    assert names == ["smollm2-2x-Q4_K_M.gguf", "smollm2-2x-Q8_0.gguf"]
    report = json.loads((folder / "verify.json").read_text())
    assert report["passed"], report["failures"]
    states = {c["name"]: c["state"] for c in report["checks"]}
    assert set(states.values()) <= {"pass", "not_measured"} and states["Q8_0: expert placement"] == "pass", states
    for t in ("Q8_0", "Q4_K_M"):
        facts = report["files"][t]["read_by_llama_cpp"]
        assert facts["expert_count"] == 2 and facts["expert_used_count"] == 2
        parity = next(c for c in report["checks"] if c["name"] == f"{t}: parity")
        assert set(parity["per_domain"]) == {"code", "prose"} and parity["tokens"] >= 4000
    q8, q4 = (next(c for c in report["checks"] if c["name"] == f"{t}: parity") for t in ("Q8_0", "Q4_K_M"))
    assert q8["kl_mean"] < q4["kl_mean"]  # more bits, closer to 16 bits
    card = (folder / "README.md").read_text()
    assert "base_model_relation: quantized" in card and "llama-cli -m smollm2-2x-Q4_K_M.gguf" not in card
    assert "llama-cli -m smollm2-2x-Q8_0.gguf" in card
    assert (folder / "build.json").is_file()
    manifest = json.loads((folder / "build.json").read_text())
    assert set(manifest["files"]) >= {*names, "verify.json", "verify.md", "README.md"}


@pytest.mark.slow
def test_an_independent_llama_cpp_run_loads_generates_and_agrees(real):
    """Not the project's code: llama-cpp-python directly, on the published file and
    the reference log-probs that evaluate stored."""
    import torch
    from llama_cpp import Llama
    from safetensors import safe_open

    path = real["dist"] / "gguf" / "smollm2-2x-Q4_K_M.gguf"
    llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    text = llm("def fibonacci(n):", max_tokens=24, temperature=0)["choices"][0]["text"]
    assert text.strip(), "no text generated"
    evaluate = next((real["root"] / "build" / "smollm2-2x" / "evaluate").glob("*/reference.safetensors"))
    with safe_open(evaluate, framework="pt") as st:
        tokens, ref = st.get_tensor("tokens"), st.get_tensor("logprobs")
    kls = []
    for w in range(4):
        ids = tokens[w].tolist()[:-1]
        llm.reset()
        llm.eval(ids)
        lp = torch.log_softmax(torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32)), -1)
        kls.append((ref[w].exp() * (ref[w] - lp)).sum(-1))
    mine = float(torch.cat(kls).mean())
    report = json.loads((real["dist"] / "gguf" / "verify.json").read_text())
    theirs = next(c for c in report["checks"] if c["name"] == "Q4_K_M: parity")["kl_mean"]
    assert abs(mine - theirs) < 0.5 * theirs, (mine, theirs)  # 4 windows against all of them: noise


def swap_expert_slices(src: Path, dst: Path) -> None:
    """Swap experts 0 and 1 of one stacked expert tensor, in a copy of the file."""
    import sys

    shutil.copy2(src, dst)
    sys.path.insert(0, str(require_converter() / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.pop(0)
    reader = GGUFReader(dst, "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.3.ffn_down_exps.weight")
    data = tensor.data
    first = np.array(data[0], copy=True)
    data[0] = data[1]
    data[1] = first
    reader.data.flush()


@pytest.mark.slow
def test_a_gguf_with_swapped_experts_fails_verify_candidate(real, tmp_path):
    candidate = tmp_path / "swapped-Q8_0.gguf"
    swap_expert_slices(real["dist"] / "gguf" / "smollm2-2x-Q8_0.gguf", candidate)
    proc = run_cli(
        "verify",
        str(REPO / "recipes" / "smollm2-2x.yaml"),
        "--candidate",
        str(candidate),
        "--out",
        str(tmp_path / "report"),
        build=real["root"] / "build",
        dist=real["root"] / "dist",
    )
    assert proc.returncode == 6, proc.stdout + proc.stderr
    # One layer's swap barely moves the logits of experts this alike (KL stays within
    # the limit); the tensor comparison finds it.
    assert "error: verify failed: Q8_0: expert placement: " in proc.stderr
    assert "blk.3.ffn_down_exps.weight expert 0 holds the merge's expert 1" in proc.stderr
    report = json.loads((tmp_path / "report" / "verify.json").read_text())
    assert not report["passed"] and report["verdict"] == "failed"
    ours = json.loads((real["dist"] / "gguf" / "verify.json").read_text())
    placement = next(c for c in ours["checks"] if c["name"] == "Q8_0: expert placement")
    assert ours["passed"] and placement["state"] == "pass" and not placement["misplaced"]


@pytest.mark.slow
def test_a_q4_k_m_gguf_with_swapped_experts_is_never_passed(real, tmp_path):
    """At 4 bits the quantization noise can hide how little two fine-tuned experts
    differ: the placement check then says not measured; it must never say pass."""
    candidate = tmp_path / "swapped-Q4_K_M.gguf"
    swap_expert_slices(real["dist"] / "gguf" / "smollm2-2x-Q4_K_M.gguf", candidate)
    proc = run_cli(
        "verify",
        str(REPO / "recipes" / "smollm2-2x.yaml"),
        "--candidate",
        str(candidate),
        "--out",
        str(tmp_path / "report"),
        build=real["root"] / "build",
        dist=real["root"] / "dist",
    )
    report = json.loads((tmp_path / "report" / "verify.json").read_text())
    placement = next(c for c in report["checks"] if c["name"] == "Q4_K_M: expert placement")
    assert placement["state"] in ("fail", "not_measured"), placement
    assert proc.returncode == (6 if report["failures"] else 0), proc.stdout + proc.stderr


def test_example_recipes_have_gguf_on_and_tiny_ones_off():
    for name in ("smollm2-2x", "smollm2-3x"):
        data = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
        assert data.get("gguf", {}).get("enabled", True) is True
    assert yaml.safe_load(EXAMPLE.read_text())["gguf"] == {"enabled": False}


def _identity_of(tmp_path: Path, slices: np.ndarray, sources: list[np.ndarray]) -> dict:
    """expert_identity on a one-tensor GGUF (float32 slices) against a merge folder."""
    import sys

    from safetensors.numpy import save_file

    from frankenmoe.quantization.llama_cpp import expert_identity

    merged = tmp_path / "merged"
    merged.mkdir(exist_ok=True)
    save_file(
        {f"model.layers.0.block_sparse_moe.experts.{e}.w2.weight": s for e, s in enumerate(sources)},
        str(merged / "model.safetensors"),
    )
    sys.path.insert(0, str(require_converter() / "gguf-py"))
    try:
        from gguf import GGUFWriter

        path = tmp_path / "one.gguf"
        writer = GGUFWriter(str(path), "llama")
        writer.add_tensor("blk.0.ffn_down_exps.weight", slices.astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return expert_identity(str(path), merged)
    finally:
        sys.path.pop(0)


def test_expert_placement_passes_right_fails_swapped_and_does_not_measure_collapsed_experts(tmp_path):
    """The real example at Q4_K_M made this necessary: rounding can pull two alike
    experts onto one grid, where the nearest expert is a coin toss."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(32, 48)).astype(np.float32)
    sources = [base, base + 0.05 * rng.normal(size=base.shape).astype(np.float32)]
    noise = 0.01 * rng.normal(size=(2, 32, 48))
    right = _identity_of(tmp_path, np.stack(sources) + noise, sources)
    assert right["expert_tensors"] == 2 and not right["misplaced"] and right["indistinguishable"] == 0, right
    assert right["min_kept"] > 0.9
    swapped = _identity_of(tmp_path, np.stack(sources[::-1]) + noise, sources)
    assert len(swapped["misplaced"]) == 2 and "expert 0 holds the merge's expert 1" in swapped["misplaced"][0]
    # Both slices rounded to one value, with noise larger than the experts' difference:
    # whichever expert is nearer is chance, so not measured.
    collapsed = np.stack([base, base]) + 0.2 * rng.normal(size=(2, 32, 48))
    unclear = _identity_of(tmp_path, collapsed, sources)
    assert unclear["indistinguishable"] == 2 and not unclear["misplaced"], unclear
