"""Run a causal LM one decoder layer at a time, straight from its safetensors.

A 2x7B MoE is 26 GB in 16 bits and 52 GB as float32: more than a 24 GiB machine
holds, and verification needs the 16-bit model, its sources and the 4-bit
candidate. So no model is ever loaded whole: its skeleton is built on the meta
device, and each layer in turn is materialized from the checkpoint, run over every
window, and dropped. Peak memory is one layer's weights plus the windows' hidden
states, whatever the depth. The layers are transformers' own modules, so the
outputs equal a fully loaded model's (tested).

One reader serves every folder the pipeline makes or reads: dense sources
(Mistral/Llama names), the merged MoE (classic Mixtral names, which transformers 5
fuses on load) and the published AWQ GEMM layout (dequantized per linear on read).
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from frankenmoe.checkpoints.awq_format import PROJ_TO_W, QUANT_PARTS, dequantize
from frankenmoe.checkpoints.moe_blocks import forced_expert
from frankenmoe.errors import InputFileError
from frankenmoe.support.progress import progress

MLP_KEY = re.compile(r"^(model\.layers\.\d+)\.mlp\.(.+)$")
PER_EXPERT = re.compile(r"^experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointReader:
    """A model folder's tensors by name, read one at a time, never all at once.

    `tensor(key)` takes the key a transformers module expects and builds it from
    the checkpoint: classic Mixtral expert names are fused (or renamed) the way
    transformers 5 does on load, and an AWQ linear's `qweight/qzeros/scales` are
    dequantized to the float weight. `sources(key)` names the checkpoint tensors
    behind a key, so a check finds what a model would miss or silently drop."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        config_file = self.folder / "config.json"
        if not config_file.is_file():
            raise InputFileError(f"{self.folder}: no config.json")
        self.config = json.loads(config_file.read_text())
        qc = self.config.get("quantization_config") or {}
        if qc and (qc.get("quant_method") != "awq" or qc.get("version") != "gemm"):
            raise InputFileError(f"{self.folder}: config.json has a quantization_config that is not AWQ GEMM")
        self.group_size = qc.get("group_size")
        self.files: dict[str, Path] = {}
        for f in sorted(self.folder.glob("*.safetensors")):
            with safe_open(f, framework="pt") as st:
                self.files.update({k: f for k in st.keys()})
        if not self.files:
            raise InputFileError(f"{self.folder}: no safetensors files")
        self.classic_moe = any(".block_sparse_moe." in k for k in self.files)

    def _raw(self, name: str):
        from safetensors import safe_open

        if name not in self.files:
            raise InputFileError(f"{self.folder}: missing tensor {name}")
        # Opened per read: a file held open stays mapped, and every page read
        # would count in the process's memory until the end of the pass.
        with safe_open(self.files[name], framework="pt") as st:
            return st.get_tensor(name)

    def get(self, name: str):
        """A checkpoint tensor by its own name, or None."""
        return self._raw(name) if name in self.files else None

    def _is_awq_linear(self, weight: str) -> bool:
        return (
            bool(self.group_size) and weight not in self.files and f"{weight[: -len('.weight')]}.qweight" in self.files
        )

    def _plan(self, key: str) -> tuple[list[str], str]:
        """The checkpoint weights that make module key `key`, and how: "one",
        "gate_up" (per expert cat(w1, w3), stacked) or "stack"."""
        m = MLP_KEY.match(key)
        if not (m and self.classic_moe):
            if key == "lm_head.weight" and key not in self.files and self.config.get("tie_word_embeddings"):
                return ["model.embed_tokens.weight"], "one"
            return [key], "one"
        layer, rest = m.groups()
        moe = f"{layer}.block_sparse_moe"
        n_exp = self.config["num_local_experts"]
        if rest == "experts.gate_up_proj":
            return [f"{moe}.experts.{e}.{w}.weight" for e in range(n_exp) for w in ("w1", "w3")], "gate_up"
        if rest == "experts.down_proj":
            return [f"{moe}.experts.{e}.w2.weight" for e in range(n_exp)], "stack"
        if p := PER_EXPERT.match(rest):
            return [f"{moe}.experts.{p.group(1)}.{PROJ_TO_W[p.group(2)]}.weight"], "one"
        return [f"{moe}.{rest}" if rest == "gate.weight" else key], "one"

    def sources(self, key: str) -> list[str]:
        """Every checkpoint tensor read to make module key `key`."""
        weights, _ = self._plan(key)
        return [
            f"{w[: -len('.weight')]}.{p}" if self._is_awq_linear(w) else w
            for w in weights
            for p in (QUANT_PARTS if self._is_awq_linear(w) else ("",))
        ]

    def _weight(self, name: str):
        import torch

        if self._is_awq_linear(name):
            prefix = name[: -len(".weight")]
            # Through fp16, like the weight the GEMM kernel dequantizes.
            return dequantize(*(self._raw(f"{prefix}.{p}") for p in QUANT_PARTS), self.group_size).to(torch.float16)
        return self._raw(name)

    def shape(self, key: str) -> tuple[int, ...] | None:
        """The shape `tensor(key)` would have, from the file headers alone; None
        when its parts do not fit together."""
        from safetensors import safe_open

        def one(weight: str) -> tuple[int, ...]:
            if self._is_awq_linear(weight):
                with safe_open(self.files[f"{weight[: -len('.weight')]}.qweight"], framework="pt") as st:
                    rows, packed = st.get_slice(f"{weight[: -len('.weight')]}.qweight").get_shape()
                return (packed * 8, rows)  # qweight is [in, out/8]; the weight [out, in]
            with safe_open(self.files[weight], framework="pt") as st:
                return tuple(st.get_slice(weight).get_shape())

        weights, how = self._plan(key)
        shapes = [one(w) for w in weights]
        if how == "one":
            return shapes[0]
        if how == "gate_up":
            pairs = [shapes[i : i + 2] for i in range(0, len(shapes), 2)]
            fused = {(a[0] + b[0], *a[1:]) if a[1:] == b[1:] else None for a, b in pairs}
            return (len(pairs), *fused.pop()) if len(fused) == 1 and None not in fused else None
        return (len(shapes), *shapes[0]) if len(set(shapes)) == 1 else None

    def tensor(self, key: str):
        """The tensor a transformers module calls `key`."""
        import torch

        weights, how = self._plan(key)
        parts = [self._weight(w) for w in weights]
        if how == "gate_up":
            return torch.stack([torch.cat(parts[i : i + 2]) for i in range(0, len(parts), 2)])
        return torch.stack(parts) if how == "stack" else parts[0]


