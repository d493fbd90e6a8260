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
