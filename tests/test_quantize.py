"""quantize: the published AWQ folder keeps the AutoAWQ Mixtral GEMM contract,
reads back through AutoAWQ's own dequantizer, and keeps routing exact."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from frankenmoe.checkpoints.awq_format import dequantize, unpack_int4
from frankenmoe.checkpoints.loading import load_awq, load_merged
from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.errors import InputFileError
from frankenmoe.quantization.awq_layout import quantization_config
from tests.conftest import REPO, example_data, run_cli
from tests.test_example_build import eval_ids, tensors

pytestmark = pytest.mark.slow

QUANT = re.compile(
    r"^model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|block_sparse_moe\.experts\.(\d+)\.w[123])\.(qweight|qzeros|scales)$"
)


def autoawq_dequantize_gemm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from awq.utils.packing_utils import dequantize_gemm
    return dequantize_gemm


def test_names_dtypes_shapes_and_config_match_the_contract(example):
    awq = example["awq"]
    config = json.loads((awq / "config.json").read_text())
    assert config["quantization_config"] == quantization_config(4, 128, False)  # symmetric: the default
    assert config["architectures"] == ["MixtralForCausalLM"] and config["dtype"] == "float16"
    t = tensors(awq)
    H, I, G = config["hidden_size"], config["intermediate_size"], 128
    layers, n_exp = config["num_hidden_layers"], config["num_local_experts"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    expected_linears = {}
    for i in range(layers):
        for proj, out_f in (("q_proj", H), ("k_proj", kv), ("v_proj", kv), ("o_proj", H)):
            expected_linears[f"model.layers.{i}.self_attn.{proj}"] = (H, out_f)
        for e in range(n_exp):
            p = f"model.layers.{i}.block_sparse_moe.experts.{e}"
            expected_linears[f"{p}.w1"] = (H, I)
            expected_linears[f"{p}.w3"] = (H, I)
            expected_linears[f"{p}.w2"] = (I, H)
    for prefix, (in_f, out_f) in expected_linears.items():
        assert t[f"{prefix}.qweight"].dtype == torch.int32 and t[f"{prefix}.qweight"].shape == (in_f, out_f // 8)
        assert t[f"{prefix}.qzeros"].dtype == torch.int32 and t[f"{prefix}.qzeros"].shape == (in_f // G, out_f // 8)
        assert t[f"{prefix}.scales"].dtype == torch.float16 and t[f"{prefix}.scales"].shape == (in_f // G, out_f)
    plain = {n for n in t if not QUANT.match(n)}
    assert plain == {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}"
        for i in range(layers)
        for n in ("input_layernorm.weight", "post_attention_layernorm.weight", "block_sparse_moe.gate.weight")
    }
    assert all(t[n].dtype == torch.float16 for n in plain)
    assert len(t) == len(plain) + 3 * len(expected_linears)
    index = json.loads((awq / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(t)
    for f in awq.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            assert st.metadata() == {"format": "pt"}


def test_no_engine_side_files_or_local_paths(example):
    names = {p.name for p in example["awq"].iterdir()}
    assert not names & {"quantize_config.json", "quant_log.csv"}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"} <= names
    for f in example["awq"].glob("*.json"):
        text = f.read_text()
        assert "/tmp" not in text and str(REPO) not in text and str(example["root"]) not in text, f.name


def test_autoawq_reads_every_tensor_and_gives_the_loaders_logits(example):
    """An independent reader: AutoAWQ's dequantize_gemm builds a plain float16
    Mixtral; the project's loader must give the same logits."""
    from transformers import MixtralConfig, MixtralForCausalLM

    dequantize_gemm = autoawq_dequantize_gemm()
    awq = example["awq"]
    config = json.loads((awq / "config.json").read_text())
    t = tensors(awq)
    weights = {}
    for name in t:
        m = QUANT.match(name)
        if m and name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            w = dequantize_gemm(t[name], t[f"{prefix}.qzeros"], t[f"{prefix}.scales"], 4, 128)
            weights[prefix] = w.t().contiguous().half()  # [out, in] as nn.Linear
    state = {}
    for i in range(config["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"model.layers.{i}.self_attn.{proj}.weight"] = weights[f"model.layers.{i}.self_attn.{proj}"]
        ex = [f"model.layers.{i}.block_sparse_moe.experts.{e}" for e in range(config["num_local_experts"])]
        state[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[f"{p}.w1"], weights[f"{p}.w3"]]) for p in ex]
        )
        state[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([weights[f"{p}.w2"] for p in ex])
        state[f"model.layers.{i}.mlp.gate.weight"] = t[f"model.layers.{i}.block_sparse_moe.gate.weight"]
        for n in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            state[f"model.layers.{i}.{n}"] = t[f"model.layers.{i}.{n}"]
    for n in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        state[n] = t[n]
    plain = MixtralForCausalLM(MixtralConfig(**{k: v for k, v in config.items() if k != "quantization_config"}))
    plain.load_state_dict({k: v.half().float() for k, v in state.items()}, strict=True)  # fp16 weights, run in fp32
    ids = eval_ids(awq, "code", 128)
    ours = load_awq(awq, "float16")
    with torch.no_grad():
        want = plain(ids).logits
        got = ours.float()(ids).logits
    assert torch.equal(got, want)
    ((streamed, _),) = StreamingLM(awq).run(ids.tolist())  # the reader verify uses
    assert torch.equal(streamed, torch.log_softmax(want[0], -1))


def test_4bit_model_is_close_to_16bit(example):
    ids = eval_ids(example["merged"], "prose", 256)
    with torch.no_grad():
        p16 = torch.log_softmax(load_merged(example["merged"])(ids).logits, -1)
        p4 = torch.log_softmax(load_awq(example["awq"], "float32")(ids).logits, -1)
    kl = (p16.exp() * (p16 - p4)).sum(-1).mean().item()
    agree = (p16.argmax(-1) == p4.argmax(-1)).float().mean().item()
    assert kl < 0.05 and agree > 0.85, (kl, agree)


def test_router_compensation_keeps_router_logits(example):
    """On real hidden states: the published router over the rescaled norm gives the
    16-bit router's logits; the uncompensated router drifts."""
    m16 = tensors(example["merged"])
    m4 = tensors(example["awq"])
    model = load_merged(example["merged"])
    captured = {}
    hooks = [
        layer.post_attention_layernorm.register_forward_hook(
            lambda mod, inp, out, i=i: captured.__setitem__(i, (inp[0], mod.variance_epsilon))
        )
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(eval_ids(example["merged"], "code", 256))
    for h in hooks:
        h.remove()
    drift_without, drift_with = [], []
    for i, (x, eps) in captured.items():
        n = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))[0]
        old = m16[f"model.layers.{i}.post_attention_layernorm.weight"].float()
        new = m4[f"model.layers.{i}.post_attention_layernorm.weight"].float()
        w16 = m16[f"model.layers.{i}.block_sparse_moe.gate.weight"].float()
        w4 = m4[f"model.layers.{i}.block_sparse_moe.gate.weight"].float()
        assert not torch.equal(old, new), "AWQ did not rescale the norm: the test would prove nothing"
        ref = (n * old) @ w16.t()
        scale = ref.abs().max()
        drift_with.append(((n * new) @ w4.t() - ref).abs().max() / scale)
        drift_without.append(((n * new) @ w16.t() - ref).abs().max() / scale)
    assert max(drift_with) < 5e-3, drift_with
    assert min(drift_without) > 10 * max(drift_with), (drift_without, drift_with)