class StreamingLM:
    """A causal LM run layer by layer from `folder` (see the module docstring)."""

    def __init__(self, folder: Path, dtype: str = "float32"):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.reader = CheckpointReader(folder)
        config = {k: v for k, v in self.reader.config.items() if k != "quantization_config"}
        self.config = AutoConfig.for_model(**config)
        self.dtype = getattr(torch, dtype)
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype).eval()
        self.is_moe = hasattr(self.model.model.layers[0].mlp, "gate")

    @contextmanager
    def _materialized(self, module, prefix: str):
        """`module` with its weights read from the checkpoint, dropped on exit."""
        keys = list(module.state_dict())
        state = {k: self.reader.tensor(prefix + k).to(self.dtype) for k in keys}
        module.load_state_dict(state, strict=True, assign=True)
        try:
            yield module
        finally:
            module.to_empty(device="meta")

    def check(self) -> list[str]:
        """Missing, mis-shaped and unexpected checkpoint tensors, from the file
        headers alone: what a consumer loading the folder would hit."""
        problems, used = [], set()
        for prefix, module in self._parts():
            for key, param in module.state_dict().items():
                sources = self.reader.sources(prefix + key)
                used.update(sources)
                missing = [s for s in sources if s not in self.reader.files]
                if missing:
                    problems += [f"missing tensor {s}" for s in missing]
                    continue
                shape = self.reader.shape(prefix + key)
                if shape != tuple(param.shape):
                    problems.append(f"{prefix + key} has shape {shape}, the model needs {tuple(param.shape)}")
        return problems + [f"unexpected tensor {name}" for name in sorted(set(self.reader.files) - used)]

    def _parts(self) -> list[tuple[str, object]]:
        inner = self.model.model
        parts = [("model.embed_tokens.", inner.embed_tokens)]
        parts += [(f"model.layers.{i}.", layer) for i, layer in enumerate(inner.layers)]
        return parts + [("model.norm.", inner.norm), ("lm_head.", self.model.lm_head)]

    def run(
        self,
        windows: list[list[int]],
        expert: int | None = None,
        batch_size: int = 8,
        desc: str = "streaming layers",
        head: bool = True,
    ) -> Iterator[tuple[object, object | None]]:
        """Per window (token ids): (log-probs [T, V] over the next token, or None
        without `head`; router softmax [L, T, E], or None for a dense model). With
        `expert`, every MoE layer routes every token to that expert alone
        (frankenmoe/checkpoints/moe_blocks.py)."""
        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        inner = self.model.model
        ids = torch.tensor(windows)
        with torch.no_grad(), self._materialized(inner.embed_tokens, "model.embed_tokens.") as embed:
            hidden = [embed(chunk) for chunk in ids.split(batch_size)]
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        rotary = type(inner.rotary_emb)(self.config)  # its buffers are computed, not stored
        position_embeddings = rotary(hidden[0], position_ids=positions)
        mask_fn = (
            create_sliding_window_causal_mask if getattr(self.config, "sliding_window", None) else create_causal_mask
        )
        routers: list[list] = [[] for _ in range(len(hidden))]

        with ExitStack() as stack, torch.no_grad():
            stack.enter_context(forced_expert(self.model, expert) if expert is not None else nullcontext())
            for i, layer in enumerate(progress(inner.layers, desc=desc)):
                captured: list = []
                hook = (
                    layer.mlp.gate.register_forward_hook(
                        lambda m, inp, out: captured.append(torch.softmax(out[0].float(), -1))
                    )
                    if self.is_moe
                    else None
                )
                with self._materialized(layer, f"model.layers.{i}."):
                    for c, h in enumerate(hidden):
                        mask = mask_fn(
                            config=self.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=positions
                        )
                        hidden[c] = layer(
                            h, attention_mask=mask, position_ids=positions, position_embeddings=position_embeddings
                        )
                if hook:
                    hook.remove()
                    for c, r in enumerate(captured):
                        routers[c].append(r.reshape(hidden[c].shape[0], hidden[c].shape[1], -1))
            if head:
                norm = stack.enter_context(self._materialized(inner.norm, "model.norm."))
                lm_head = stack.enter_context(self._materialized(self.model.lm_head, "lm_head."))
            for c, h in enumerate(hidden):
                for w in range(h.shape[0]):  # one window's log-probs at a time: T x vocabulary floats
                    logprobs = torch.log_softmax(lm_head(norm(h[w])).float(), -1) if head else None
                    router = torch.stack([r[w] for r in routers[c]]) if self.is_moe else None
                    yield logprobs, router
