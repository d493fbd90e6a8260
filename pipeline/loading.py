"""Load published folders for inference, failing loudly on any mismatch of tensors.

transformers returns a model even when checkpoint tensors are missing (it
initializes them randomly) or unexpected (it drops them). For a check that a
merge or a quantization is right, either case must be an error.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputFileError


def load_merged(path: Path, dtype: str = "float32"):
    """The merged 16-bit MoE (or any plain causal LM folder), on the CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), output_loading_info=True, device_map="cpu"
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        detail = "; ".join(f"{k}: {sorted(v)[:3]}{' ...' if len(v) > 3 else ''}" for k, v in problems.items())
        raise InputFileError(f"{path}: checkpoint does not match the model ({detail})")
    return model.eval()


def awq_state_dict(path: Path, dtype=None) -> tuple[dict, dict]:
    """Dequantize a folder in the published AWQ layout into Mixtral tensors with
    per-expert names (`mlp.experts.E.{gate,up,down}_proj.weight`). Returns
    (state_dict, config dict). Every tensor of the folder must be used exactly
    once, or this raises."""
    import json
    import re

    import torch
    from safetensors import safe_open

    from pipeline.awq_layout import W_TO_PROJ, dequantize

    dtype = dtype or torch.float16
    config = json.loads((Path(path) / "config.json").read_text())
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "awq" or qc.get("version") != "gemm":
        raise InputFileError(f"{path}: config.json has no AWQ GEMM quantization_config")
    group = qc["group_size"]
    raw: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            raw.update({k: st.get_tensor(k) for k in st.keys()})
    if not raw:
        raise InputFileError(f"{path}: no safetensors files")
    used: set[str] = set()

    def linear(prefix: str) -> torch.Tensor:
        parts = [f"{prefix}.{p}" for p in ("qweight", "qzeros", "scales")]
        missing = [p for p in parts if p not in raw]
        if missing:
            raise InputFileError(f"{path}: missing tensor {missing[0]}")
        used.update(parts)
        return dequantize(*(raw[p] for p in parts), group).to(dtype)

    state = {}
    layers = config["num_hidden_layers"]
    n_exp = config["num_local_experts"]
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"model.layers.{i}.self_attn.{proj}.weight"] = linear(f"model.layers.{i}.self_attn.{proj}")
        moe = f"model.layers.{i}.block_sparse_moe"
        for e in range(n_exp):
            for w, proj in W_TO_PROJ.items():
                state[f"model.layers.{i}.mlp.experts.{e}.{proj}.weight"] = linear(f"{moe}.experts.{e}.{w}")
        router = f"{moe}.gate.weight"
        if router not in raw:
            raise InputFileError(f"{path}: missing tensor {router}")
        state[f"model.layers.{i}.mlp.gate.weight"] = raw[router].to(dtype)
        used.add(router)
    quantized = re.compile(r"\.(qweight|qzeros|scales)$")
    for name, t in raw.items():
        if name not in used:
            if quantized.search(name):
                raise InputFileError(f"{path}: unexpected tensor {name}")
            state[name] = t.to(dtype)
            used.add(name)
    return state, config


def _fuse_experts(state: dict, layers: int, n_exp: int) -> dict:
    """Per-expert weights -> transformers 5's fused `gate_up_proj` / `down_proj`.

    transformers 5 fuses experts; GPTQModel, once imported, patches Mixtral back to
    per-expert linears in the whole process. The loader serves either layout."""
    import torch

    out = dict(state)
    for i in range(layers):
        p = f"model.layers.{i}.mlp.experts"
        gate = [out.pop(f"{p}.{e}.gate_proj.weight") for e in range(n_exp)]
        up = [out.pop(f"{p}.{e}.up_proj.weight") for e in range(n_exp)]
        down = [out.pop(f"{p}.{e}.down_proj.weight") for e in range(n_exp)]
        out[f"{p}.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        out[f"{p}.down_proj"] = torch.stack(down)
    return out


def load_awq(path: Path, dtype: str = "float16"):
    """A folder in the published AWQ layout as a plain Mixtral on the CPU, with
    its weights dequantized. Fails on any missing or unexpected tensor."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch_dtype = getattr(torch, dtype)
    state, config = awq_state_dict(path, torch_dtype)
    config = {k: v for k, v in config.items() if k != "quantization_config"}
    cfg = MixtralConfig(**config)
    with torch.device("meta"):
        model = MixtralForCausalLM(cfg)
    expected = set(model.state_dict())
    if not any(".mlp.experts.0.gate_proj.weight" in k for k in expected):
        state = _fuse_experts(state, cfg.num_hidden_layers, cfg.num_local_experts)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InputFileError(f"{path}: checkpoint does not match the model (missing: {missing[:3]}, unexpected: {unexpected[:3]})")
    model.load_state_dict(state, assign=True, strict=True)
    model = model.to(torch_dtype)
    # Its buffers are not in the checkpoint; made after the cast so they stay float32.
    model.model.rotary_emb = type(model.model.rotary_emb)(cfg)
    return model.eval()


def load_model(path: Path, dtype: str = "float32"):
    """Either published folder: AWQ if its config says so, else 16-bit."""
    import json

    cfg = json.loads((Path(path) / "config.json").read_text())
    if (cfg.get("quantization_config") or {}).get("quant_method") == "awq":
        return load_awq(path, dtype)
    return load_merged(path, dtype)