def test_loader_fails_on_missing_or_unexpected_tensors(example, tmp_path):
    import shutil

    for case in ("missing", "unexpected"):
        copy = tmp_path / case
        shutil.copytree(example["awq"], copy)
        shard = sorted(copy.glob("*.safetensors"))[-1]
        t = load_file(shard)
        if case == "missing":
            t.pop(sorted(k for k in t if k.endswith(".qzeros"))[0])
        else:
            t["model.layers.0.block_sparse_moe.experts.9.w1.qweight"] = torch.zeros(4, 4, dtype=torch.int32)
        save_file(t, shard, metadata={"format": "pt"})
        with pytest.raises(
            InputFileError, match=case.replace("unexpected", "unexpected tensor").replace("missing", "missing tensor")
        ):
            load_awq(copy)


def test_generate_runs_on_the_awq_folder(example):
    proc = run_cli("generate", str(example["awq"]), "--prompt", "def main(", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("def main(") and len(proc.stdout.strip()) > len("def main(")


def test_too_little_calibration_for_an_expert_fails_naming_it(example, tmp_path):
    data = example_data()
    data["name"] = "tiny-2x"
    data["experts_per_token"] = 1
    data["quantize"]["calibration"] = {"samples": 2, "seq_len": 64}
    data["quantize"]["min_expert_tokens"] = 100  # 128 tokens, top-1: some expert must get < 100
    data["quantize"]["calibrate_all_experts"] = False  # only then do experts see just their routed tokens
    recipe = tmp_path / "thin.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), build=example["root"] / "build", dist=tmp_path / "dist", cwd=REPO)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert re.search(
        r"error: quantize: layer \d+ expert \d+ gets \d+ routed calibration tokens, fewer than min_expert_tokens 100"
        r".*quantize.calibrate_all_experts: true.*gates.fit: true",
        proc.stderr,
    )
    assert "Traceback" not in proc.stderr
    assert not [
        p
        for p in (example["root"] / "build" / "tiny-2x" / "quantize").iterdir()
        if not p.name.startswith(".")
        and json.loads((p / "record.json").read_text())["config"].get("min_expert_tokens") == 100
    ]


