"""Load published folders for inference, failing loudly on any mismatch of tensors.

transformers returns a model even when checkpoint tensors are missing (it
initializes them randomly) or unexpected (it drops them). For a check that a
merge or a quantization is right, either case must be an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from frankenmoe.checkpoints.streaming import StreamingLM
from frankenmoe.errors import InputFileError
from frankenmoe.support.progress import progress


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


def load_awq(path: Path, dtype: str = "float16"):
    """A folder in the published AWQ layout as a plain Mixtral on the CPU, with
    its weights dequantized by the reader verification streams through
    (frankenmoe/checkpoints/streaming.py). Fails on any missing, mis-shaped or unexpected tensor."""
    lm = StreamingLM(path, dtype)
    problems = lm.check()
    if problems:
        raise InputFileError(f"{path}: checkpoint does not match the model ({'; '.join(problems[:3])})")
    model = lm.model
    model.load_state_dict({k: lm.reader.tensor(k).to(lm.dtype) for k in model.state_dict()}, assign=True, strict=True)
    # Its buffers are not in the checkpoint; made on the CPU in float32, as a loaded model has them.
    model.model.rotary_emb = type(model.model.rotary_emb)(lm.config)
    return model.eval()


def load_model(path: Path, dtype: str = "float32"):
    """Either published folder: AWQ if its config says so, else 16-bit."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    if (cfg.get("quantization_config") or {}).get("quant_method") == "awq":
        return load_awq(path, dtype)
    return load_merged(path, dtype)


class LoadedLM:
    """A model loaded whole by its reader (transformers), run as StreamingLM runs a
    folder: per window, the next-token log-probs [T, V] and the routers' softmax
    [L, T, E], so verify's comparison takes either."""

    def __init__(self, model, batch_size: int = 4) -> None:
        self.model = model
        self.batch_size = batch_size

    def run(self, windows: list[list[int]], desc: str = "windows") -> Iterator[tuple[object, object]]:
        import torch

        batches = [windows[i : i + self.batch_size] for i in range(0, len(windows), self.batch_size)]
        with torch.no_grad():
            for batch in progress(batches, desc=desc):
                ids = torch.tensor(batch)
                out = self.model(input_ids=ids, output_router_logits=True)
                logprobs = torch.log_softmax(out.logits.float(), -1)
                b, t = ids.shape
                routers = torch.stack([torch.softmax(r.float(), -1).view(b, t, -1) for r in out.router_logits], 1)
                yield from zip(logprobs, routers)