def test_unpack_matches_autoawq_on_random_data():
    dequantize_gemm = autoawq_dequantize_gemm()
    g = torch.Generator().manual_seed(0)
    qweight = torch.randint(-(2**31), 2**31 - 1, (256, 16), generator=g, dtype=torch.int64).to(torch.int32)
    qzeros = torch.randint(-(2**31), 2**31 - 1, (2, 16), generator=g, dtype=torch.int64).to(torch.int32)
    scales = torch.rand(2, 128, generator=g).half()
    want = dequantize_gemm(qweight, qzeros, scales, 4, 128)
    assert torch.equal(dequantize(qweight, qzeros, scales, 128).t().half(), want)
    assert unpack_int4(torch.tensor([[0x76543210]], dtype=torch.int32)).tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]


def test_engine_env_tunes_the_allocator_unless_the_user_did():
    from frankenmoe.quantization.awq_engine import ALLOCATOR, engine_env

    env = engine_env({"MALLOC_ARENA_MAX": "4", "PATH": "/bin"})
    assert env["MALLOC_ARENA_MAX"] == "4" and env["PATH"] == "/bin"
    assert all(env[k] == v for k, v in ALLOCATOR.items() if k != "MALLOC_ARENA_MAX")
    assert int(env["GPTQMODEL_CPU_WORKERS"]) >= 2


def test_all_experts_calibration_needs_no_routed_tokens(example, tmp_path):
    """The same thin, top-1 calibration passes with every token through every expert,
    and the record says what each expert saw, counted inside the engine."""
    data = example_data()
    data["name"] = "tiny-2x"
    data["experts_per_token"] = 1
    data["quantize"]["calibration"] = {"samples": 2, "seq_len": 64}
    data["quantize"]["min_expert_tokens"] = 100
    data["verify"]["fail_on_mismatch"] = False  # top-1 of 2 on 128 tokens: only the calibration is under test
    recipe = tmp_path / "thin-all.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = run_cli("build", str(recipe), "--until", "quantize", build=example["root"] / "build", dist=tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every expert's input gets all 128 tokens" in proc.stdout
    out = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("quantize  ran"))
    result = json.loads((Path(out) / "record.json").read_text())["result"]
    assert result["calibrate_all_experts"] and result["undercalibrated"] == []
    assert result["expert_tokens"] is None  # no 16-bit routing pass: nothing depends on it
    assert result["expert_tokens_seen"] == [[128, 128]] * 4
